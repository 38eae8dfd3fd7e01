"""Where `qlp eval` / `qlp optimize` tasks run (hardware/task_placement.py), without Ray."""

from __future__ import annotations

import pytest

from qlp_ray.core.config import HardwareConfig
from qlp_ray.hardware.task_placement import place_task

TABLE = HardwareConfig().capabilities


def _node(node_id, alive=True, **resources):
    return {"NodeID": node_id, "Alive": alive, "Resources": {"CPU": 4.0, **resources}}


def test_cpu_only_cluster_runs_on_the_drivers_node():
    p = place_task("inference", "torch", TABLE, [_node("b"), _node("drv")], "drv")
    assert (p.device_class, p.node_id, p.torch_device) == ("cpu", "drv", "cpu")
    assert p.ray_options == {"num_cpus": 1.0}
    assert "driver's node" in p.reason


def test_gpu_node_takes_torch_inference_with_num_gpus():
    nodes = [_node("drv"), _node("gpu", GPU=1.0)]
    p = place_task("inference", "torch", TABLE, nodes, "drv")
    assert (p.device_class, p.node_id, p.torch_device) == ("cuda", "gpu", "cuda")
    assert p.ray_options == {"num_cpus": 1.0, "num_gpus": 1}


def test_pinned_task_stays_on_the_driver_even_with_a_gpu_elsewhere():
    nodes = [_node("drv"), _node("gpu", GPU=1.0)]
    p = place_task("inference", "torch", TABLE, nodes, "drv", pin_to_driver=True)
    assert (p.device_class, p.node_id) == ("cpu", "drv")
    assert "pinned" in p.reason


def test_int8_openvino_export_prefers_the_npu_node_and_names_the_openvino_device():
    nodes = [_node("drv"), _node("arc", qlp_arc=1.0), _node("npu", qlp_npu=1.0)]
    p = place_task("inference_int8", "openvino", TABLE, nodes, "drv")
    assert (p.device_class, p.node_id, p.openvino_device) == ("npu", "npu", "NPU")
    assert p.ray_options == {"num_cpus": 1.0, "resources": {"qlp_npu": 1}}


def test_torch_int8_stays_on_cpu_and_dead_nodes_are_skipped():
    nodes = [_node("drv", alive=False), _node("other", qlp_npu=1.0)]
    p = place_task("inference_int8", "torch-cpu", TABLE, nodes, "drv")
    assert (p.device_class, p.node_id, p.openvino_device) == ("cpu", "other", "CPU")
    with pytest.raises(ValueError, match="no alive node"):
        place_task("inference", "torch", TABLE, nodes, "drv", pin_to_driver=True)
