"""Model backends behind one small interface (:class:`serving.backends.base.Backend`)."""

from __future__ import annotations

from pathlib import Path

from serving.backends.base import Backend, ChoiceDelta, Generation, SamplingOptions
from serving.settings import ServingSettings

__all__ = ["Backend", "ChoiceDelta", "Generation", "SamplingOptions", "make_backend"]


def make_backend(settings: ServingSettings, *, path: Path | str, version: str) -> Backend:
    """The backend named by ``settings.backend`` for the model at ``path`` (not started yet)."""
    if settings.backend == "vllm":
        from serving.backends.vllm_engine import VLLMEngineBackend

        return VLLMEngineBackend(settings, path=Path(path), version=version)
    if settings.backend == "vllm-server" and settings.managed:
        from serving.backends.managed_vllm import ManagedVLLMServerBackend

        return ManagedVLLMServerBackend(settings, path=str(path), version=version)
    if settings.backend == "vllm-server":
        from serving.backends.vllm_server import VLLMServerBackend

        return VLLMServerBackend(settings, path=str(path), version=version)
    from serving.backends.transformers_backend import TransformersBackend

    return TransformersBackend(settings, path=Path(path), version=version)
