"""Multi-node hardware scheduling on a real 3-node Ray cluster (``ray.cluster_utils``):
three worker nodes added to the session's cluster for this module.

Node A advertises P-/E-cores with AVX-512, node B an NPU and an Arc GPU, node C an NCS2,
a CUDA GPU and plain CPU cores. The accelerators are *stand-ins* (``emulated=True``):
this machine has none, so their actors compute on the CPU (OpenVINO ``CPU`` for the
OpenVINO classes, torch ``cpu`` for CUDA). Placement, resources, actor deaths,
re-registration and re-placement are all real Ray.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from actors.fleet import sync_devices  # noqa: E402
from actors.launch import start_scheduler  # noqa: E402
from qlp_ray.core.config import HardwareConfig  # noqa: E402
from qlp_ray.hardware.discovery import Device  # noqa: E402

pytestmark = pytest.mark.integration

NAMESPACE = "qlp_hw_test"
CORES = tuple(sorted(os.sched_getaffinity(0)))
NODE_RESOURCES = {
    "a": {"qlp_pcore": 1, "qlp_ecore": 1},
    "b": {"qlp_npu": 1, "qlp_arc": 1},
    "c": {"qlp_ncs2": 1, "qlp_cuda": 1, "qlp_cpu": 1},
}


def _devices() -> dict[str, list[Device]]:
    ov = {"backend": "openvino", "target": "CPU", "emulated": True}
    return {
        "a": [Device("pcore", "pcore", "torch", "cpu", cores=CORES[:1], avx512=True)],
        "b": [Device("npu0", "npu", **ov), Device("arc0", "arc", **ov)],
        "c": [
            Device("ncs2", "ncs2", **ov),
            Device("cuda:0", "cuda", "torch", "cpu", emulated=True),
            Device("cpu", "cpu", "torch", "cpu", cores=CORES, avx512=True),
        ],
    }


def wait_for(condition, timeout: float = 60.0, interval: float = 0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout} s")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, ray_session):
    """Nodes A, B and C added to the session's cluster (removed afterwards). The driver
    joins the fleet's namespace, as `qlp devices` does: a device actor finds the scheduler
    in its job's namespace."""
    from tests.helpers.hw_fixtures import build_small_lm

    model_dir = build_small_lm(tmp_path_factory.mktemp("lm"), steps=5)
    ray_session.connect(namespace=NAMESPACE)  # before the nodes exist: it stays on the head
    added = [ray_session.add_node(num_cpus=1, resources=res) for res in NODE_RESOURCES.values()]
    try:
        ray_session.cluster.wait_for_nodes()
        by_resource = {}
        for node in ray.nodes():
            for name, res in NODE_RESOURCES.items():
                if node["Alive"] and set(res) <= set(node["Resources"]):
                    by_resource[name] = node["NodeID"]
        assert len(by_resource) == 3
        cfg = HardwareConfig(status_interval_s=0.5, max_inflight_per_device=2, namespace=NAMESPACE)
        scheduler = start_scheduler(cfg)
        found = {by_resource[n]: devs for n, devs in _devices().items()}
        added_ids, removed = sync_devices(scheduler, found, cfg, max_restarts=2)
        assert len(added_ids) == 6 and removed == []
        yield {
            "scheduler": scheduler,
            "nodes": by_resource,
            "found": found,
            "cfg": cfg,
            "model": model_dir,
        }
    finally:
        # the scheduler and device actors are detached: they would outlive the module
        for actor in ray.util.list_named_actors(all_namespaces=True):
            if actor["namespace"] == NAMESPACE:
                ray.kill(ray.get_actor(actor["name"], namespace=NAMESPACE), no_restart=True)
        for node in added:
            ray_session.cluster.remove_node(node)
        ray_session.connect()


def _payloads(model_dir) -> dict[str, dict]:
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((6, 384)).astype(np.float32)
    return {
        "vector_search": {"queries": vecs[:2], "matrix": vecs, "k": 3},
        "embedding": {"texts": ["deploy the service", "join two tables"]},
        "inference": {
            "prompts": ["The API returns"],
            "max_new_tokens": 4,
            "model_dir": str(model_dir),
        },
        "inference_int8": {
            "prompts": ["kubectl get"],
            "max_new_tokens": 4,
            "model_dir": str(model_dir),
        },
        "reranking": {"query_vector": vecs[0], "document_vectors": vecs},
        "gating": {"vectors": vecs[:3], "centroids": vecs[3:]},
        "training": {"texts": ["scale the deployment"], "steps": 3, "model_dir": str(model_dir)},
    }


def test_each_workload_runs_where_the_table_says(cluster) -> None:
    scheduler, nodes = cluster["scheduler"], cluster["nodes"]
    expected = {
        "vector_search": ("a", "pcore"),
        "embedding": ("b", "npu"),
        "inference": ("c", "cuda"),
        "inference_int8": ("b", "npu"),
        "reranking": ("c", "ncs2"),
        "gating": ("b", "arc"),
        "training": ("c", "cuda"),
    }
    payloads = _payloads(cluster["model"])
    refs = {kind: scheduler.submit.remote(kind, payloads[kind]) for kind in expected}
    out = {kind: ray.get(ref, timeout=240) for kind, ref in refs.items()}
    for kind, (node, cls) in expected.items():
        assert (out[kind]["node_id"], out[kind]["device_class"]) == (nodes[node], cls), kind
    # the work is real
    emb = out["embedding"]["result"]
    assert emb.shape == (2, 384) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-4)
    vs = out["vector_search"]["result"]
    np.testing.assert_array_equal(vs["indices"][:, 0], [0, 1])
    assert out["reranking"]["result"]["order"][0] == 0
    np.testing.assert_allclose(out["gating"]["result"].sum(axis=1), 1, rtol=1e-5)
    assert isinstance(out["inference"]["result"][0], str)
    assert isinstance(out["inference_int8"]["result"][0], str)
    losses = out["training"]["result"]["losses"]
    assert len(losses) == 3 and losses[-1] < losses[0]


