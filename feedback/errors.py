"""Errors of the feedback package."""


class FeedbackError(Exception):
    """Base class for feedback errors."""


class MessageIdError(FeedbackError):
    """A message id that cannot be rated by this user."""


class MalformedMessageId(MessageIdError):
    """Not of the message id form at all (HTTP 422)."""


class UnknownMessageId(MessageIdError):
    """Well-formed but never issued by this deployment (HTTP 404)."""


class ForeignMessageId(MessageIdError):
    """Issued to another user (HTTP 403)."""


class StoreUnavailable(FeedbackError):
    """Postgres cannot be reached right now."""
