"""GPU check: the reward-model and PPO stages at SmolLM2-135M shape on the training
device, side by side with TRL's reference trainers; step time, tokens/s and peak
memory as one JSON line (and ``$OUT/gpu_check.json`` when ``OUT`` is set).

    python -m tests.gpu.check                       # CUDA, SmolLM2-135M shape, batch 64
    python -m tests.gpu.check --device cpu --small  # a CPU smoke run of the same path

The model has SmolLM2-135M's config and random weights (no download): the
tokenizer and config come from ``.gpu/smollm2`` or ``models/base``; ``--small``
falls back to the tiny test tokenizer. It runs the project's own code as a cycle
does (``training.device.Placement``, ``train_reward_model``, ``PpoTrainer`` with
its rollout engine), with nothing patched. Needs torch, transformers, accelerate,
and trl, datasets, pydantic and psycopg (shipped as wheels where the machine
lacks them: ``tests/gpu/prepare.sh``, ``tests/gpu/run.sh``). vLLM rollouts are
measured where vllm is installed; else the ``hf`` engine.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tests.gpu.trl_reference import trl_ppo, trl_reward

logger = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[2]
FULL = {
    "reward_pairs": 256,
    "reward_batch": 8,
    "max_length": 512,
    "ppo_batch": 64,
    "minibatch": 16,
    "epochs": 4,
    "new_tokens": 128,
    "ppo_steps": 3,
}
SMALL = {
    "reward_pairs": 16,
    "reward_batch": 4,
    "max_length": 256,
    "ppo_batch": 4,
    "minibatch": 2,
    "epochs": 1,
    "new_tokens": 16,
    "ppo_steps": 1,
}
SMALL_MODEL = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 32,
}


class Check:
    def __init__(self, device: str, small: bool, root: Path) -> None:
        from training.device import Placement

        self.placement = Placement.resolve(device)
        self.shape = SMALL if small else FULL
        self.small = small
        self.root = root
        self.results: dict[str, Any] = {}

    # --- helpers ------------------------------------------------------------------------

    def sync(self) -> None:
        if self.placement.on_cuda:
            torch.cuda.synchronize()

    def reset_peak(self) -> None:
        if self.placement.on_cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()

    def peak_gib(self) -> float:
        if self.placement.on_cuda:
            return round(torch.cuda.max_memory_allocated() / 2**30, 3)
        return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)  # RSS

    def measure(self, name: str, fn: Callable[[], dict[str, Any]]) -> None:
        print(f"--- {name}", flush=True)
        self.reset_peak()
        try:
            result = {"ok": True, **fn(), "peak_mem_gib": self.peak_gib()}
        except Exception as exc:  # noqa: BLE001 - recorded, and the next measurement runs
            traceback.print_exc()
            result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}
        self.results[name] = result
        print(f"    {json.dumps({k: v for k, v in result.items() if k != 'steps'})}", flush=True)

    # --- the model ----------------------------------------------------------------------

    def build_model(self) -> Path:
        """SmolLM2-135M's config, random weights, saved in the placement's frozen dtype."""
        from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

        if self.small:  # the tiny test tokenizer: a smoke run of the code paths, fast
            from tests.fixtures.tiny_model import build_tiny_model

            source = build_tiny_model(self.root / "tiny")
        else:
            candidates = (REPO / ".gpu" / "smollm2", REPO / "models" / "base")
            found = [d for d in candidates if (d / "tokenizer.json").is_file()]
            if not found:
                raise SystemExit("no SmolLM2 tokenizer: run tests/gpu/prepare.sh or make bootstrap")
            source = found[0]
        tokenizer = AutoTokenizer.from_pretrained(source)
        config = LlamaConfig.from_pretrained(source)
        if self.small:
            for key, value in SMALL_MODEL.items():
                setattr(config, key, value)
        config.vocab_size = max(config.vocab_size, len(tokenizer))
        torch.manual_seed(0)
        model = LlamaForCausalLM(config)
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        dtype = torch.bfloat16 if self.placement.precision == "bf16" else torch.float32
        out = self.root / "model"
        model.to(dtype).save_pretrained(out)
        tokenizer.save_pretrained(out)
        self.results["model"] = {
            "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
            "layers": config.num_hidden_layers,
            "saved_dtype": str(dtype).removeprefix("torch."),
            "tokenizer": str(source),
        }
        return out

    # --- reward model -------------------------------------------------------------------

    def reward_tokens(self, model_dir: Path, pairs: list[Any]) -> int:
        from transformers import AutoTokenizer

        from training.reward import encode

        tok = AutoTokenizer.from_pretrained(model_dir)
        n = self.shape["max_length"]
        return sum(
            len(encode(tok, p.prompt, p.chosen, n)) + len(encode(tok, p.prompt, p.rejected, n))
            for p in pairs
        )

    def project_reward(self, model_dir: Path, pairs: list[Any], heldout: list[Any]) -> dict:
        """training.reward.train_reward_model as a cycle calls it; train() timed inside."""
        import trl

        from training.reward import train_reward_model
        from training.reward_config import RewardStageConfig

        config = RewardStageConfig(
            epochs=1, batch_size=self.shape["reward_batch"], max_length=self.shape["max_length"]
        )
        seen: dict[str, Any] = {}
        real_train = trl.RewardTrainer.train
        sync = self.sync

        def timed_train(trainer: Any, *args: Any, **kwargs: Any) -> Any:
            sync()
            started = time.perf_counter()
            out = real_train(trainer, *args, **kwargs)
            sync()
            seen["train_s"] = time.perf_counter() - started
            p = next(trainer.model.parameters())
            seen.update(model_device=str(p.device), bf16_autocast=trainer.args.bf16)
            return out

        trl.RewardTrainer.train = timed_train  # type: ignore[method-assign]
        try:
            started = time.perf_counter()
            rm = train_reward_model(
                model_dir,
                pairs,
                heldout,
                self.root / "rm-project",
                config,
                progress=False,
                placement=self.placement,
            )
            e2e = time.perf_counter() - started
        finally:
            trl.RewardTrainer.train = real_train  # type: ignore[method-assign]
        tokens = self.reward_tokens(model_dir, pairs)
        self.reward_dir = rm.model_dir
        return {
            **seen,
            "train_s": round(seen["train_s"], 3),
            "end_to_end_s": round(e2e, 3),
            "tokens_per_s": round(tokens / seen["train_s"], 1),
            "heldout_accuracy": rm.heldout_accuracy,
        }

    # --- PPO ----------------------------------------------------------------------------

    def ppo_config(self, engine: str) -> Any:
        from training.ppo_config import PpoStageConfig

        s = self.shape
        return PpoStageConfig(
            steps=s["ppo_steps"],
            batch_size=s["ppo_batch"],
            minibatch_size=s["minibatch"],
            ppo_epochs=s["epochs"],
            max_new_tokens=s["new_tokens"],
            learning_rate=1e-6,
            adaptive_kl=False,
            rollout_engine=engine,
        )

    def project_ppo(self, model_dir: Path, prompts: list[Any], engine: str) -> dict:
        """PpoTrainer.rollout + step per iteration (what train() loops over), one warm-up."""
        from training.ppo import PpoTrainer, load_models
        from training.reward import RewardScorer
        from training.rollouts import make_rollouts

        config = self.ppo_config(engine)
        policy, reference, tokenizer = load_models(model_dir, model_dir, self.placement)
        scorer = RewardScorer(
            self.reward_dir, max_length=self.shape["max_length"], placement=self.placement
        )
        rollouts = make_rollouts(config, model_dir, tokenizer, self.placement)
        trainer = PpoTrainer(
            policy,
            reference,
            tokenizer,
            scorer.score,
            config,
            placement=self.placement,
            rollouts=rollouts,
        )
        torch.manual_seed(0)
        steps = []
        try:
            for i in range(config.steps + 1):
                batch = [
                    prompts[(i * config.batch_size + j) % len(prompts)]
                    for j in range(config.batch_size)
                ]
                self.sync()
                t0 = time.perf_counter()
                ro = trainer.rollout(batch)
                self.sync()
                t1 = time.perf_counter()
                trainer.step(ro)
                self.sync()
                t2 = time.perf_counter()
                steps.append(
                    {
                        "s": t2 - t0,
                        "rollout_s": t1 - t0,
                        "update_s": t2 - t1,
                        "reply_tokens": int(ro.mask.sum().item()),
                    }
                )
        finally:
            rollouts.close()
        timed = steps[1:]
        step_s = statistics.median(s["s"] for s in timed)
        return {
            "engine": rollouts.name,
            "step_s": round(step_s, 3),
            "rollout_s": round(statistics.median(s["rollout_s"] for s in timed), 3),
            "update_s": round(statistics.median(s["update_s"] for s in timed), 3),
            "tokens_per_s": round(statistics.median(s["reply_tokens"] for s in timed) / step_s, 1),
            "policy": f"{next(policy.parameters()).device} {self.placement.precision}",
        }

    # --- the run ------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        from tests.training.synthetic import make_pairs
        from training.rollouts import vllm_available

        model_dir = self.build_model()
        pairs = make_pairs(self.shape["reward_pairs"], seed=0)
        heldout = make_pairs(16, seed=1)
        prompts = [p.prompt for p in make_pairs(256, seed=2)]
        self.measure("reward.trl", lambda: trl_reward(self, model_dir, pairs))
        self.measure("reward.project", lambda: self.project_reward(model_dir, pairs, heldout))
        if not self.results["reward.project"]["ok"]:
            return self.results
        self.measure("ppo.project_hf", lambda: self.project_ppo(model_dir, prompts, "hf"))
        if vllm_available():
            self.measure("ppo.project_vllm", lambda: self.project_ppo(model_dir, prompts, "vllm"))
        self.measure("ppo.trl", lambda: trl_ppo(self, model_dir, prompts))
        rp, rt = self.results["reward.project"], self.results["reward.trl"]
        pp, pt = self.results["ppo.project_hf"], self.results["ppo.trl"]
        self.results["ratios"] = {
            "reward_tokens_per_s_project_over_trl": ratio(
                rp.get("tokens_per_s"), rt.get("tokens_per_s")
            ),
            "ppo_step_trl_over_project_hf": ratio(pt.get("step_s"), pp.get("step_s")),
        }
        return self.results


def ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a and b else None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto (cuda when present), cuda, cpu")
    parser.add_argument("--small", action="store_true", help="a 2-layer model, tiny batches")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    root = Path(tempfile.mkdtemp(prefix="gpu-check-"))
    check = Check(args.device, args.small, root)
    header = {
        "check": "ratchet-training-gpu",
        "device": str(check.placement.device),
        "precision": check.placement.precision,
        "small": args.small,
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "shape": check.shape,
    }
    try:
        results = {**header, **check.run()}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    failed = [k for k, v in results.items() if isinstance(v, dict) and v.get("ok") is False]
    results["failed"] = failed
    line = json.dumps(results, default=str)
    print(line, flush=True)
    if os.environ.get("OUT"):
        Path(os.environ["OUT"]).mkdir(parents=True, exist_ok=True)
        Path(os.environ["OUT"], "gpu_check.json").write_text(line + "\n")
    return 3 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
