"""Discover the compute devices of this machine. Pure: no Ray, nothing invented.

* CPU: hybrid CPUs (Linux ``/sys/devices/cpu_core/cpus`` and ``cpu_atom/cpus``) are split
  into a ``pcore`` and an ``ecore`` device; otherwise all usable cores are one ``cpu``
  device. AVX-512 support comes from the ``/proc/cpuinfo`` flags.
* OpenVINO: ``openvino.Core().available_devices`` — ``CPU`` → ``ov_cpu``, ``NPU`` → ``npu``,
  ``GPU``/``GPU.N`` (Intel Arc or iGPU) → ``arc``, ``MYRIAD``/``HDDL`` (NCS2) → ``ncs2``.
* torch: CUDA GPUs → ``cuda``, Intel XPU → ``xpu``.

Every parser takes its file paths as arguments so tests can feed fake sysfs/cpuinfo.
"""

from __future__ import annotations

import logging
import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from qlp_ray.core.config import HW_DEVICE_CLASSES

logger = logging.getLogger(__name__)

SYSFS_DEVICES = Path("/sys/devices")
PROC_CPUINFO = Path("/proc/cpuinfo")
PROC_MEMINFO = Path("/proc/meminfo")

DEVICE_CLASSES = HW_DEVICE_CLASSES
BACKEND_OF_CLASS = {
    "pcore": "torch",
    "ecore": "torch",
    "cpu": "torch",
    "ov_cpu": "openvino",
    "npu": "openvino",
    "arc": "openvino",
    "ncs2": "openvino",
    "cuda": "torch",
    "xpu": "torch",
}


def resource_name(device_class: str) -> str:
    """The Ray custom resource a node advertises for one device of this class."""
    if device_class not in DEVICE_CLASSES:
        raise ValueError(f"unknown device class {device_class!r}; known: {DEVICE_CLASSES}")
    return f"qlp_{device_class}"


@dataclass(frozen=True)
class Device:
    """One device a device actor can own.

    ``key`` is unique per node (``cpu``, ``pcore``, ``openvino:NPU``, ``cuda:0``);
    ``target`` is what the backend is given (``cpu``, ``cuda:0``, OpenVINO ``NPU``).
    ``emulated`` marks a stand-in declared by a test or config, computing on ``target``.
    """

    key: str
    device_class: str
    backend: str
    target: str
    description: str = ""
    cores: tuple[int, ...] = ()
    avx512: bool = False
    memory_bytes: int | None = None
    emulated: bool = False
    properties: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def resource(self) -> str:
        return resource_name(self.device_class)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["cores"] = list(self.cores)
        out["resource"] = self.resource
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Device:
        fields = {k: v for k, v in data.items() if k != "resource"}
        fields["cores"] = tuple(fields.get("cores", ()))
        return cls(**fields)


