"""Top-k vector search by inner product or cosine, exact or over a compressed copy.

The work is done by the Cython extension ``qlp_ray._vector_ext`` (nogil + OpenMP,
AVX-512 tile kernels for few queries, BLAS sgemm blocks for batches, C heaps for top-k).
A numpy implementation (BLAS matmul + ``argpartition``) is used only when the extension
is not built; ``BACKEND`` says which one is active.

Results are sorted best first; ties go to the lower row index. ``k`` larger than the
number of rows returns all rows.
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np

from qlp_ray.core.errors import InvalidRequest

logger = logging.getLogger(__name__)

try:
    from qlp_ray import _vector_ext as _ext

    BACKEND: str = "cython"
except ImportError as _exc:  # pragma: no cover - only where the compiler was missing
    _ext = None
    BACKEND = "numpy"
    logger.warning("qlp_ray._vector_ext not available (%s); vector search uses numpy", _exc)
else:
    logger.debug("vector search backend: cython extension, %d threads", _ext.max_threads())

Metric = Literal["ip", "cosine"]
Compression = Literal["float32", "float16", "int8"]
_METRICS = ("ip", "cosine")
_COMPRESSIONS = ("float32", "float16", "int8")


def _check_matrix(matrix: np.ndarray) -> np.ndarray:
    if not isinstance(matrix, np.ndarray):
        raise InvalidRequest(f"matrix must be a numpy array, got {type(matrix).__name__}")
    if matrix.dtype != np.float32:
        raise InvalidRequest(f"matrix must be float32, got {matrix.dtype}")
    if matrix.ndim != 2:
        raise InvalidRequest(f"matrix must be 2-D (n, dim), got shape {matrix.shape}")
    return np.ascontiguousarray(matrix)


def _check_queries(queries: np.ndarray, dim: int) -> tuple[np.ndarray, bool]:
    """Return C-contiguous 2-D queries and whether the input was a single 1-D query."""
    if not isinstance(queries, np.ndarray):
        raise InvalidRequest(f"queries must be a numpy array, got {type(queries).__name__}")
    if queries.dtype != np.float32:
        raise InvalidRequest(f"queries must be float32, got {queries.dtype}")
    if queries.ndim not in (1, 2):
        raise InvalidRequest(f"queries must be 1-D or 2-D, got shape {queries.shape}")
    single = queries.ndim == 1
    q2 = np.ascontiguousarray(queries.reshape(1, -1) if single else queries)
    if q2.shape[1] != dim:
        raise InvalidRequest(f"queries have dimension {q2.shape[1]}, the matrix has {dim}")
    if not np.isfinite(q2).all():
        raise InvalidRequest("queries contain NaN or infinite values")
    return q2, single


def _check_k(k: int) -> int:
    if isinstance(k, bool) or not isinstance(k, int | np.integer) or k < 1:
        raise InvalidRequest(f"k must be a positive integer, got {k!r}")
    return int(k)


def _check_metric(metric: str) -> str:
    if metric not in _METRICS:
        raise InvalidRequest(f"metric must be one of {_METRICS}, got {metric!r}")
    return metric


def _unit_rows(x: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms == 0, 1.0, norms).astype(np.float32)


def _inverse_norms(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1)
    return np.where(norms == 0, 0.0, 1.0 / np.where(norms == 0, 1.0, norms)).astype(np.float32)


def _numpy_topk(
    queries: np.ndarray, data: np.ndarray, k: int, row_scale: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """Reference/fallback: BLAS matmul, argpartition, then a stable sort of the k best."""
    scores = queries @ data.astype(np.float32, copy=False).T
    if row_scale is not None:
        scores *= row_scale[None, :]
    n = scores.shape[1]
    kk = min(k, n)
    if kk < n:
        part = np.argpartition(-scores, kk - 1, axis=1)[:, :kk]
    else:
        part = np.broadcast_to(np.arange(n), scores.shape)
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -part_scores), axis=1)
    idx = np.take_along_axis(part, order, axis=1).astype(np.int64)
    return np.take_along_axis(scores, idx, axis=1).astype(np.float32), idx


def _scan(
    queries: np.ndarray,
    data: np.ndarray,
    k: int,
    row_scale: np.ndarray | None,
    threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    if threads is not None and (not isinstance(threads, int) or threads < 1):
        raise InvalidRequest(f"threads must be a positive integer or None, got {threads!r}")
    if _ext is not None:
        return _ext.topk_scan(queries, data, k, row_scale, threads or 0)
    return _numpy_topk(queries, data, k, row_scale)


def topk(
    queries: np.ndarray,
    matrix: np.ndarray,
    k: int,
    metric: Metric = "ip",
    threads: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` rows of ``matrix`` for each query.

    ``queries``: float32 ``(dim,)`` or ``(nq, dim)``; ``matrix``: float32 ``(n, dim)``.
    Returns ``(scores, indices)`` shaped ``(kk,)`` or ``(nq, kk)``, ``kk = min(k, n)``.
    ``threads``: OpenMP threads (default: all, as ``OMP_NUM_THREADS`` allows).
    """
    matrix = _check_matrix(matrix)
    q2, single = _check_queries(queries, matrix.shape[1])
    k = _check_k(k)
    row_scale = None
    if _check_metric(metric) == "cosine":
        q2 = _unit_rows(q2)
        row_scale = _inverse_norms(matrix)
    scores, idx = _scan(q2, matrix, k, row_scale, threads)
    return (scores[0], idx[0]) if single else (scores, idx)


