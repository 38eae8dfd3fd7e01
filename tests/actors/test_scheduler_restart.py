"""The scheduler actor killed with workloads queued and placements held: Ray restarts it,
it restores its placements from the GCS store, re-attaches the running device actors, and
every queued workload still completes (Ray retries the callers' pending calls)."""

from __future__ import annotations

import time

import pytest

ray = pytest.importorskip("ray")

from actors.fleet import start_device_actor  # noqa: E402
from actors.launch import start_scheduler  # noqa: E402
from qlp_ray.core.config import HardwareConfig  # noqa: E402
from qlp_ray.hardware.discovery import Device  # noqa: E402

pytestmark = pytest.mark.integration

NAMESPACE = "qlp_sched_restart_test"


@pytest.fixture()
def fleet(ray_session, tmp_path):
    from tests.helpers.hw_fixtures import build_small_lm

    model_dir = build_small_lm(tmp_path / "lm", steps=5)
    ray_session.connect(namespace=NAMESPACE)
    cfg = HardwareConfig(status_interval_s=0.5, max_inflight_per_device=1, namespace=NAMESPACE)
    try:
        scheduler = start_scheduler(cfg)
        node = ray.get_runtime_context().get_node_id()
        start_device_actor(Device("cpu", "cpu", "torch", "cpu"), node, cfg)
        deadline = time.time() + 60
        while not ray.get(scheduler.devices.remote()) and time.time() < deadline:
            time.sleep(0.2)
        yield scheduler, cfg, model_dir
    finally:
        for actor in ray.util.list_named_actors(all_namespaces=True):
            if actor["namespace"] == NAMESPACE:
                ray.kill(ray.get_actor(actor["name"], namespace=NAMESPACE), no_restart=True)
        from ray.experimental.internal_kv import _internal_kv_del

        _internal_kv_del(f"qlp-scheduler/{NAMESPACE}".encode())
        ray_session.connect()


def test_killed_scheduler_restarts_with_its_placements_and_queue(fleet):
    scheduler, cfg, model_dir = fleet
    first = ray.get(scheduler.ping.remote())
    held = ray.get(scheduler.place_training.remote("training:job-a", "training", 1, 0.5))
    assert held["state"] == "placed"
    payload = {"texts": ["scale the deployment"], "steps": 3, "model_dir": str(model_dir)}
    refs = [scheduler.submit.remote("training", payload) for _ in range(4)]
    time.sleep(1.0)  # one runs on the device (max 1 in flight), the others wait in the queue
    assert ray.get(scheduler.queued.remote()) >= 1

    ray.kill(scheduler, no_restart=False)  # a crash: Ray restarts it (max_restarts=-1)

    results = ray.get(refs, timeout=300)  # none lost: pending calls are retried
    assert len(results) == 4 and all(r["device_class"] == "cpu" for r in results)
    assert all(r["result"]["losses"][-1] < r["result"]["losses"][0] for r in results)
    now = ray.get(scheduler.ping.remote())
    assert now["pid"] != first["pid"] and now["restored"], now
    assert now["devices"] == 1  # the running device actor was found again
    live = ray.get(scheduler.placements.remote())
    assert live["training:job-a"]["workers"] == 1 and live["training:job-a"]["state"] == "placed"
    assert ray.get(scheduler.release.remote("training:job-a"))
