"""The default backend: vLLM's ``AsyncLLM`` in this process (CPU build here,
CUDA build on GPU machines). The chat template comes from the model directory."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from serving.backends.base import (
    Backend,
    ChoiceDelta,
    Generation,
    SamplingOptions,
    load_chat_tokenizer,
    render_chat,
    resolve_max_tokens,
)
from serving.backends.machine import (
    bind_engine_threads,
    engine_dtype,
    engine_eager,
    use_compile_cache,
)
from serving.errors import InvalidRequest
from serving.settings import ServingSettings

logger = logging.getLogger(__name__)


class VLLMEngineBackend(Backend):
    name = "vllm"

    def __init__(self, settings: ServingSettings, *, path: Path, version: str) -> None:
        super().__init__(version=version, path=path, max_model_len=settings.max_model_len)
        self._settings = settings
        self._engine: Any = None
        self._tokenizer: Any = None

    async def start(self) -> None:
        if not Path(self.path).is_dir():
            raise FileNotFoundError(f"model directory {self.path} does not exist")
        started = time.monotonic()
        await asyncio.to_thread(self._build)
        logger.info(
            "vLLM engine ready: version %s from %s (%s, %s, started in %.1f s)",
            self.version,
            self.path,
            self._engine.model_config.dtype,
            "eager" if engine_eager(self._settings.enforce_eager) else "compiled",
            time.monotonic() - started,
        )

    def _build(self) -> None:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.v1.engine.async_llm import AsyncLLM

        tokenizer = load_chat_tokenizer(self.path)
        eager = engine_eager(self._settings.enforce_eager)
        if not eager:
            use_compile_cache(self._settings.home)
        bind_engine_threads(self._settings.engine_cpu_bind)
        args = AsyncEngineArgs(
            model=self.path,
            kv_cache_memory_bytes=_kv_cache_bytes(self._settings.kv_cache_gib),
            served_model_name=[self.version],
            max_model_len=self._settings.max_model_len,
            enforce_eager=eager,
            dtype=engine_dtype(self._settings.dtype),
            gpu_memory_utilization=self._settings.gpu_memory_utilization,
            disable_log_stats=True,
        )
        # No local name for the engine: a frame kept alive elsewhere must not keep it
        # (AsyncLLM.__del__ at interpreter exit prints "Exception ignored").
        self._engine = AsyncLLM.from_engine_args(args)
        self._tokenizer = tokenizer
        # The engine may cap the context window below what we asked for.
        self.max_model_len = int(self._engine.model_config.max_model_len)

    async def generate(
        self, messages: list[dict[str, str]], options: SamplingOptions, request_id: str
    ) -> Generation:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt
        from vllm.sampling_params import RequestOutputKind

        prompt_ids = render_chat(self._tokenizer, messages)
        max_tokens = resolve_max_tokens(
            len(prompt_ids),
            options.max_tokens,
            default=self._settings.default_max_tokens,
            max_model_len=self.max_model_len,
        )
        kwargs: dict[str, Any] = {}
        if options.temperature is not None:
            kwargs["temperature"] = options.temperature
        if options.top_p is not None:
            kwargs["top_p"] = options.top_p
        try:
            params = SamplingParams(
                n=options.n,
                max_tokens=max_tokens,
                stop=list(options.stop) or None,
                seed=options.seed,
                output_kind=RequestOutputKind.DELTA,
                **kwargs,
            )
        except ValueError as exc:  # vLLM's own validation of sampling values
            raise InvalidRequest(str(exc)) from exc
        prompt = TokensPrompt(prompt_token_ids=prompt_ids)
        return Generation(
            prompt_token_ids=prompt_ids,
            prompt_tokens=len(prompt_ids),
            max_tokens=max_tokens,
            deltas=self._deltas(prompt, params, request_id),
        )

    async def _deltas(
        self, prompt: Any, params: Any, request_id: str
    ) -> AsyncIterator[list[ChoiceDelta]]:
        async for out in self._engine.generate(prompt, params, request_id):
            yield [
                ChoiceDelta(
                    index=o.index,
                    text=o.text,
                    token_ids=list(o.token_ids),
                    finish_reason=o.finish_reason,
                )
                for o in out.outputs
            ]

    async def check(self) -> None:
        if self._engine is None or self._engine.errored:
            raise RuntimeError("vLLM engine is not running")

    async def shutdown(self) -> None:
        """Stop the engine without an ERROR line: its output task is cancelled first,
        then the core processes stop, and the engine object is freed now rather than
        by ``AsyncLLM.__del__`` at interpreter exit."""
        if self._engine is None:
            return
        engine, self._engine = self._engine, None
        await _stop_output_handler(engine)
        await asyncio.to_thread(engine.shutdown)
        del engine
        gc.collect()
        logger.info("vLLM engine for version %s shut down", self.version)


async def _stop_output_handler(engine: Any) -> None:
    """Cancel the engine's output task before its core stops: otherwise the task sees the
    core's sockets close, logs ERROR "output_handler failed" and fails open requests."""
    handler = getattr(engine, "output_handler", None)
    if handler is None or handler.done():
        return
    if handler.get_loop() is not asyncio.get_running_loop():
        return  # another loop's task: engine.shutdown() cancels it thread-safely
    handler.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await handler


def _kv_cache_bytes(gib: float | None) -> int | None:
    """An explicit KV cache size. On CPU vLLM otherwise reserves ``gpu_memory_utilization``
    of the node's memory minus the worker's own size, which fails for a model whose fp32
    weights alone pass that share (SmolLM2-135M does at 0.1 of 24 GiB)."""
    if gib is None:
        from vllm.platforms import current_platform

        if not current_platform.is_cpu():
            return None
        gib = 1.0
    return int(gib * 2**30)
