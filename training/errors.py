"""Errors of the training package."""


class TrainingError(Exception):
    """Base class: something in a training cycle or the registry went wrong."""


class GateFailed(TrainingError):
    """A candidate did not pass its evaluation gates."""


class RegistryError(TrainingError):
    """An invalid registry operation (unknown version, refused promotion, ...)."""


class LockBusy(TrainingError):
    """Another training cycle holds the lock."""
