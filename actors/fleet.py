"""The device actors of the cluster: discover every node's devices, start and stop actors.

* :func:`discover_cluster` — runs device discovery *on each alive node* (a task pinned
  to the node) and returns ``{node_id: [Device, ...]}``.
* :func:`sync_devices` — makes the running device actors match a discovery result:
  starts actors for new devices, kills and unregisters the ones whose device vanished
  (hot-plug). Each actor is pinned to its node (hard node affinity) and takes one unit
  of the node's ``qlp_<class>`` custom resource when the node advertises it.
"""

from __future__ import annotations

import logging
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors.device import SCHEDULER_NAME, DeviceActor, device_actor_name
from qlp_ray.core.config import HardwareConfig
from qlp_ray.hardware.discovery import Device, discover_devices

logger = logging.getLogger(__name__)


def _pinned(node_id: str) -> NodeAffinitySchedulingStrategy:
    return NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)


@ray.remote(num_cpus=0)
def _discover_here() -> list[dict[str, Any]]:
    return [d.to_dict() for d in discover_devices()]


def discover_cluster() -> dict[str, list[Device]]:
    """Run discovery on every alive node (each node reports its own devices)."""
    nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    refs = {n: _discover_here.options(scheduling_strategy=_pinned(n)).remote() for n in nodes}
    return {n: [Device.from_dict(d) for d in ray.get(ref)] for n, ref in refs.items()}


def start_device_actor(
    device: Device, node_id: str, cfg: HardwareConfig | None = None, *, max_restarts: int = 3
) -> Any:
    """One device actor on ``node_id``, holding the node's ``qlp_<class>`` resource if any."""
    cfg = cfg or HardwareConfig()
    node = next((n for n in ray.nodes() if n["NodeID"] == node_id), None)
    if node is None or not node["Alive"]:
        raise ValueError(f"node {node_id} is not alive")
    resources = {device.resource: 1} if node["Resources"].get(device.resource, 0) >= 1 else {}
    if not resources:
        logger.info(
            "node %s does not advertise %s; pinning by node only", node_id[:12], device.resource
        )
    return DeviceActor.options(
        name=device_actor_name(node_id, device.key),
        namespace=cfg.namespace,
        num_cpus=0,
        resources=resources,
        scheduling_strategy=_pinned(node_id),
        max_restarts=max_restarts,
        lifetime="detached",  # owned by the cluster, not by whoever ran the sync
    ).remote(device.to_dict(), node_id, SCHEDULER_NAME)


def sync_devices(
    scheduler: Any,
    found: dict[str, list[Device]],
    cfg: HardwareConfig | None = None,
    *,
    max_restarts: int = 3,
) -> tuple[list[str], list[str]]:
    """Start actors for devices that appeared, stop those whose device is gone.

    Only nodes present in ``found`` are touched. Returns ``(added, removed)`` ids
    (``<node id>/<device key>``).
    """
    cfg = cfg or HardwareConfig()
    known = {row["id"]: row for row in ray.get(scheduler.devices.remote())}
    wanted = {f"{node}/{d.key}": (node, d) for node, devs in found.items() for d in devs}
    added, removed = [], []
    handles = []
    for key, (node, device) in wanted.items():
        if key not in known:
            handles.append(start_device_actor(device, node, cfg, max_restarts=max_restarts))
            added.append(key)
    for key, row in known.items():
        if row["node_id"] in found and key not in wanted:
            ray.get(scheduler.unregister.remote(key))
            try:
                actor = ray.get_actor(
                    device_actor_name(row["node_id"], row["key"]), namespace=cfg.namespace
                )
                ray.kill(actor, no_restart=True)
            except ValueError:
                pass  # already gone
            removed.append(key)
    if handles:  # wait until the new actors registered themselves
        ray.get([h.status.remote() for h in handles])
    logger.info("device sync: added %s, removed %s", added, removed)
    return added, removed
