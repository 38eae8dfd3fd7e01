"""Which device a Serve replica computes on, and what it asks Ray for. Pure: the scheduler
actor feeds it the cluster's resources.

A replica's workload (the compositor: ``inference``; the router: ``embedding``) goes to the
first device class of its preference list (``hardware.capabilities``) that (a) the
replica's backend can drive and (b) some node of the cluster advertises as a Ray resource
(``GPU`` for CUDA, ``qlp_<class>`` for the others, as ``ray start --resources`` or the
device actors' nodes declare them). The replica then asks Ray for one unit of that
resource, so Ray starts it on such a node; with none, it runs on CPU and asks for nothing
more.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

# device class -> the Ray resource a node advertises for it
CLASS_RESOURCE = {
    "cuda": "GPU",
    "npu": "qlp_npu",
    "arc": "qlp_arc",
    "ncs2": "qlp_ncs2",
    "xpu": "qlp_xpu",
}
# device class -> OpenVINO device name
OPENVINO_DEVICE = {"npu": "NPU", "arc": "GPU", "cpu": "CPU", "pcore": "CPU", "ov_cpu": "CPU"}
CPU_CLASSES = ("pcore", "cpu", "ov_cpu", "ecore")

# backend -> device classes it can compute on (beyond the CPU)
BACKEND_CLASSES: dict[str, tuple[str, ...]] = {
    "openvino": ("npu", "arc"),
    "vllm": ("cuda",),
    "torch": ("cuda",),
    "transformers": (),  # the compositor's own decoder runs on CPU only
}


@dataclass(frozen=True)
class ReplicaDevice:
    """Where one deployment's replicas compute and what they ask Ray for."""

    device_class: str
    openvino_device: str  # the OpenVINO device name (for OpenVINO backends)
    ray_options: dict[str, Any] = field(default_factory=dict)
    reason: str = ""


def choose_replica_device(
    workload: str,
    backend: str,
    table: Mapping[str, Sequence[str]],
    cluster_resources: Mapping[str, float],
) -> ReplicaDevice:
    """The device of ``workload``'s replicas under ``backend`` on a cluster that advertises
    ``cluster_resources`` (``ray.cluster_resources()``)."""
    usable = BACKEND_CLASSES.get(backend, ())
    for selector in table.get(workload, ()):
        cls = selector.partition("+")[0]
        if cls in CPU_CLASSES:
            break  # the CPU is preferred from here on
        resource = CLASS_RESOURCE.get(cls)
        if cls in usable and resource and cluster_resources.get(resource, 0) >= 1:
            options = {"num_gpus": 1} if resource == "GPU" else {"resources": {resource: 1}}
            return ReplicaDevice(
                cls,
                OPENVINO_DEVICE.get(cls, "CPU"),
                options,
                f"{workload} on {cls} ({backend}; the cluster advertises {resource})",
            )
    wanted = [s for s in table.get(workload, ()) if s.partition("+")[0] not in CPU_CLASSES]
    return ReplicaDevice(
        "cpu",
        "CPU",
        {},
        f"{workload} on CPU ({backend}; no usable {'/'.join(wanted) or 'accelerator'} advertised)",
    )


__all__ = ["CLASS_RESOURCE", "ReplicaDevice", "choose_replica_device"]
