"""Device discovery parsers on fake sysfs / cpuinfo / meminfo files, and on this machine."""

from __future__ import annotations

from pathlib import Path

import pytest

from qlp_ray.hardware import discovery as disc

CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: 13th Gen Intel(R) Core(TM) i7-1360P
flags\t\t: fpu vme sse sse2 avx avx2 {extra}

processor\t: 1
model name\t: 13th Gen Intel(R) Core(TM) i7-1360P
flags\t\t: fpu
"""


def _fake_machine(tmp_path: Path, hybrid: bool, avx512: bool) -> tuple[Path, Path, Path]:
    sysfs = tmp_path / "sys" / "devices"
    (sysfs / "system" / "cpu").mkdir(parents=True)
    (sysfs / "system" / "cpu" / "online").write_text("0-15\n")
    if hybrid:
        (sysfs / "cpu_core").mkdir()
        (sysfs / "cpu_core" / "cpus").write_text("0-7\n")
        (sysfs / "cpu_atom").mkdir()
        (sysfs / "cpu_atom" / "cpus").write_text("8-15\n")
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(CPUINFO.format(extra="avx512f avx512bw" if avx512 else "fma"))
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       16314488 kB\nMemFree:  1 kB\nMemAvailable:    8000000 kB\n")
    return sysfs, cpuinfo, meminfo


@pytest.mark.parametrize(
    ("text", "expected"),
    [("0-3,8,10-11", [0, 1, 2, 3, 8, 10, 11]), ("5", [5]), ("", []), ("2,1,1", [1, 2])],
)
def test_parse_cpu_list(text: str, expected: list[int]) -> None:
    assert disc.parse_cpu_list(text) == expected


def test_parse_cpu_list_rejects_reversed_range() -> None:
    with pytest.raises(ValueError, match="bad CPU range"):
        disc.parse_cpu_list("7-3")


def test_hybrid_cpu_splits_pcores_and_ecores(tmp_path: Path) -> None:
    sysfs, cpuinfo, meminfo = _fake_machine(tmp_path, hybrid=True, avx512=False)
    devices = disc.discover_cpu(sysfs, cpuinfo, meminfo, usable=set(range(16)))
    by_key = {d.key: d for d in devices}
    assert set(by_key) == {"pcore", "ecore"}
    assert by_key["pcore"].cores == tuple(range(8))
    assert by_key["ecore"].cores == tuple(range(8, 16))
    assert by_key["pcore"].resource == "qlp_pcore"
    assert by_key["ecore"].resource == "qlp_ecore"
    assert not by_key["pcore"].avx512
    assert by_key["pcore"].memory_bytes == 16314488 * 1024
    assert "i7-1360P" in by_key["pcore"].description


def test_non_hybrid_cpu_is_one_class_with_avx512(tmp_path: Path) -> None:
    sysfs, cpuinfo, meminfo = _fake_machine(tmp_path, hybrid=False, avx512=True)
    (device,) = disc.discover_cpu(sysfs, cpuinfo, meminfo, usable={0, 1, 2, 3})
    assert device.key == "cpu" and device.resource == "qlp_cpu"
    assert device.cores == (0, 1, 2, 3)  # restricted to the usable cores
    assert device.avx512


def test_affinity_can_remove_a_class(tmp_path: Path) -> None:
    sysfs, cpuinfo, meminfo = _fake_machine(tmp_path, hybrid=True, avx512=True)
    devices = disc.discover_cpu(sysfs, cpuinfo, meminfo, usable={8, 9})
    assert [d.key for d in devices] == ["ecore"]


def test_cpuinfo_reads_first_processor(tmp_path: Path) -> None:
    _, cpuinfo, meminfo = _fake_machine(tmp_path, hybrid=False, avx512=True)
    model, flags = disc.read_cpuinfo(cpuinfo)
    assert model.endswith("i7-1360P") and "avx512f" in flags and disc.has_avx512(flags)
    assert disc.read_meminfo(meminfo) == {
        "MemTotal": 16314488 * 1024,
        "MemAvailable": 8000000 * 1024,
    }
    assert disc.read_cpuinfo(tmp_path / "missing")[1] == set()


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("CPU", "ov_cpu"),
        ("NPU", "npu"),
        ("GPU", "arc"),
        ("GPU.1", "arc"),
        ("MYRIAD", "ncs2"),
        ("HDDL", "ncs2"),
        ("HETERO", None),
    ],
)
def test_classify_openvino_device(name: str, cls: str | None) -> None:
    assert disc.classify_openvino_device(name) == cls


def test_device_dict_roundtrip() -> None:
    dev = disc.Device("openvino:NPU", "npu", "openvino", "NPU", cores=(1, 2), properties={"a": 1})
    data = dev.to_dict()
    assert data["resource"] == "qlp_npu" and data["cores"] == [1, 2]
    assert disc.Device.from_dict(data) == dev
    with pytest.raises(ValueError, match="unknown device class"):
        disc.resource_name("tpu")


def test_this_machine_reports_only_what_exists() -> None:
    import openvino
    import torch

    devices = disc.discover_devices()
    keys = [d.key for d in devices]
    cpu = [d for d in devices if d.backend == "torch" and d.target == "cpu"]
    assert cpu, "a CPU is always present"
    _, flags = disc.read_cpuinfo()
    assert all(d.avx512 == ("avx512f" in flags) for d in cpu)
    ov_names = openvino.Core().available_devices
    assert sorted(k for k in keys if k.startswith("openvino:")) == sorted(
        f"openvino:{n}" for n in ov_names if disc.classify_openvino_device(n)
    )
    assert any(k.startswith("cuda:") for k in keys) == torch.cuda.is_available()
