"""Placement by the capability table: preference, fallback, saturation, memory, balance."""

from __future__ import annotations

import pytest

from qlp_ray.core.config import HardwareConfig, load_config
from qlp_ray.core.errors import InvalidRequest
from qlp_ray.hardware.placement import DeviceState, NoCapableDevice, choose_device

TABLE = HardwareConfig().capabilities


def _fleet() -> list[DeviceState]:
    return [
        DeviceState("a/pcore", "pcore", "a", avx512=True),
        DeviceState("a/ecore", "ecore", "a"),
        DeviceState("b/openvino:NPU", "npu", "b"),
        DeviceState(
            "b/openvino:GPU", "arc", "b", total_memory_bytes=8 << 30, free_memory_bytes=8 << 30
        ),
        DeviceState("c/openvino:MYRIAD", "ncs2", "c"),
        DeviceState(
            "c/cuda:0", "cuda", "c", total_memory_bytes=16 << 30, free_memory_bytes=16 << 30
        ),
        DeviceState("c/openvino:CPU", "ov_cpu", "c"),
        DeviceState("c/cpu", "cpu", "c"),
    ]


@pytest.mark.parametrize(
    ("workload", "expected"),
    [
        ("embedding", "b/openvino:NPU"),
        ("vector_search", "a/pcore"),
        ("inference", "c/cuda:0"),
        ("inference_int8", "b/openvino:NPU"),
        ("reranking", "c/openvino:MYRIAD"),
        ("gating", "b/openvino:GPU"),
        ("training", "c/cuda:0"),
    ],
)
def test_the_table_decides(workload: str, expected: str) -> None:
    assert choose_device(workload, _fleet(), TABLE).key == expected


def test_absent_device_falls_back_down_the_list() -> None:
    fleet = [s for s in _fleet() if s.device_class not in ("npu", "arc")]
    assert choose_device("inference_int8", fleet, TABLE).key == "c/openvino:MYRIAD"
    fleet = [s for s in fleet if s.device_class != "ncs2"]
    assert choose_device("inference_int8", fleet, TABLE).key == "c/openvino:CPU"


def test_dead_saturated_and_busy_devices_are_skipped() -> None:
    fleet = _fleet()
    npu = fleet[2]
    npu.inflight = 2
    assert choose_device("embedding", fleet, TABLE, max_inflight=2).key == "b/openvino:GPU"
    npu.inflight, npu.utilization = 0, 0.95
    assert choose_device("embedding", fleet, TABLE, busy_threshold=0.9).key == "b/openvino:GPU"
    npu.utilization, npu.alive = 0.0, False
    assert choose_device("embedding", fleet, TABLE).key == "b/openvino:GPU"


def test_avx512_selector() -> None:
    fleet = [
        DeviceState("a/pcore", "pcore", "a", avx512=False),
        DeviceState("b/cpu", "cpu", "b", avx512=True),
    ]
    assert choose_device("vector_search", fleet, TABLE).key == "b/cpu"


def test_all_busy_means_wait_and_nothing_capable_raises() -> None:
    fleet = [DeviceState("a/cpu", "cpu", "a", inflight=2)]
    assert choose_device("inference", fleet, TABLE, max_inflight=2) is None
    fleet[0].inflight, fleet[0].alive = 0, False  # restarting: wait, do not fail
    assert choose_device("inference", fleet, TABLE) is None
    with pytest.raises(NoCapableDevice, match="inference_int8"):
        choose_device("inference_int8", fleet, TABLE)
    with pytest.raises(InvalidRequest, match="unknown workload"):
        choose_device("mining", fleet, TABLE)


def test_memory_need() -> None:
    fleet = _fleet()
    fleet[5].free_memory_bytes = 1 << 30  # cuda has 1 GiB free
    assert choose_device("training", fleet, TABLE, memory_bytes=4 << 30).key == "a/pcore"
    with pytest.raises(NoCapableDevice, match="MiB"):
        choose_device("gating", [fleet[3]], TABLE, memory_bytes=64 << 30)


def test_load_balancing_among_equals_and_preferred() -> None:
    fleet = [DeviceState(f"{n}/cpu", "cpu", n) for n in "abc"]
    fleet[0].inflight = 1
    picks = {choose_device("inference", fleet, TABLE, turn=t).key for t in range(4)}
    assert picks == {"b/cpu", "c/cpu"}
    assert choose_device("inference", fleet, TABLE, preferred="a/cpu").key == "a/cpu"


def test_hardware_yaml_is_the_default_table() -> None:
    from qlp_ray.core.config import REPO_ROOT

    cfg = load_config(REPO_ROOT / "configs" / "hardware.yaml")
    assert cfg.hardware == HardwareConfig()


def test_bad_selector_is_named() -> None:
    with pytest.raises(ValueError, match="tpu"):
        HardwareConfig(capabilities={"embedding": ["tpu"]})