class VectorIndex:
    """A searchable copy of a float32 matrix, stored as float32, float16 or int8.

    ``int8`` stores each row as ``round(row / s)`` with a per-row symmetric scale
    ``s = max|row| / 127`` (a quarter of the float32 memory); ``float16`` halves it.
    For ``metric="cosine"`` rows are normalised before compression. The original
    matrix is not kept.
    """

    def __init__(
        self, matrix: np.ndarray, metric: Metric = "ip", compression: Compression = "float32"
    ) -> None:
        matrix = _check_matrix(matrix)
        self.metric = _check_metric(metric)
        if compression not in _COMPRESSIONS:
            raise InvalidRequest(f"compression must be one of {_COMPRESSIONS}, got {compression!r}")
        if not np.isfinite(matrix).all():
            raise InvalidRequest("matrix contains NaN or infinite values")
        self.compression = compression
        self.dim = int(matrix.shape[1])
        rows = _unit_rows(matrix) if metric == "cosine" else matrix
        self._scale: np.ndarray | None = None
        if compression == "float32":
            self._data = np.array(rows, dtype=np.float32, order="C", copy=True)
        elif compression == "float16":
            self._data = np.ascontiguousarray(rows.astype(np.float16))
        else:
            amax = np.abs(rows).max(axis=1)
            scale = np.where(amax == 0, 1.0, amax / 127.0).astype(np.float32)
            q = np.rint(rows / scale[:, None])
            self._data = np.ascontiguousarray(np.clip(q, -127, 127).astype(np.int8))
            self._scale = scale
        logger.debug(
            "built %s index of %d x %d (%s, %.1f MB)",
            compression,
            len(self),
            self.dim,
            metric,
            self.nbytes / 1e6,
        )

    def __len__(self) -> int:
        return int(self._data.shape[0])

    @property
    def nbytes(self) -> int:
        """Bytes held by the stored vectors (and int8 scales)."""
        return int(self._data.nbytes + (self._scale.nbytes if self._scale is not None else 0))

    def search(
        self, queries: np.ndarray, k: int, threads: int | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (scores, indices) for 1-D or 2-D float32 queries, best first."""
        q2, single = _check_queries(queries, self.dim)
        k = _check_k(k)
        if self.metric == "cosine":
            q2 = _unit_rows(q2)
        scores, idx = _scan(q2, self._data, k, self._scale, threads)
        return (scores[0], idx[0]) if single else (scores, idx)


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Mean share of the exact top-k indices found (both ``(nq, k)``)."""
    found2, exact2 = np.atleast_2d(found), np.atleast_2d(exact)
    if found2.shape != exact2.shape:
        raise InvalidRequest(f"shape mismatch: {found2.shape} vs {exact2.shape}")
    hits = [len(np.intersect1d(f, e)) for f, e in zip(found2, exact2, strict=True)]
    return float(np.sum(hits) / exact2.size)


__all__ = ["BACKEND", "VectorIndex", "recall_at_k", "topk"]
