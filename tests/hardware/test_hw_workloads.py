"""WorkloadRunner without Ray: each workload kind does the real computation."""

from __future__ import annotations

import numpy as np
import pytest

from qlp_ray.core.errors import InvalidRequest
from qlp_ray.hardware.discovery import Device
from qlp_ray.hardware.workloads import WorkloadRunner

CPU = Device("cpu", "cpu", "torch", "cpu", avx512=True)
OV_CPU = Device("openvino:CPU", "ov_cpu", "openvino", "CPU")
TEXTS = ["roll back the kubernetes deployment", "join the orders table with users", "a b"]


@pytest.fixture(scope="module")
def torch_runner() -> WorkloadRunner:
    return WorkloadRunner(CPU)


def test_openvino_embeddings_match_torch(torch_runner: WorkloadRunner) -> None:
    ref = torch_runner.run("embedding", {"texts": TEXTS})
    got = WorkloadRunner(OV_CPU).run("embedding", {"texts": TEXTS})
    assert got.shape == ref.shape == (3, 384)
    assert np.min(np.sum(got * ref, axis=1)) > 0.9999


def test_vector_search_rerank_and_gating(torch_runner: WorkloadRunner) -> None:
    rng = np.random.default_rng(0)
    matrix = rng.standard_normal((200, 16)).astype(np.float32)
    out = torch_runner.run(
        "vector_search", {"queries": matrix[:3], "matrix": matrix, "k": 4, "metric": "cosine"}
    )
    np.testing.assert_array_equal(out["indices"][:, 0], [0, 1, 2])
    out8 = torch_runner.run(
        "vector_search", {"queries": matrix[:3], "matrix": matrix, "k": 1, "compression": "int8"}
    )
    assert out8["indices"].shape == (3, 1)
    ranked = torch_runner.run(
        "reranking", {"query": "undo the kubernetes rollout", "documents": TEXTS}
    )
    assert ranked["order"][0] == 0 and ranked["scores"][0] >= ranked["scores"][-1]
    weights = torch_runner.run(
        "gating",
        {"texts": TEXTS[:2], "centroids": torch_runner.run("embedding", {"texts": TEXTS[:2]})},
    )
    np.testing.assert_allclose(weights.sum(axis=1), 1, rtol=1e-5)
    assert weights[0, 0] > 0.9 and weights[1, 1] > 0.9


def test_bad_workloads_are_named(torch_runner: WorkloadRunner) -> None:
    with pytest.raises(InvalidRequest, match="unknown workload"):
        torch_runner.run("mining", {})
    with pytest.raises(InvalidRequest, match="'texts'"):
        torch_runner.run("embedding", {})
    with pytest.raises(InvalidRequest, match="OpenVINO"):
        torch_runner.run("inference_int8", {"prompts": ["x"], "model_dir": "/nonexistent"})
    with pytest.raises(InvalidRequest, match="cannot train"):
        WorkloadRunner(OV_CPU).run("training", {"texts": ["x"]})
