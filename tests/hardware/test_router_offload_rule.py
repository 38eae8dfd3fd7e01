"""``router.offload`` without Ray: the rule, the chunks, the in-process fallback and its
reason, the ``embedding`` workload's model choice, and the centroid decision from
similarities computed elsewhere."""

from __future__ import annotations

import numpy as np
import pytest

from actors.offload import DeviceOffload
from qlp_ray.cli.devices import workload_rows
from qlp_ray.core.errors import ConfigError
from qlp_ray.hardware.discovery import Device
from qlp_ray.hardware.offload import Placement, chunk_bounds, wants_devices
from qlp_ray.hardware.workloads import WorkloadRunner
from qlp_ray.route.centroid import CentroidRouter, RouteEntry
from qlp_ray.route.embeddings import PACKAGED_MODEL, get_embedder

TEXTS = ["roll back the kubernetes deployment", "join the orders table with users"]


@pytest.mark.parametrize(
    ("mode", "batch", "request_"),
    [("auto", True, False), ("always", True, True), ("never", False, False)],
)
def test_which_work_goes_to_devices(mode, batch, request_) -> None:
    assert wants_devices(mode, "batch") is batch
    assert wants_devices(mode, "request") is request_


def test_bad_mode_and_chunks() -> None:
    with pytest.raises(ValueError, match="router.offload"):
        wants_devices("sometimes", "batch")
    with pytest.raises(ValueError, match="router.offload"):
        DeviceOffload("sometimes")
    assert chunk_bounds(600, 256) == [(0, 256), (256, 512), (512, 600)]
    assert chunk_bounds(0) == []


def test_placement_names_devices_and_jobs() -> None:
    outs = [{"device": "cpu", "node_id": "a" * 40, "job_id": 4},
            {"device": "cpu", "node_id": "a" * 40, "job_id": 5}]  # fmt: skip
    p = Placement.on_devices("embedding", outs)
    assert (p.where, p.devices, p.jobs) == ("device", ["aaaaaaaaaaaa/cpu"], [4, 5])


def test_without_ray_the_work_runs_here_and_says_why() -> None:
    calls = []

    def local(texts):
        calls.append(list(texts))
        return np.ones((len(texts), 3), np.float32)

    offload = DeviceOffload("auto", chunk=2)
    vecs, placement = offload.embed(["a", "b", "c"], local)
    assert vecs.shape == (3, 3) and calls == [["a", "b", "c"]]  # one local call, all texts
    assert placement.where == "process" and "not connected to a Ray cluster" in placement.reason
    never = DeviceOffload("never")
    _, placement = never.embed(["a"], local)
    assert placement.reason == "router.offload is 'never'"
    assert offload.counts == {"device": 0, "process": 1}

    matrix = np.eye(3, dtype=np.float32)
    queries = np.array([[0.1, 0.9, 0.3]], np.float32)
    scores, idx, placement = offload.search(queries, matrix, 2, lambda q: q @ matrix.T)
    assert placement.reason == "router.offload is 'auto'"  # per-request: not a device's job
    np.testing.assert_array_equal(idx, [[1, 2]])
    np.testing.assert_allclose(scores, [[0.9, 0.3]])


def test_embedding_workload_model_is_the_package_or_a_directory() -> None:
    runner = WorkloadRunner(Device("cpu", "cpu", "torch", "cpu"))
    named = runner.run("embedding", {"texts": TEXTS, "model": PACKAGED_MODEL})
    default = runner.run("embedding", {"texts": TEXTS})
    here = get_embedder(PACKAGED_MODEL).encode(TEXTS)
    assert np.min(np.sum(named * here, axis=1)) >= 0.9999
    np.testing.assert_array_equal(named, default)
    with pytest.raises(ConfigError, match="local directory"):
        runner.run("embedding", {"texts": TEXTS, "model": "sentence-transformers/all-MiniLM"})


def test_centroid_decision_from_outside_similarities() -> None:
    rng = np.random.default_rng(0)
    cents = rng.standard_normal((3, 8)).astype(np.float32)
    cents /= np.linalg.norm(cents, axis=1, keepdims=True)
    router = CentroidRouter([RouteEntry(f"a{i}", f"d{i}", c) for i, c in enumerate(cents)], 0.1)
    x = rng.standard_normal((5, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    assert [d.to_dict() for d in router.decide(x @ router.matrix.T)] == [
        d.to_dict() for d in router.route_batch(x)
    ]


def test_device_workloads_as_placement_rows() -> None:
    rows = workload_rows(
        {"embedding": {"workload": "embedding", "running": 1, "done": 3, "failed": 0,
                       "devices": {"node0123456789/cpu": 4}, "last": 90.0}},
        now=100.0,
    )  # fmt: skip
    row = rows["workload:embedding"]
    assert row["state"] == "running" and row["done"] == 3
    assert row["reason"] == "3 done, 0 failed; mostly on node0123/cpu; last started 10 s ago"


def test_cli_batch_encoder_without_a_cluster_embeds_here(tmp_path) -> None:
    from qlp_ray.cli.common import batch_encoder
    from qlp_ray.core.config import load_config

    texts = TEXTS[:1]
    want = get_embedder(PACKAGED_MODEL).encode(texts)
    for offload in ("auto", "never"):  # auto: no RAY_ADDRESS, no qlp cluster: here
        cfg = load_config(overrides={"paths": {"home": str(tmp_path)},
                                     "router": {"offload": offload}}, environ={})  # fmt: skip
        np.testing.assert_array_equal(batch_encoder(cfg)(texts), want)
