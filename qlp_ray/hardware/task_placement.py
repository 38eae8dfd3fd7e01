"""Where a one-off Ray task of a workload kind runs (``qlp eval``: ``inference``;
``qlp optimize``: ``inference_int8``). Pure: the caller feeds it ``ray.nodes()``.

The device class is the first of the workload's preference list (``hardware.capabilities``)
that the task's backend can drive and a candidate node advertises
(:func:`~qlp_ray.hardware.replica_devices.choose_replica_device`, the rule Serve replicas
follow); the node is the driver's when it qualifies (or when the task reads files only the
driver has: ``pin_to_driver``), else the first alive node that advertises the device's
resource. The task then asks Ray for that resource on that node.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from qlp_ray.hardware.replica_devices import CLASS_RESOURCE, ReplicaDevice, choose_replica_device

# device class -> the torch device a task's model is moved to
TORCH_DEVICE = {"cuda": "cuda"}


@dataclass(frozen=True)
class TaskPlacement:
    workload: str
    device_class: str
    node_id: str
    openvino_device: str
    ray_options: dict[str, Any]
    reason: str

    @property
    def torch_device(self) -> str:
        return TORCH_DEVICE.get(self.device_class, "cpu")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "torch_device": self.torch_device}


def place_task(
    workload: str,
    backend: str,
    table: Mapping[str, Sequence[str]],
    nodes: Sequence[Mapping[str, Any]],
    driver_node: str,
    *,
    pin_to_driver: bool = False,
    num_cpus: float = 1.0,
) -> TaskPlacement:
    """The device and node of one ``workload`` task among ``nodes`` (``ray.nodes()`` rows)."""
    alive = [n for n in nodes if n.get("Alive", True)]
    alive.sort(key=lambda n: n["NodeID"] != driver_node)  # the driver's node first
    candidates = [n for n in alive if n["NodeID"] == driver_node] if pin_to_driver else alive
    if not candidates:
        raise ValueError(f"no alive node to run {workload} on (driver node {driver_node})")
    offered: dict[str, float] = {}
    for node in candidates:
        for name, amount in node.get("Resources", {}).items():
            offered[name] = max(offered.get(name, 0.0), float(amount))
    device: ReplicaDevice = choose_replica_device(workload, backend, table, offered)
    resource = CLASS_RESOURCE.get(device.device_class)
    node = next(
        (n for n in candidates if not resource or n.get("Resources", {}).get(resource, 0) >= 1),
        candidates[0],
    )
    where = "the driver's node" if node["NodeID"] == driver_node else "another node"
    pinned = " (pinned: its inputs are on the driver's disk)" if pin_to_driver else ""
    return TaskPlacement(
        workload=workload,
        device_class=device.device_class,
        node_id=node["NodeID"],
        openvino_device=device.openvino_device,
        ray_options={"num_cpus": num_cpus, **device.ray_options},
        reason=f"{device.reason}; on {where}{pinned}",
    )


__all__ = ["TaskPlacement", "place_task"]
