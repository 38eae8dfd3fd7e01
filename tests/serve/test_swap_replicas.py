"""A hot-swap reaches every compositor replica (``serve.compositor_replicas: 2``) on two
nodes, real HTTP.

Tiny base model, real signed PEFT adapters, two compositor replicas on local Ray Serve
(the session's Serve port), one on the head and one on a worker node added for the module
(``compositor_max_replicas_per_node: 1``). A Serve handle call lands on one replica, so
the swap route goes through the swap board, a named Ray actor: the answer must count two
acknowledgements, which come from two distinct replicas after each has loaded the new
version. No file is shared between the replicas.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from tests.helpers.ray_start import SERVE_PORT, SERVE_URL, deployed
from tests.helpers.tiny_lm import save_random_lora, tiny_serve_setup

pytestmark = pytest.mark.integration

PORT, URL = SERVE_PORT, SERVE_URL
ADMIN = {"authorization": "Bearer swap-admin"}


def build(home: Path):
    from qlp_ray.models.base import base_model_id

    cfg, registry, base = tiny_serve_setup(
        home,
        {
            "port": PORT,
            "app_name": "qlp_swap2",
            "admin_key": "swap-admin",
            "compositor_replicas": 2,
            "compositor_max_replicas_per_node": 1,
            "compositor_num_cpus": 0.25,
            "router_num_cpus": 0.25,
        },
    )
    for version, seed in ((1, 1), (2, 2), (3, 3)):
        src = save_random_lora(base, home / "src" / f"v{version}", seed, r=4, b_std=0.5)
        registry.register(
            src, adapter_id="dataeng", domain="dataeng", base_model=base_model_id(cfg)
        )
    registry.set_current("dataeng", 1)
    return cfg, registry


@pytest.fixture(scope="module")
def app(tmp_path_factory, ray_session):
    node = ray_session.add_node(num_cpus=2)
    try:
        ray_session.cluster.wait_for_nodes()
        cfg, registry = build(tmp_path_factory.mktemp("qlp_swap2"))
        with deployed(cfg) as url:
            assert url == URL
            yield {"cfg": cfg, "registry": registry}
    finally:
        ray_session.cluster.remove_node(node)


def test_the_two_replicas_run_on_two_nodes(app, ray_session):
    from ray.util.state import list_actors

    replicas = list_actors(
        address=ray_session.address,
        filters=[("class_name", "=", "ServeReplica:qlp_swap2:Compositor"), ("state", "=", "ALIVE")],
    )
    assert len({a.node_id for a in replicas}) == 2, replicas


def _swap(body: dict) -> httpx.Response:
    return httpx.post(URL + "/v1/admin/swap", headers=ADMIN, json=body, timeout=120)


def _served_version() -> int:
    body = {"model": "dataeng", "prompt": "select rows", "max_tokens": 2}
    r = httpx.post(URL + "/v1/completions", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()["qlp"]["version"]


def test_warm_swap_is_acknowledged_by_both_replicas(app):
    from qlp_ray.serve.swap_board_actor import make_swap_board

    assert _served_version() == 1
    r = _swap({"old": "dataeng@1", "new": "dataeng@2", "warm": True})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["compositor_replicas"] == 2, out
    assert out["acknowledged"] == {"warm": 2, "invalidate": 2}, out
    assert out["warmed"] == ["dataeng@2"], out
    assert all(_served_version() == 2 for _ in range(6))
    board = make_swap_board(app["cfg"])  # the app's board actor
    assert board.notices() == []  # notices and answers are cleared after the swap
    assert not (app["cfg"].paths.root / "serve" / "swaps").exists()  # no files


def test_a_tampered_new_version_refuses_the_swap(app):
    weights = Path(app["registry"].get("dataeng", 3).path) / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8] + b"tampered")
    r = _swap({"old": "dataeng@2", "new": "dataeng@3", "warm": True})
    assert r.status_code == 424, r.text
    assert "dataeng" in r.json()["error"]["message"]
    assert _served_version() == 2  # nothing switched


def test_cold_swap_invalidates_on_both_replicas(app):
    r = _swap({"old": "dataeng@2", "new": "dataeng@1", "warm": False})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["acknowledged"] == {"warm": 0, "invalidate": 2}
    assert _served_version() == 1


def test_prefetch_is_queued_by_both_replicas(app):
    r = httpx.post(
        URL + "/v1/admin/prefetch", headers=ADMIN, json={"models": ["dataeng@2"]}, timeout=60
    )
    assert r.status_code == 202, r.text
    assert r.json() == {"status": "queued", "queued": ["dataeng@2"], "priority": 0,
                        "acknowledged": 2}  # fmt: skip
    bad = httpx.post(URL + "/v1/admin/prefetch", headers=ADMIN, json={"models": ["ghost"]})
    assert bad.status_code == 404, bad.text