def test_unknown_and_impossible_work_is_refused(cluster) -> None:
    with pytest.raises(Exception, match="unknown workload"):
        ray.get(cluster["scheduler"].submit.remote("mining", {}))
    with pytest.raises(Exception, match="MiB of memory"):
        ray.get(cluster["scheduler"].submit.remote("gating", {}, memory_mb=2**30))


def test_higher_priority_waits_less(cluster) -> None:
    scheduler = cluster["scheduler"]
    rng = np.random.default_rng(2)
    matrix = rng.standard_normal((20000, 64)).astype(np.float32)
    heavy = {"queries": rng.standard_normal((8000, 64)).astype(np.float32), "matrix": matrix}
    light = {"queries": matrix[:2], "matrix": matrix, "k": 1}
    fillers = [scheduler.submit.remote("vector_search", heavy) for _ in range(4)]

    def saturated():  # pcore and cpu both at max_inflight_per_device
        rows = ray.get(scheduler.devices.remote())
        return sum(r["inflight"] for r in rows if r["device_class"] in ("pcore", "cpu")) == 4

    wait_for(saturated, timeout=60, interval=0.02)
    low = [scheduler.submit.remote("vector_search", light, priority=0) for _ in range(2)]
    high = [scheduler.submit.remote("vector_search", light, priority=9) for _ in range(2)]
    outs = ray.get(fillers + low + high, timeout=240)
    low_ids = {o["job_id"] for o in outs[4:6]}
    high_ids = {o["job_id"] for o in outs[6:]}
    order = [
        h["job_id"]
        for h in ray.get(scheduler.history.remote())
        if h["job_id"] in low_ids | high_ids
    ]
    assert set(order[:2]) == high_ids, order  # queued later, dispatched first


def test_fallback_when_saturated(cluster) -> None:
    scheduler, nodes = cluster["scheduler"], cluster["nodes"]
    rng = np.random.default_rng(1)
    matrix = rng.standard_normal((20000, 64)).astype(np.float32)
    queries = rng.standard_normal((256, 64)).astype(np.float32)
    payload = {"queries": queries, "matrix": matrix, "k": 5}
    refs = [scheduler.submit.remote("vector_search", payload) for _ in range(8)]
    outs = ray.get(refs, timeout=240)
    places = {(o["node_id"], o["device_class"]) for o in outs}
    assert (nodes["a"], "pcore") in places  # the preferred device took what it could
    assert (nodes["c"], "cpu") in places  # the rest fell back to the next AVX-512 CPU
    exact = np.argsort(-(queries @ matrix.T), axis=1, kind="stable")[:, :5]
    for o in outs:
        np.testing.assert_array_equal(o["result"]["indices"], exact)


def test_fallback_when_device_is_removed_then_returns(cluster) -> None:
    scheduler, nodes, cfg = cluster["scheduler"], cluster["nodes"], cluster["cfg"]
    found = {n: list(d) for n, d in cluster["found"].items()}
    arc = next(d for d in found[nodes["b"]] if d.device_class == "arc")
    found[nodes["b"]].remove(arc)  # hot-unplug the Arc GPU
    added, removed = sync_devices(scheduler, found, cfg)
    assert added == [] and removed == [f"{nodes['b']}/arc0"]
    gating = _payloads(cluster["model"])["gating"]
    out = ray.get(scheduler.submit.remote("gating", gating), timeout=120)
    assert (out["node_id"], out["device_class"]) == (nodes["b"], "npu")  # next in the table
    added, _ = sync_devices(scheduler, cluster["found"], cfg)  # plugged back in
    assert added == [f"{nodes['b']}/arc0"]
    out = ray.get(scheduler.submit.remote("gating", gating), timeout=120)
    assert out["device_class"] == "arc"


def test_killed_device_work_is_replaced_and_actor_reregisters(cluster) -> None:
    scheduler, nodes, cfg = cluster["scheduler"], cluster["nodes"], cluster["cfg"]
    payload = {
        "texts": ["scale the deployment", "join tables"],
        "steps": 25,
        "model_dir": str(cluster["model"]),
    }
    refs = [scheduler.submit.remote("training", payload, priority=p) for p in range(4)]

    def cuda_busy():
        rows = ray.get(scheduler.devices.remote())
        return any(r["device_class"] == "cuda" and r["inflight"] > 0 for r in rows)

    wait_for(cuda_busy, timeout=60, interval=0.05)
    actor = ray.get_actor(f"qlp-device:{nodes['c'][:12]}:cuda:0", namespace=cfg.namespace)
    ray.kill(actor, no_restart=False)  # dies mid-queue; Ray restarts it (max_restarts)
    outs = ray.get(refs, timeout=300)
    assert len(outs) == 4 and all(len(o["result"]["losses"]) == 25 for o in outs)  # none lost
    history = ray.get(scheduler.history.remote())
    died = [h for h in history if h["kind"] == "training" and h["outcome"] == "device_died"]
    assert died, "the kill hit work in flight"
    assert any(o["attempts"] > 1 for o in outs)  # re-placed

    def reregistered():
        rows = ray.get(scheduler.devices.remote())
        row = next(r for r in rows if r["id"] == f"{nodes['c']}/cuda:0")
        return row["registrations"] >= 2 and row["alive"]

    wait_for(reregistered, timeout=60)
