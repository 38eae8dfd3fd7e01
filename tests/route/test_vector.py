"""qlp_ray.route.vector: exact top-k equals numpy, cosine, shapes, errors, compressed recall."""

from __future__ import annotations

import numpy as np
import pytest

from qlp_ray.core.errors import InvalidRequest
from qlp_ray.route import vector


def _reference(queries: np.ndarray, matrix: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = np.atleast_2d(queries).astype(np.float64) @ matrix.astype(np.float64).T
    idx = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, idx, axis=1), idx


@pytest.fixture(scope="module")
def data() -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.standard_normal((3000, 48), dtype=np.float32)


def test_backend_is_the_extension() -> None:
    # the extension is built in CI (pip install .); the fallback exists for other platforms
    assert vector.BACKEND == "cython"


@pytest.mark.parametrize("nq", [1, 3, 7, 8, 33, 300])
@pytest.mark.parametrize("k", [1, 10, 57])
def test_exact_topk_matches_numpy(data: np.ndarray, nq: int, k: int) -> None:
    queries = np.random.default_rng(nq).standard_normal((nq, data.shape[1]), dtype=np.float32)
    scores, idx = vector.topk(queries, data, k)
    ref_scores, ref_idx = _reference(queries, data, k)
    assert scores.shape == idx.shape == (nq, k)
    assert scores.dtype == np.float32 and idx.dtype == np.int64
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-4)
    assert (np.diff(scores, axis=1) <= 0).all()


def test_numpy_fallback_agrees(data: np.ndarray) -> None:
    queries = np.random.default_rng(5).standard_normal((4, data.shape[1]), dtype=np.float32)
    ext = vector.topk(queries, data, 12)
    fallback = vector._numpy_topk(queries, data, 12, None)
    np.testing.assert_array_equal(ext[1], fallback[1])
    np.testing.assert_allclose(ext[0], fallback[0], atol=1e-4)


def test_single_query_is_1d(data: np.ndarray) -> None:
    query = data[17].copy()
    scores, idx = vector.topk(query, data, 5, metric="cosine")
    assert scores.shape == idx.shape == (5,)
    assert idx[0] == 17
    assert scores[0] == pytest.approx(1.0, abs=1e-5)


def test_cosine_ignores_row_norms(data: np.ndarray) -> None:
    scaled = data * np.random.default_rng(2).uniform(0.1, 10, (len(data), 1)).astype(np.float32)
    queries = np.random.default_rng(3).standard_normal((9, data.shape[1]), dtype=np.float32)
    unit = data / np.linalg.norm(data, axis=1, keepdims=True)
    qunit = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    scores, idx = vector.topk(queries, scaled, 10, metric="cosine")
    ref_scores, ref_idx = _reference(qunit, unit, 10)
    np.testing.assert_array_equal(idx, ref_idx)
    np.testing.assert_allclose(scores, ref_scores, atol=1e-4)
    assert np.abs(scores).max() <= 1.0 + 1e-5


def test_k_larger_than_rows_returns_all_rows_sorted() -> None:
    matrix = np.array([[1, 0], [0, 1], [1, 1]], dtype=np.float32)
    scores, idx = vector.topk(np.array([1, 0.5], dtype=np.float32), matrix, 10)
    np.testing.assert_array_equal(idx, [2, 0, 1])
    np.testing.assert_allclose(scores, [1.5, 1.0, 0.5])


def test_ties_go_to_the_lower_index() -> None:
    matrix = np.ones((50, 4), dtype=np.float32)
    _, idx = vector.topk(np.ones(4, dtype=np.float32), matrix, 5)
    np.testing.assert_array_equal(idx, [0, 1, 2, 3, 4])


@pytest.mark.parametrize(
    ("queries", "matrix", "k", "message"),
    [
        (np.ones(4, np.float64), np.ones((3, 4), np.float32), 1, "queries must be float32"),
        (np.ones(4, np.float32), np.ones((3, 4), np.float16), 1, "matrix must be float32"),
        (np.ones(5, np.float32), np.ones((3, 4), np.float32), 1, "dimension 5"),
        (np.ones((1, 1, 4), np.float32), np.ones((3, 4), np.float32), 1, "1-D or 2-D"),
        (np.ones(4, np.float32), np.ones(4, np.float32), 1, "must be 2-D"),
        (np.ones(4, np.float32), np.ones((3, 4), np.float32), 0, "positive integer"),
        (np.full(4, np.nan, np.float32), np.ones((3, 4), np.float32), 1, "NaN"),
        ([1.0, 2.0], np.ones((3, 2), np.float32), 1, "numpy array"),
    ],
)
def test_bad_input_is_rejected(queries, matrix, k, message: str) -> None:
    with pytest.raises(InvalidRequest, match=message):
        vector.topk(queries, matrix, k)


def test_bad_metric_and_compression(data: np.ndarray) -> None:
    with pytest.raises(InvalidRequest, match="metric"):
        vector.topk(data[0], data, 1, metric="l2")  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest, match="compression"):
        vector.VectorIndex(data, compression="int4")  # type: ignore[arg-type]


@pytest.mark.parametrize(("compression", "ratio"), [("float32", 1), ("float16", 2), ("int8", 4)])
@pytest.mark.parametrize("nq", [2, 40])
def test_compressed_index_recall(compression: str, ratio: int, nq: int) -> None:
    rng = np.random.default_rng(7)
    matrix = rng.standard_normal((4000, 64), dtype=np.float32)
    queries = rng.standard_normal((nq, 64), dtype=np.float32)
    index = vector.VectorIndex(matrix, metric="cosine", compression=compression)
    assert len(index) == 4000
    assert index.nbytes <= matrix.nbytes / ratio + 4 * 4000
    scores, idx = index.search(queries, 10)
    _, exact = vector.topk(queries, matrix, 10, metric="cosine")
    recall = vector.recall_at_k(idx, exact)
    assert recall >= (1.0 if compression == "float32" else 0.95)
    assert (np.diff(scores, axis=1) <= 1e-6).all()


def test_int8_scores_are_close_to_exact() -> None:
    rng = np.random.default_rng(8)
    matrix = rng.standard_normal((500, 32), dtype=np.float32)
    index = vector.VectorIndex(matrix, compression="int8")
    scores, idx = index.search(matrix[:5], 3)
    exact = np.take_along_axis(matrix[:5] @ matrix.T, idx, axis=1)
    np.testing.assert_allclose(scores, exact, rtol=0.02, atol=0.05)


def test_explicit_thread_count(data: np.ndarray) -> None:
    q = data[:3]
    one = vector.topk(q, data, 4, threads=1)
    two = vector.topk(q, data, 4, threads=2)
    np.testing.assert_array_equal(one[1], two[1])
    with pytest.raises(InvalidRequest, match="threads"):
        vector.topk(q, data, 4, threads=0)
