"""Start the scheduler and one device actor per device on every node.

* :func:`start_scheduler` — the named scheduler actor (``qlp-scheduler``), get-or-create.
* :func:`start_hardware` — the scheduler plus the device actors of every node
  (:mod:`actors.fleet`), kept in sync by the scheduler's re-discovery loop.
"""

from __future__ import annotations

import logging
from typing import Any

import ray

from actors.device import SCHEDULER_NAME
from actors.fleet import discover_cluster, sync_devices
from actors.scheduler import SchedulerActor
from qlp_ray.core.config import HardwareConfig

logger = logging.getLogger(__name__)


def start_scheduler(cfg: HardwareConfig | None = None) -> Any:
    """The cluster's scheduler actor (created on first call, then reused)."""
    cfg = cfg or HardwareConfig()
    return SchedulerActor.options(
        name=SCHEDULER_NAME,
        namespace=cfg.namespace,
        get_if_exists=True,
        num_cpus=0,
        lifetime="detached",  # a service: outlives the driver that started it
    ).remote(cfg.model_dump())


def get_scheduler(cfg: HardwareConfig | None = None) -> Any:
    """Handle of the running scheduler actor (``ValueError`` if none is running)."""
    cfg = cfg or HardwareConfig()
    return ray.get_actor(SCHEDULER_NAME, namespace=cfg.namespace)


def submit_workload(
    kind: str,
    payload: dict[str, Any],
    *,
    priority: int = 0,
    memory_mb: float = 0,
    preferred: str | None = None,
    cfg: HardwareConfig | None = None,
) -> ray.ObjectRef:
    """Queue a workload on the cluster's scheduler; ``ray.get`` the ref for the result
    (``{"result", "device", "device_class", "node_id", "attempts", ...}``)."""
    return get_scheduler(cfg).submit.remote(kind, payload, priority, memory_mb, preferred)


def start_hardware(cfg: HardwareConfig | None = None) -> Any:
    """Scheduler + device actors for everything discovered on every node."""
    scheduler = start_scheduler(cfg)
    sync_devices(scheduler, discover_cluster(), cfg)
    return scheduler


__all__ = [
    "get_scheduler",
    "submit_workload",
    "start_hardware",
    "start_scheduler",
]