# ------------------------------------------------------------------------------ CPU
def parse_cpu_list(text: str) -> list[int]:
    """Parse a Linux CPU list such as ``0-3,8,10-11`` (empty → ``[]``)."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            lo, hi = part.split("-", 1)
            if int(hi) < int(lo):
                raise ValueError(f"bad CPU range {part!r}")
            cpus.extend(range(int(lo), int(hi) + 1))
        else:
            cpus.append(int(part))
    return sorted(set(cpus))


def read_core_classes(
    sysfs_devices: Path = SYSFS_DEVICES, usable: set[int] | None = None
) -> dict[str, list[int]]:
    """``{"pcore": [...], "ecore": [...]}`` on a hybrid CPU, else ``{"cpu": [...]}``.

    ``usable`` (default: this process's affinity) restricts the cores reported.
    """
    if usable is None:
        usable = set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    pfile, efile = sysfs_devices / "cpu_core" / "cpus", sysfs_devices / "cpu_atom" / "cpus"
    if pfile.is_file() and efile.is_file():
        classes = {
            "pcore": parse_cpu_list(pfile.read_text()),
            "ecore": parse_cpu_list(efile.read_text()),
        }
    else:
        online = sysfs_devices / "system" / "cpu" / "online"
        cores = parse_cpu_list(online.read_text()) if online.is_file() else sorted(usable or [])
        if not cores:
            cores = list(range(os.cpu_count() or 1))
        classes = {"cpu": cores}
    if usable is not None:
        classes = {c: [i for i in cores if i in usable] for c, cores in classes.items()}
    return {c: cores for c, cores in classes.items() if cores}


def read_cpuinfo(cpuinfo: Path = PROC_CPUINFO) -> tuple[str, set[str]]:
    """``(model name, flags)`` of the first processor in a ``/proc/cpuinfo`` file."""
    if not cpuinfo.is_file():
        return platform.processor() or "unknown CPU", set()
    model, flags = "", set()
    for line in cpuinfo.read_text().splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and not model:
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
        if model and flags:
            break
    return model or platform.processor() or "unknown CPU", flags


def has_avx512(flags: set[str]) -> bool:
    """AVX-512 Foundation is what the vector-search kernels need."""
    return "avx512f" in flags


def read_meminfo(meminfo: Path = PROC_MEMINFO) -> dict[str, int]:
    """``MemTotal``/``MemAvailable`` (bytes) from ``/proc/meminfo``; empty if unreadable."""
    out: dict[str, int] = {}
    if not meminfo.is_file():
        return out
    for line in meminfo.read_text().splitlines():
        key, _, value = line.partition(":")
        parts = value.split()
        if key in ("MemTotal", "MemAvailable") and parts:
            out[key] = int(parts[0]) * (1024 if parts[1:] == ["kB"] else 1)
    return out


def discover_cpu(
    sysfs_devices: Path = SYSFS_DEVICES,
    cpuinfo: Path = PROC_CPUINFO,
    meminfo: Path = PROC_MEMINFO,
    usable: set[int] | None = None,
) -> list[Device]:
    """One device per CPU core class."""
    model, flags = read_cpuinfo(cpuinfo)
    avx512 = has_avx512(flags)
    mem = read_meminfo(meminfo).get("MemTotal")
    return [
        Device(
            key=cls,
            device_class=cls,
            backend=BACKEND_OF_CLASS[cls],
            target="cpu",
            description=f"{model} ({len(cores)} {cls} cores)",
            cores=tuple(cores),
            avx512=avx512,
            memory_bytes=mem,
        )
        for cls, cores in read_core_classes(sysfs_devices, usable).items()
    ]


# ------------------------------------------------------------------------- OpenVINO
def classify_openvino_device(name: str) -> str | None:
    """Map an OpenVINO device name to a device class (``None`` for ones we do not use)."""
    base = name.split(".", 1)[0].upper()
    return {"CPU": "ov_cpu", "NPU": "npu", "GPU": "arc", "MYRIAD": "ncs2", "HDDL": "ncs2"}.get(base)


def discover_openvino(
    core: Any = None, cpu_avx512: bool = False, cpu_cores: tuple[int, ...] = ()
) -> list[Device]:
    """Devices OpenVINO can run on; ``[]`` when OpenVINO is not installed.

    ``cpu_avx512`` / ``cpu_cores`` describe the host CPU behind the OpenVINO ``CPU`` device.
    """
    if core is None:
        try:
            import openvino
        except ImportError:
            logger.info("openvino not installed: no OpenVINO devices")
            return []
        core = openvino.Core()
    devices = []
    for name in core.available_devices:
        cls = classify_openvino_device(name)
        if cls is None:
            logger.info("ignoring OpenVINO device %s", name)
            continue
        try:
            full_name = str(core.get_property(name, "FULL_DEVICE_NAME"))
        except RuntimeError:
            full_name = name
        memory = None
        if cls == "arc":
            try:
                memory = int(core.get_property(name, "GPU_DEVICE_TOTAL_MEM_SIZE"))
            except (RuntimeError, TypeError, ValueError):
                memory = None
        devices.append(
            Device(
                key=f"openvino:{name}",
                device_class=cls,
                backend="openvino",
                target=name,
                description=f"OpenVINO {name}: {full_name}",
                avx512=cpu_avx512 if cls == "ov_cpu" else False,
                cores=cpu_cores if cls == "ov_cpu" else (),
                memory_bytes=memory,
            )
        )
    return devices


# ---------------------------------------------------------------------------- torch
def discover_torch() -> list[Device]:
    """CUDA GPUs and Intel XPUs visible to torch."""
    try:
        import torch
    except ImportError:
        return []
    devices = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            devices.append(
                Device(
                    key=f"cuda:{i}",
                    device_class="cuda",
                    backend="torch",
                    target=f"cuda:{i}",
                    description=props.name,
                    memory_bytes=int(props.total_memory),
                )
            )
    xpu = getattr(torch, "xpu", None)
    if xpu is not None and xpu.is_available():
        for i in range(xpu.device_count()):
            props = xpu.get_device_properties(i)
            devices.append(
                Device(
                    key=f"xpu:{i}",
                    device_class="xpu",
                    backend="torch",
                    target=f"xpu:{i}",
                    description=str(getattr(props, "name", f"xpu:{i}")),
                    memory_bytes=int(getattr(props, "total_memory", 0)) or None,
                )
            )
    return devices


def discover_devices(*, openvino: bool = True, torch: bool = True) -> list[Device]:
    """Every device of this machine: CPU core classes, OpenVINO devices, torch GPUs."""
    devices = discover_cpu()
    if openvino:
        devices += discover_openvino(
            cpu_avx512=any(d.avx512 for d in devices),
            cpu_cores=tuple(sorted(c for d in devices for c in d.cores)),
        )
    if torch:
        devices += discover_torch()
    logger.info("discovered devices: %s", ", ".join(d.key for d in devices))
    return devices


__all__ = [
    "BACKEND_OF_CLASS",
    "DEVICE_CLASSES",
    "Device",
    "classify_openvino_device",
    "discover_cpu",
    "discover_devices",
    "discover_openvino",
    "discover_torch",
    "has_avx512",
    "parse_cpu_list",
    "read_core_classes",
    "read_cpuinfo",
    "read_meminfo",
    "resource_name",
]
