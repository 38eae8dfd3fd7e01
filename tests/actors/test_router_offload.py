"""``router.offload`` on real Ray (the session's cluster): a scheduler and one torch CPU
device actor in a namespace of this module. A labelled-file evaluation of the router
(``RouterDeployment.route_offline``, what ``POST /v1/admin/routes/evaluate`` calls) and the
batch encoder of ``qlp router`` run on the device actor, which the scheduler's placement
history and the actor's own counter show, and give what the router computes in process;
without a scheduler the same calls fall back and still answer."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from actors.device import device_actor_name  # noqa: E402
from actors.fleet import start_device_actor  # noqa: E402
from actors.launch import start_scheduler  # noqa: E402
from actors.offload import DeviceOffload  # noqa: E402
from qlp_ray.core.config import HardwareConfig  # noqa: E402
from qlp_ray.hardware.discovery import Device  # noqa: E402

pytestmark = pytest.mark.integration

NAMESPACE = "qlp_router_offload_test"
SAMPLES = Path(__file__).resolve().parents[2] / "qlp_ray" / "data" / "samples"


def _instructions(domain: str, split: str, n: int) -> list[str]:
    lines = (SAMPLES / f"{domain}.{split}.jsonl").read_text().splitlines()[:n]
    return [json.loads(x)["instruction"] for x in lines]


@pytest.fixture(scope="module")
def fleet(ray_session):
    ray_session.connect(namespace=NAMESPACE)  # the device actor finds the scheduler in it
    cfg = HardwareConfig(status_interval_s=0.5, namespace=NAMESPACE)
    try:
        scheduler = start_scheduler(cfg)
        node = ray.get_runtime_context().get_node_id()
        start_device_actor(Device("cpu", "cpu", "torch", "cpu", avx512=True), node, cfg)
        deadline = time.time() + 60
        while not ray.get(scheduler.devices.remote()) and time.time() < deadline:
            time.sleep(0.2)
        actor = ray.get_actor(device_actor_name(node, "cpu"), namespace=NAMESPACE)
        yield {"scheduler": scheduler, "cfg": cfg, "actor": actor, "node": node}
    finally:
        for entry in ray.util.list_named_actors(all_namespaces=True):
            if entry["namespace"] == NAMESPACE:
                ray.kill(ray.get_actor(entry["name"], namespace=NAMESPACE), no_restart=True)
        from ray.experimental.internal_kv import _internal_kv_del

        _internal_kv_del(f"qlp-scheduler/{NAMESPACE}".encode())
        ray_session.connect()


@pytest.fixture(scope="module")
def routable(tmp_path_factory):
    """A registry with devops and frontend adapters whose centroids come from the samples."""
    from qlp_ray.route.centroid import compute_centroid
    from qlp_ray.route.embeddings import get_embedder
    from tests.helpers.tiny_lm import save_random_lora, tiny_serve_setup
    from tests.ui.conftest import registry_base

    home = tmp_path_factory.mktemp("offload_home")
    cfg, registry, base = tiny_serve_setup(home, {})
    for seed, domain in enumerate(("devops", "frontend"), start=3):
        centroid = compute_centroid(get_embedder().encode(_instructions(domain, "train", 40)))
        adapter = save_random_lora(base, home / f"lora-{domain}", seed)
        registry.register(adapter, adapter_id=domain, domain=domain,
                          base_model=registry_base(cfg),
                          metadata={"centroid": centroid.tolist()})  # fmt: skip
    texts = [t for d in ("devops", "frontend", "ml") for t in _instructions(d, "heldout", 6)]
    return cfg, texts


def _router(cfg, offload: str, namespace: str):
    from qlp_ray.serve.router import RouterDeployment

    # torch f32 in the router as on the torch device: the vectors are the same computation
    router = cfg.router.model_copy(
        update={"offload": offload, "embedding_backend": "torch", "threshold": 0.2}
    )
    hardware = cfg.hardware.model_copy(update={"namespace": namespace})
    return RouterDeployment(cfg.model_copy(update={"router": router, "hardware": hardware})
                            .model_dump(mode="json"))  # fmt: skip


def _same(a: list[dict], b: list[dict]) -> None:
    assert [(d["target"], d["fallback"]) for d in a] == [(d["target"], d["fallback"]) for d in b]
    np.testing.assert_allclose([d["confidence"] for d in a], [d["confidence"] for d in b],
                               atol=1e-4)  # fmt: skip


def test_route_evaluation_runs_on_the_device_actor(fleet, routable) -> None:
    cfg, texts = routable
    before = ray.get(fleet["actor"].status.remote())["completed"]
    on_device = asyncio.run(_router(cfg, "auto", NAMESPACE).route_offline(texts))
    here = asyncio.run(_router(cfg, "never", NAMESPACE).route_offline(texts))

    embedded, searched = on_device["computed_on"]["embedding"], on_device["computed_on"]["search"]
    assert embedded["where"] == "device" and embedded["devices"] == [f"{fleet['node'][:12]}/cpu"]
    assert searched["where"] == "device"  # the centroid search of all rows: one vector_search
    history = {h["job_id"]: h for h in ray.get(fleet["scheduler"].history.remote())}
    for job, kind in [*((j, "embedding") for j in embedded["jobs"]),
                      *((j, "vector_search") for j in searched["jobs"])]:  # fmt: skip
        h = history[job]
        assert (h["kind"], h["outcome"], h["device"]) == (kind, "done", f"{fleet['node']}/cpu")
    after = ray.get(fleet["actor"].status.remote())["completed"]
    assert after - before == len(embedded["jobs"]) + len(searched["jobs"])

    assert here["computed_on"]["embedding"]["where"] == "process"
    assert here["computed_on"]["embedding"]["reason"] == "router.offload is 'never'"
    _same(on_device["decisions"], here["decisions"])
    routed = {d["domain"] for d in here["decisions"] if not d["fallback"]}
    assert routed == {"devops", "frontend"}  # a real table, not all fallbacks

    summary = ray.get(fleet["scheduler"].workloads.remote())
    assert summary["embedding"]["done"] >= 1 and summary["vector_search"]["done"] >= 1


def test_without_a_scheduler_the_evaluation_runs_in_the_router(fleet, routable) -> None:
    cfg, texts = routable
    alone = asyncio.run(_router(cfg, "auto", "qlp_no_scheduler_here").route_offline(texts))
    here = asyncio.run(_router(cfg, "never", NAMESPACE).route_offline(texts))
    embedded = alone["computed_on"]["embedding"]
    assert embedded["where"] == "process"
    assert "no 'qlp-scheduler' actor in Ray namespace 'qlp_no_scheduler_here'" in embedded["reason"]
    _same(alone["decisions"], here["decisions"])


def test_batch_encoder_of_qlp_router_runs_on_the_device(fleet) -> None:
    from qlp_ray.route.embeddings import PACKAGED_MODEL, get_embedder

    texts = _instructions("api", "train", 100)
    offload = DeviceOffload("auto", fleet["cfg"], chunk=40)
    local_calls = []

    def local(batch):
        local_calls.append(len(batch))
        return get_embedder().encode(list(batch))

    vecs, placement = offload.embed(texts, local, PACKAGED_MODEL)
    assert placement.where == "device" and local_calls == []
    assert len(placement.jobs) == -(-len(texts) // 40) > 1  # one workload per chunk
    here = get_embedder().encode(texts)
    assert vecs.shape == here.shape and np.min(np.sum(vecs * here, axis=1)) >= 0.9999


def test_per_request_search_on_the_device_with_always(fleet, routable) -> None:
    cfg, texts = routable
    always = _router(cfg, "always", NAMESPACE)
    auto = _router(cfg, "auto", NAMESPACE)
    got = asyncio.run(always._route_texts(texts[:2]))
    want = asyncio.run(auto._route_texts(texts[:2]))
    _same(got, want)
    assert always.offload_stats() == {"mode": "always", "device": 1, "process": 0}
    assert auto.offload_stats() == {"mode": "auto", "device": 0, "process": 0}  # not asked
