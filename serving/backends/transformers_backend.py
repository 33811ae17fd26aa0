"""Fallback backend: plain transformers ``generate`` in a worker thread, one
request at a time (no batching). For machines where vLLM cannot run."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
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
from serving.settings import ServingSettings

logger = logging.getLogger(__name__)

_DONE = object()


class TransformersBackend(Backend):
    name = "transformers"

    def __init__(self, settings: ServingSettings, *, path: Path, version: str) -> None:
        super().__init__(version=version, path=path, max_model_len=settings.max_model_len)
        self._settings = settings
        self._model: Any = None
        self._tokenizer: Any = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hf-generate")

    async def start(self) -> None:
        if not Path(self.path).is_dir():
            raise FileNotFoundError(f"model directory {self.path} does not exist")
        loop = asyncio.get_running_loop()
        self._model, self._tokenizer = await loop.run_in_executor(self._executor, self._load)
        logger.info("transformers backend ready: version %s from %s", self.version, self.path)

    def _load(self) -> tuple[Any, Any]:
        from transformers import AutoModelForCausalLM

        tokenizer = load_chat_tokenizer(self.path)
        model = AutoModelForCausalLM.from_pretrained(self.path, dtype=self._torch_dtype())
        model.eval()
        limit = getattr(model.config, "max_position_embeddings", None)
        if limit:
            self.max_model_len = min(self.max_model_len, int(limit))
        return model, tokenizer

    def _torch_dtype(self) -> Any:
        """The engine's ``dtype`` setting as torch sees it (``auto``: the checkpoint's)."""
        import torch

        from serving.backends.machine import engine_dtype

        name = engine_dtype(self._settings.dtype)
        aliases = {"half": "float16", "float": "float32"}
        return "auto" if name == "auto" else getattr(torch, aliases.get(name, name))

    async def generate(
        self, messages: list[dict[str, str]], options: SamplingOptions, request_id: str
    ) -> Generation:
        prompt_ids = render_chat(self._tokenizer, messages)
        max_tokens = resolve_max_tokens(
            len(prompt_ids),
            options.max_tokens,
            default=self._settings.default_max_tokens,
            max_model_len=self.max_model_len,
        )
        return Generation(
            prompt_token_ids=prompt_ids,
            prompt_tokens=len(prompt_ids),
            max_tokens=max_tokens,
            deltas=self._deltas(prompt_ids, options, max_tokens),
        )

    async def _deltas(
        self, prompt_ids: list[int], options: SamplingOptions, max_tokens: int
    ) -> AsyncIterator[list[ChoiceDelta]]:
        loop = asyncio.get_running_loop()
        for index in range(options.n):
            queue: asyncio.Queue[Any] = asyncio.Queue()
            cancel = threading.Event()
            seed = None if options.seed is None else options.seed + index
            future = loop.run_in_executor(
                self._executor,
                self._generate_one,
                prompt_ids,
                options,
                max_tokens,
                seed,
                queue,
                loop,
                cancel,
            )
            try:
                while True:
                    item = await queue.get()
                    if item is _DONE:
                        break
                    tokens, text, finish = item
                    yield [ChoiceDelta(index, text, tokens, finish)]
                await future
            finally:
                cancel.set()

    def _generate_one(
        self,
        prompt_ids: list[int],
        options: SamplingOptions,
        max_tokens: int,
        seed: int | None,
        queue: asyncio.Queue[Any],
        loop: asyncio.AbstractEventLoop,
        cancel: threading.Event,
    ) -> None:
        import torch
        from transformers import StoppingCriteria, StoppingCriteriaList

        tok = self._tokenizer
        emit = lambda item: loop.call_soon_threadsafe(queue.put_nowait, item)  # noqa: E731
        state: dict[str, Any] = {"ids": [], "sent": "", "stopped": False}
        eos = self._model.generation_config.eos_token_id
        eos_ids = set(eos if isinstance(eos, list) else [eos] if eos is not None else [])

        class Stream(StoppingCriteria):
            def __call__(self, input_ids: Any, scores: Any, **kw: Any) -> Any:
                new = input_ids[0, len(prompt_ids) :].tolist()
                fresh = new[len(state["ids"]) :]
                fresh = [t for t in fresh if t not in eos_ids]
                state["ids"].extend(fresh)
                text = tok.decode(state["ids"], skip_special_tokens=True)
                cut = min((text.find(s) for s in options.stop if s in text), default=-1)
                if cut >= 0:
                    text, state["stopped"] = text[:cut], True
                if text.endswith("\ufffd") and not state["stopped"]:
                    text = text[: len(text) - 1]  # wait for the rest of the character
                if text.startswith(state["sent"]) and (text != state["sent"] or fresh):
                    emit((fresh, text[len(state["sent"]) :], None))
                    state["sent"] = text
                return torch.tensor([state["stopped"] or cancel.is_set()], dtype=torch.bool)

        kwargs: dict[str, Any] = {"max_new_tokens": max_tokens}
        temperature = 1.0 if options.temperature is None else options.temperature
        if temperature == 0:
            kwargs["do_sample"] = False
        else:
            kwargs.update(do_sample=True, temperature=temperature, top_p=options.top_p or 1.0)
        try:
            if seed is not None:
                torch.manual_seed(seed)
            with torch.inference_mode():
                out = self._model.generate(
                    torch.tensor([prompt_ids]),
                    attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long),
                    stopping_criteria=StoppingCriteriaList([Stream()]),
                    pad_token_id=tok.pad_token_id,
                    **kwargs,
                )
            new = out[0, len(prompt_ids) :].tolist()
            hit_eos = bool(new) and new[-1] in eos_ids
            finish = "stop" if (state["stopped"] or hit_eos) else "length"
            text = tok.decode(state["ids"], skip_special_tokens=True)
            if state["stopped"]:
                text = state["sent"]
            emit(([], text[len(state["sent"]) :], finish))
        finally:
            emit(_DONE)

    async def shutdown(self) -> None:
        self._model = None
        self._executor.shutdown(wait=False, cancel_futures=True)
        logger.info("transformers backend for version %s shut down", self.version)
