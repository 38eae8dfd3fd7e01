"""The scheduler places the Serve replicas at deploy time (``serve.app.placed_config``):
an OpenVINO router asks Ray for an NPU on a cluster that advertises one and embeds on it;
a vLLM compositor asks for a GPU and computes in half precision there; without them both
stay on CPU (float32). (Deploying on the
stand-in accelerator node is not done: this machine has no NPU or GPU to compute on.)"""

from __future__ import annotations

import time

import pytest

from qlp_ray.core.config import load_config

pytestmark = pytest.mark.integration


def _options(cfg):
    from qlp_ray.serve.compositor import compositor_deployment
    from qlp_ray.serve.router import router_deployment

    return (
        compositor_deployment(cfg).ray_actor_options,
        router_deployment(cfg).ray_actor_options,
    )


def _alive_nodes() -> set[str]:
    import ray

    return {n["NodeID"] for n in ray.nodes() if n["Alive"]}


def _device_nodes(cfg) -> set[str]:
    """Nodes with a live device actor registered with the platform's scheduler."""
    import ray

    from actors.launch import get_scheduler

    rows = ray.get(get_scheduler(cfg.hardware).devices.remote())
    return {r["node_id"] for r in rows if r.get("alive", True)}


def test_replicas_ask_for_advertised_accelerators_and_fall_back_to_cpu(ray_session, tmp_path):
    from qlp_ray.serve.app import placed_config

    cfg = load_config(environ={"QLP_HOME": str(tmp_path)})
    cfg.serve.backend = "vllm"  # only its options are built here: no engine starts
    placed, plan = placed_config(cfg)
    compositor, router = _options(placed)
    assert "resources" not in router and "num_gpus" not in compositor  # no accelerators
    assert placed.router.embedding_device == "CPU"
    assert plan["devices"]["router"]["device_class"] == "cpu"
    assert plan["devices"]["compositor"]["dtype"] == "float32"  # on CPU, whatever model.dtype
    assert placed.serve.compositor_num_gpus == 0.0
    before = _alive_nodes()
    assert before <= _device_nodes(cfg)  # the platform started its device actors

    node = ray_session.add_node(num_cpus=0, num_gpus=1, resources={"qlp_npu": 1})
    try:
        ray_session.cluster.wait_for_nodes()
        placed, plan = placed_config(cfg)
        compositor, router = _options(placed)
        assert router["resources"] == {"qlp_npu": 1} and placed.router.embedding_device == "NPU"
        assert compositor["num_gpus"] == 1 and placed.serve.compositor_num_gpus == 1.0
        [gpu_node] = _alive_nodes() - before
        assert gpu_node in _device_nodes(cfg)  # the new node got its device actors
        assert plan["devices"]["compositor"]["reason"].startswith("inference on cuda (vllm")
        # the replica on the GPU loads in half precision (bf16, or fp16 on an older GPU)
        assert plan["devices"]["compositor"]["dtype"].startswith("bfloat16 (float16 on a GPU")
        cfg.model.dtype = "float16"
        assert placed_config(cfg)[1]["devices"]["compositor"]["dtype"] == "float16"
        cfg.model.dtype = "auto"
        # as configured when the scheduler is told not to place devices
        cfg.serve.place_devices = False
        placed, _ = placed_config(cfg)
        compositor, router = _options(placed)
        assert "resources" not in router and "num_gpus" not in compositor
    finally:
        ray_session.cluster.remove_node(node)
    deadline = time.monotonic() + 30  # the scheduler's status loop sees the node die
    while gpu_node in _device_nodes(cfg) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert gpu_node not in _device_nodes(cfg)  # its devices are no longer offered
