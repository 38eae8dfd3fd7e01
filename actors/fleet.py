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
    ).remote(device.to_dict(), node_id, SCHEDULER_NAME, cfg.namespace)


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


# ------------------------------------------------------------------ CPU sharing state
def free_per_node() -> dict[str, dict[str, float]]:
    """``{node_id: {"CPU": free, "GPU": free, ...}}`` of every alive node, now."""
    from ray._private.state import available_resources_per_node  # no public per-node view

    return {node: dict(res) for node, res in available_resources_per_node().items()}


def _holder_name(class_name: str) -> str:
    # "ServeReplica:qlp:QLPCompositor" -> "serve QLPCompositor"
    if class_name.startswith("ServeReplica:"):
        return "serve " + class_name.rsplit(":", 1)[-1]
    return {"RayTrainWorker": "train worker"}.get(class_name, class_name)


def cpu_holders(timeout_s: float = 5.0) -> dict[str, float]:
    """CPUs reserved by alive actors, summed per kind (Serve deployment, train worker...).

    Best effort, for messages: needs the dashboard's state API, ``{}`` without it.
    """
    try:
        from ray.util.state import list_actors

        actors = list_actors(
            # this cluster's GCS: "auto" is ambiguous when a machine runs several clusters
            address=ray.get_runtime_context().gcs_address,
            filters=[("state", "=", "ALIVE")],
            detail=True,
            limit=10_000,
            timeout=int(timeout_s),
            raise_on_missing_output=False,
        )
    except Exception as exc:  # noqa: BLE001 - a reason without holders is still a reason
        logger.debug("no actor list for the placement reason: %s", exc)
        return {}
    held: dict[str, float] = {}
    for actor in actors:
        cpus = float((actor.required_resources or {}).get("CPU", 0.0))
        if cpus > 0:
            name = _holder_name(actor.class_name or "actor")
            held[name] = held.get(name, 0.0) + cpus
    return held
