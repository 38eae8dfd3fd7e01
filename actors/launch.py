"""Start the scheduler and one device actor per device on every node.

* :func:`start_scheduler` — the named scheduler actor (``qlp-scheduler``), get-or-create.
* :func:`start_hardware` — the scheduler plus the device actors of every node
  (:mod:`actors.fleet`), kept in sync by the scheduler's re-discovery loop.
* :func:`plan_serving` / :func:`training_placement` — the scheduler's CPU sharing between
  Serve replicas and training runs (:mod:`qlp_ray.hardware.cpu_share`).
* :func:`run_placed` — one workload (``qlp eval``, ``qlp optimize``) as a Ray task on the
  device and node :mod:`qlp_ray.hardware.task_placement` picks, held as a placement while
  it runs (``qlp devices --placements``) and released after.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from actors.device import SCHEDULER_NAME
from actors.fleet import discover_cluster, sync_devices
from actors.scheduler import SchedulerActor
from qlp_ray.core.config import HardwareConfig
from qlp_ray.core.errors import Unplaceable
from qlp_ray.hardware.task_placement import TaskPlacement, place_task

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
        # restarted when it dies; callers' pending calls are retried on the new process
        max_restarts=-1,
        max_task_retries=-1,
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


def ensure_devices(scheduler: Any, cfg: HardwareConfig | None = None) -> list[str]:
    """Device actors for the alive nodes that have none registered yet (``hardware.
    device_actors``); returns the ids started. Nodes with devices are left as they are, so
    a redeploy costs one ``devices()`` call; new nodes get theirs at the next start."""
    cfg = cfg or HardwareConfig()
    if not cfg.device_actors:
        return []
    covered = {r["node_id"] for r in ray.get(scheduler.devices.remote()) if r["alive"]}
    missing = [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["NodeID"] not in covered]
    if not missing:
        return []
    found = {node: devs for node, devs in discover_cluster().items() if node in missing}
    added, _ = sync_devices(scheduler, found, cfg)
    logger.info("device actors started on %d node(s): %s", len(found), added)
    return added


def plan_serving(
    requested: dict[str, tuple[float, int]],
    training_slot: float,
    workloads: dict[str, tuple[str, str]] | None = None,
    cfg: HardwareConfig | None = None,
) -> dict[str, Any]:
    """The scheduler's CPUs per replica for each Serve deployment (``requested``:
    name -> (CPUs per replica, replicas)), keeping ``training_slot`` CPUs free, and the
    device of each deployment in ``workloads`` (name -> (workload kind, backend))."""
    requested_lists = {name: [c, r] for name, (c, r) in requested.items()}
    kinds = {name: [k, b] for name, (k, b) in (workloads or {}).items()}
    scheduler = start_scheduler(cfg)
    try:  # the platform's devices, for the work the scheduler places on them
        ensure_devices(scheduler, cfg)
    except Exception:  # noqa: BLE001 - serving does not depend on device actors
        logger.exception("could not start the device actors; the scheduler places without them")
    return ray.get(scheduler.plan_serving.remote(requested_lists, training_slot, kinds))


def _run_id(kind: str) -> str:
    """``<kind>:<Ray job submission id>`` inside a Ray job (what the REST job shows),
    else ``<kind>:<random>``."""
    try:
        meta = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")).get("metadata", {})
    except ValueError:
        meta = {}
    return f"{kind}:{meta.get('job_submission_id') or uuid.uuid4().hex[:12]}"


@contextlib.contextmanager
def training_placement(
    kind: str,
    workers: int,
    cpus_per_worker: float,
    gpus_per_worker: float = 0.0,
    *,
    timeout_s: float,
    cfg: HardwareConfig | None = None,
    poll_s: float = 2.0,
) -> Iterator[dict[str, Any]]:
    """Wait until the scheduler places a training run, then hold its placement for the block.

    Yields the placement (``workers`` may be fewer than asked: as many as fit now). While
    nothing fits the reason is logged (and shown by ``placements``); after ``timeout_s``
    :class:`Unplaceable` carries it.
    """
    scheduler = start_scheduler(cfg)
    run_id = _run_id(kind)
    deadline = time.monotonic() + timeout_s
    said = None
    while True:
        record = ray.get(
            scheduler.place_training.remote(run_id, kind, workers, cpus_per_worker, gpus_per_worker)
        )
        if record["state"] == "placed":
            break
        if time.monotonic() >= deadline:
            ray.get(scheduler.release.remote(run_id, "unplaceable"))
            raise Unplaceable(
                f"cannot place {kind}: {record['reason']} (waited {timeout_s:.0f} s; free CPUs "
                "by stopping a workload or lowering its CPUs, or raise train.placement_timeout_s)"
            )
        if record["reason"] != said:
            said = record["reason"]
            logger.warning("%s waits for resources: %s", kind, said)
        time.sleep(poll_s)
    logger.info("%s placed: %s", kind, record["reason"])
    try:
        yield record
    finally:
        try:
            ray.get(scheduler.release.remote(run_id))
        except Exception as exc:  # noqa: BLE001 - the run's own outcome matters more
            logger.warning("could not release placement %s: %s", run_id, exc)


def _in_task(fn: Callable[..., Any], kwargs: dict[str, Any]) -> tuple[Any, str]:
    return fn(**kwargs), ray.get_runtime_context().get_node_id()


def plan_task(
    kind: str, backend: str, *, pin_to_driver: bool, cfg: HardwareConfig | None = None
) -> TaskPlacement:
    """The placement of one ``kind`` task on the connected cluster, now."""
    cfg = cfg or HardwareConfig()
    driver = ray.get_runtime_context().get_node_id()
    return place_task(
        kind, backend, cfg.capabilities, ray.nodes(), driver, pin_to_driver=pin_to_driver
    )


def run_placed(
    kind: str,
    backend: str,
    fn: Callable[..., Any],
    kwargs: dict[str, Any],
    *,
    pin_to_driver: bool = False,
    cfg: HardwareConfig | None = None,
) -> tuple[Any, dict[str, Any]]:
    """``fn(**kwargs, device=<torch device>, openvino_device=...)`` as a placed Ray task;
    returns its result and where it ran (device class, node, placement id, reason)."""
    placement = plan_task(kind, backend, pin_to_driver=pin_to_driver, cfg=cfg)
    scheduler = start_scheduler(cfg)
    run_id = _run_id(kind)
    record = {**placement.to_dict(), "workers": 1, "requested_workers": 1,
              "cpus_per_worker": placement.ray_options.get("num_cpus", 1.0)}  # fmt: skip
    ray.get(scheduler.hold_task.remote(run_id, record))
    logger.info("%s placed as %s: %s", kind, run_id, placement.reason)
    task = ray.remote(_in_task).options(
        **placement.ray_options,
        max_retries=0,
        scheduling_strategy=NodeAffinitySchedulingStrategy(placement.node_id, soft=False),
    )
    args = {
        **kwargs,
        "device": placement.torch_device,
        "openvino_device": placement.openvino_device,
    }
    outcome = "error"
    try:
        try:
            result, node_id = ray.get(task.remote(fn, args))
        except ray.exceptions.RayTaskError as exc:  # the work's own error, unwrapped
            raise (exc.cause if isinstance(exc.cause, Exception) else exc) from None
        outcome = "done"
    finally:
        try:
            ray.get(scheduler.release.remote(run_id, outcome))
        except Exception as exc:  # noqa: BLE001 - the task's own outcome matters more
            logger.warning("could not release placement %s: %s", run_id, exc)
    where = {"where": "ray", "placement": run_id, **placement.to_dict(), "node_id": node_id}
    return result, where


def release_placement(run_id: str, cfg: HardwareConfig | None = None) -> bool:
    """Drop a placement (e.g. "serve" when the app is shut down); False if none was held."""
    try:
        scheduler = get_scheduler(cfg)
    except ValueError:
        return False
    return bool(ray.get(scheduler.release.remote(run_id)))


def placements(cfg: HardwareConfig | None = None) -> dict[str, dict[str, Any]]:
    """Live placements the scheduler holds ({} when no scheduler runs)."""
    try:
        scheduler = get_scheduler(cfg)
    except ValueError:
        return {}
    return ray.get(scheduler.placements.remote())


def device_workloads(cfg: HardwareConfig | None = None) -> dict[str, dict[str, Any]]:
    """The scheduler's device workloads so far, per kind ({} when no scheduler runs)."""
    try:
        scheduler = get_scheduler(cfg)
    except ValueError:
        return {}
    return ray.get(scheduler.workloads.remote())


__all__ = [
    "device_workloads",
    "get_scheduler",
    "placements",
    "plan_serving",
    "release_placement",
    "run_placed",
    "training_placement",
    "submit_workload",
    "start_hardware",
    "start_scheduler",
]
