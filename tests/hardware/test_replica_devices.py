"""Which device a Serve replica computes on and what it asks Ray for (pure, no Ray)."""

from __future__ import annotations

from qlp_ray.hardware.replica_devices import choose_replica_device

TABLE = {
    "inference": ["cuda", "xpu", "arc", "npu", "pcore", "cpu", "ov_cpu"],
    "embedding": ["npu", "arc", "cuda", "xpu", "pcore", "cpu", "ov_cpu", "ecore"],
}


def test_replica_asks_for_the_accelerator_the_cluster_advertises():
    npu = choose_replica_device("embedding", "openvino", TABLE, {"CPU": 4, "qlp_npu": 1})
    assert (npu.device_class, npu.openvino_device) == ("npu", "NPU")
    assert npu.ray_options == {"resources": {"qlp_npu": 1}}
    gpu = choose_replica_device("inference", "vllm", TABLE, {"CPU": 8, "GPU": 2})
    assert gpu.device_class == "cuda" and gpu.ray_options == {"num_gpus": 1}
    # the preference order decides: arc before npu for inference
    arc = choose_replica_device("inference", "openvino", TABLE, {"qlp_npu": 1, "qlp_arc": 1})
    assert (arc.device_class, arc.openvino_device) == ("arc", "GPU")


def test_replica_falls_back_to_cpu_without_a_usable_accelerator():
    none = choose_replica_device("embedding", "openvino", TABLE, {"CPU": 2})
    assert (none.device_class, none.openvino_device, none.ray_options) == ("cpu", "CPU", {})
    assert "no usable npu/arc/cuda/xpu advertised" in none.reason
    # the built-in decoder cannot drive a GPU: it stays on CPU and asks for none
    hf = choose_replica_device("inference", "transformers", TABLE, {"CPU": 8, "GPU": 1})
    assert hf.ray_options == {} and hf.device_class == "cpu"
