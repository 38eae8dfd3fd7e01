"""The Devices page and ``GET /v1/admin/devices`` against a real hardware scheduler on the
session's Ray cluster: the scheduler and the device actors of this machine
(``actors.launch.start_hardware``) in a namespace of this module, serving's CPU share
planned through it (``plan_serving``), the routes on a real HTTP server in this process
(tests/ui/api_server.py). The actors are detached: the module kills them afterwards."""

from __future__ import annotations

import httpx
import pytest

from tests.ui.conftest import ADMIN_KEY, errors, page

pytestmark = pytest.mark.integration

NAMESPACE = "qlp_ui_devices"


@pytest.fixture(scope="module")
def live(tmp_path_factory, ray_session):
    import ray

    from actors.launch import plan_serving, start_hardware
    from qlp_ray.core.config import load_config
    from qlp_ray.registry.signing import init_keys
    from tests.ui.api_server import serving

    home = tmp_path_factory.mktemp("ui_devices")
    overrides = {"paths": {"home": str(home)}, "serve": {"admin_key": ADMIN_KEY},
                 "hardware": {"namespace": NAMESPACE}}  # fmt: skip
    cfg = load_config(overrides=overrides, environ={})
    init_keys(cfg.paths.keys)
    ray_session.connect(namespace=NAMESPACE)  # device actors find the scheduler in it
    try:
        start_hardware(cfg.hardware)
        plan = plan_serving({"Gateway": (1.0, 1)}, 1.0, cfg=cfg.hardware)
        with serving(cfg) as url:
            yield {"url": url, "plan": plan}
    finally:
        for actor in ray.util.list_named_actors(all_namespaces=True):
            if actor["namespace"] == NAMESPACE:
                ray.kill(ray.get_actor(actor["name"], namespace=NAMESPACE), no_restart=True)
        ray_session.connect()


def test_devices_and_placements_from_the_scheduler(live):
    from actors.fleet import discover_cluster

    answer = httpx.get(f"{live['url']}/v1/admin/devices", timeout=60,
                       headers={"authorization": f"Bearer {ADMIN_KEY}"}).json()  # fmt: skip
    assert answer["namespace"] == NAMESPACE
    found = discover_cluster()
    wanted = {f"{node}/{d.key}" for node, devs in found.items() for d in devs}
    assert {d["id"] for d in answer["devices"]} == wanted  # every device of the cluster
    assert answer["placements"]["serve"]["workload"] == "serve"

    at = page("devices", live["url"])
    assert not at.exception and not errors(at), errors(at)
    shown = at.dataframe[0].value
    assert len(shown) == len(answer["devices"]) and set(shown["alive"]) == {True}
    assert list(at.dataframe[1].value["workload"]) == ["serve"]
