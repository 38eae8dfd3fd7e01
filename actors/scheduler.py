"""SchedulerActor: places workloads on device actors by the capability table.

``submit`` queues a workload (priority, memory need, optional preferred device) and
returns its result once a device ran it. A dispatcher takes the queue highest priority
first and asks :func:`qlp_ray.hardware.placement.choose_device` for a device: absent
classes, dead actors, devices at ``max_inflight_per_device`` or above ``busy_threshold``,
and devices short of memory are skipped; equals share the load. When a device actor dies
with work in flight, that work goes back into the queue and is placed again (up to
``max_attempts``), so no workload is lost. Device actors register themselves (also after
a restart); a status loop polls their health, utilization, queue and memory.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import json
import logging
import os
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

import ray
from ray.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError

from actors.device import DEVICE_ACTOR_PREFIX
from actors.fleet import cpu_holders, discover_cluster, free_per_node, sync_devices
from qlp_ray.core.config import HardwareConfig
from qlp_ray.core.errors import NoCapableDevice, WorkloadFailed
from qlp_ray.hardware.cpu_share import place_training, share_serving
from qlp_ray.hardware.discovery import Device
from qlp_ray.hardware.placement import DeviceState, check_workload, choose_device
from qlp_ray.hardware.replica_devices import choose_replica_device

logger = logging.getLogger(__name__)

STATUS_TIMEOUT_S = 10.0
# a training grant counts against the free CPUs until Ray shows its workers holding them
GRANT_HOLD_S = 90.0
DEAD_DROP_S = 60.0
# placements kept for `history` / `workloads` (router.offload: always adds one per request)
HISTORY_MAX = 10_000
_DEVICE_GONE = (RayActorError, ActorDiedError, ActorUnavailableError)


@dataclass
class _Entry:
    device: Device
    handle: Any
    state: DeviceState
    epoch: int = 0
    registrations: int = 0
    dead_since: float = 0.0
    last_status: dict[str, Any] = field(default_factory=dict)


@dataclass
class _Job:
    job_id: int
    kind: str
    payload: dict[str, Any]
    priority: int
    memory_bytes: int
    preferred: str | None
    future: asyncio.Future
    attempts: int = 0
    submitted: float = field(default_factory=time.time)


@ray.remote(max_concurrency=1000)
class SchedulerActor:
    def __init__(self, config: dict[str, Any] | None = None) -> None:
        self.cfg = HardwareConfig(**(config or {}))
        self._devices: dict[str, _Entry] = {}
        self._queue: list[tuple[int, int, _Job]] = []
        self._seq = itertools.count()
        self._turn = itertools.count()
        self._history: deque[dict[str, Any]] = deque(maxlen=HISTORY_MAX)
        self._wake: asyncio.Event | None = None
        self._loops: list[asyncio.Task] = []
        # live placements of cluster workloads (serving, training runs): id -> record
        self._placements: dict[str, dict[str, Any]] = self._load_state().get("placements", {})
        self.restored = bool(self._placements)

    # ------------------------------------------------------------ lifecycle
    def _state_key(self) -> bytes:
        return f"qlp-scheduler/{self.cfg.namespace}".encode()

    def _load_state(self) -> dict[str, Any]:
        """What the previous process of this scheduler saved ({} on a first start)."""
        from ray.experimental.internal_kv import _internal_kv_get

        raw = _internal_kv_get(self._state_key())
        return json.loads(raw) if raw else {}

    def _save_state(self) -> None:
        from ray.experimental.internal_kv import _internal_kv_put

        state = {"placements": self._placements}
        _internal_kv_put(self._state_key(), json.dumps(state).encode(), overwrite=True)

    async def _reattach_devices(self) -> None:
        """Register the running device actors again (after a restart of this actor)."""
        loop = asyncio.get_running_loop()
        names = await loop.run_in_executor(None, ray.util.list_named_actors, True)
        for entry in names:
            name = entry["name"]
            if entry["namespace"] != self.cfg.namespace or not name.startswith(DEVICE_ACTOR_PREFIX):
                continue
            try:
                handle = ray.get_actor(name, namespace=self.cfg.namespace)
                info = await asyncio.wait_for(handle.info.remote(), timeout=STATUS_TIMEOUT_S)
            except Exception as exc:  # noqa: BLE001 - a dead device stays unregistered
                logger.warning("device actor %s not re-attached: %s", name, exc)
                continue
            key = f"{info['node_id']}/{info['device']['key']}"
            if key not in self._devices:
                await self.register(info, handle)

    def _ensure_loops(self) -> None:
        if self._wake is None:
            self._wake = asyncio.Event()
            loop = asyncio.get_running_loop()
            self._loops = [
                loop.create_task(self._dispatch_loop()),
                loop.create_task(self._status_loop()),
            ]
            if self.cfg.rediscovery_interval_s > 0:
                self._loops.append(loop.create_task(self._rediscovery_loop()))

    async def register(self, info: dict[str, Any], handle: Any) -> str:
        """Called by a device actor on every start (first start and restarts)."""
        self._ensure_loops()
        device = Device.from_dict(info["device"])
        key = f"{info['node_id']}/{device.key}"
        entry = self._devices.get(key)
        state = DeviceState(
            key=key,
            device_class=device.device_class,
            node_id=info["node_id"],
            avx512=device.avx512,
            total_memory_bytes=device.memory_bytes,
        )
        if entry is None:
            entry = self._devices[key] = _Entry(device, handle, state)
        else:
            entry.device, entry.handle, entry.state = device, handle, state
            entry.epoch += 1
        entry.registrations += 1
        logger.info(
            "registered %s (registration %d, pid %s)", key, entry.registrations, info["pid"]
        )
        self._wake.set()
        return key

    async def unregister(self, key: str) -> bool:
        """Forget a device (removed by re-discovery); queued work goes elsewhere."""
        self._ensure_loops()
        entry = self._devices.pop(key, None)
        if entry is not None:
            entry.state.alive = False
            self._wake.set()
        return entry is not None

    # ----------------------------------------------------------- workloads
    async def submit(
        self,
        kind: str,
        payload: dict[str, Any],
        priority: int = 0,
        memory_mb: float = 0,
        preferred: str | None = None,
    ) -> dict[str, Any]:
        """Queue a workload and return its result with where it ran (device, node, attempts)."""
        self._ensure_loops()
        check_workload(kind, self.cfg.capabilities)
        job = _Job(
            job_id=next(self._seq),
            kind=kind,
            payload=payload,
            priority=int(priority),
            memory_bytes=int(memory_mb * 2**20),
            preferred=preferred,
            future=asyncio.get_running_loop().create_future(),
        )
        self._push(job)
        return await job.future

    def _push(self, job: _Job) -> None:
        heapq.heappush(self._queue, (-job.priority, job.job_id, job))
        self._wake.set()

    async def _dispatch_loop(self) -> None:
        # first find the device actors a previous process of this scheduler knew, so
        # work retried after a restart is not refused for lack of devices
        try:
            await self._reattach_devices()
        except Exception:  # noqa: BLE001 - devices also register themselves on start
            logger.exception("re-attaching device actors failed")
        while True:
            await self._wake.wait()
            self._wake.clear()
            self._dispatch()

    def _dispatch(self) -> None:
        waiting = []
        states = [e.state for e in self._devices.values()]
        while self._queue:
            _, _, job = heapq.heappop(self._queue)
            try:
                state = choose_device(
                    job.kind,
                    states,
                    self.cfg.capabilities,
                    memory_bytes=job.memory_bytes,
                    preferred=job.preferred,
                    busy_threshold=self.cfg.busy_threshold,
                    max_inflight=self.cfg.max_inflight_per_device,
                    turn=next(self._turn),
                )
            except NoCapableDevice as exc:
                job.future.set_exception(exc)
                continue
            if state is None:
                waiting.append(job)
                continue
            entry = self._devices[state.key]
            entry.state.inflight += 1
            asyncio.get_running_loop().create_task(self._run(job, entry, entry.epoch))
        for job in waiting:
            heapq.heappush(self._queue, (-job.priority, job.job_id, job))

    async def _run(self, job: _Job, entry: _Entry, epoch: int) -> None:
        job.attempts += 1
        record = {
            "job_id": job.job_id,
            "kind": job.kind,
            "priority": job.priority,
            "device": entry.state.key,
            "device_class": entry.state.device_class,
            "node_id": entry.state.node_id,
            "attempt": job.attempts,
            "outcome": "running",
            "started": time.time(),
        }
        self._history.append(record)
        try:
            out = await entry.handle.run.remote(job.kind, job.payload)
        except _DEVICE_GONE as exc:
            record["outcome"] = "device_died"
            if entry.epoch == epoch and entry.state.alive:
                entry.state.alive = False  # until the actor re-registers
                entry.dead_since = time.time()
            logger.warning("device %s died running job %d: %s", entry.state.key, job.job_id, exc)
            if job.attempts >= self.cfg.max_attempts:
                job.future.set_exception(
                    WorkloadFailed(f"{job.kind} job {job.job_id} lost {job.attempts} devices")
                )
            else:
                self._push(job)
        except Exception as exc:  # noqa: BLE001 - the workload's own error goes to the caller
            record["outcome"] = "error"
            job.future.set_exception(exc)
        else:
            record["outcome"] = "done"
            out["attempts"] = job.attempts
            out["job_id"] = job.job_id
            job.future.set_result(out)
        finally:
            if entry.epoch == epoch:
                entry.state.inflight -= 1
            self._wake.set()

    # -------------------------------------------------------------- status
    async def _status_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.status_interval_s)
            try:
                await self.refresh_status()
            except Exception:  # noqa: BLE001 - the loop must outlive one bad poll
                logger.exception("device status poll failed")

    async def refresh_status(self) -> None:
        """Poll every device actor once. A dead actor is marked unavailable until it
        re-registers; after ``DEAD_DROP_S`` seconds it is forgotten, so work waiting
        only for it fails instead of waiting forever. A slow answer changes nothing."""
        dead_nodes = await self._dead_nodes()
        now = time.time()
        for key, entry in list(self._devices.items()):
            if entry.state.node_id in dead_nodes:  # its actor can never answer (pinned there)
                self._gone(key, entry, now, "its node is dead")
        entries = [(k, e) for k, e in self._devices.items() if e.state.node_id not in dead_nodes]
        refs = [e.handle.status.remote() for _, e in entries]
        for (key, entry), ref in zip(entries, refs, strict=True):
            epoch = entry.epoch
            try:
                status = await asyncio.wait_for(ref, timeout=STATUS_TIMEOUT_S)
            except TimeoutError:
                continue
            except RayTaskError as exc:  # status() itself failed: report, keep the device
                logger.warning("status of %s failed: %s", key, exc)
                continue
            except _DEVICE_GONE as exc:
                if entry.epoch == epoch:
                    self._gone(key, entry, now, type(exc).__name__)
                continue
            if entry.epoch != epoch:
                continue
            entry.last_status = status
            entry.state.alive = True
            entry.state.utilization = float(status["utilization"])
            entry.state.total_memory_bytes = status["total_memory_bytes"]
            entry.state.free_memory_bytes = status["free_memory_bytes"]
        self._wake.set()

    def _gone(self, key: str, entry: Any, now: float, why: str) -> None:
        """Mark a device unavailable; forget it after ``DEAD_DROP_S`` seconds."""
        if entry.state.alive:
            logger.warning("device %s is gone: %s", key, why)
            entry.state.alive = False
            entry.dead_since = now
        elif now - entry.dead_since > DEAD_DROP_S and self._devices.get(key) is entry:
            logger.warning("forgetting device %s (dead for %.0f s)", key, DEAD_DROP_S)
            del self._devices[key]

    async def _dead_nodes(self) -> set[str]:
        """Ids of the cluster's nodes that are dead: a device actor pinned to one is never
        restarted and its calls hang rather than fail, so polling it says nothing."""
        loop = asyncio.get_running_loop()
        try:
            nodes = await loop.run_in_executor(None, ray.nodes)
        except Exception as exc:  # noqa: BLE001 - no node view this round: poll as before
            logger.warning("could not list the cluster's nodes: %s", exc)
            return set()
        return {n["NodeID"] for n in nodes if not n["Alive"]}

    async def _rediscovery_loop(self) -> None:
        me = ray.get_runtime_context().current_actor
        while True:
            await asyncio.sleep(self.cfg.rediscovery_interval_s)
            loop = asyncio.get_running_loop()
            try:  # blocking Ray calls run in a thread; this loop keeps serving
                await loop.run_in_executor(
                    None, lambda: sync_devices(me, discover_cluster(), self.cfg)
                )
            except Exception:  # noqa: BLE001 - log and retry at the next interval
                logger.exception("device re-discovery failed")

    # ------------------------------------------- CPU sharing (hardware/cpu_share.py)
    async def plan_serving(
        self,
        requested: dict[str, list[float]],
        training_slot: float,
        workloads: dict[str, list[str]] | None = None,
    ) -> dict[str, Any]:
        """CPUs per replica of each Serve deployment (rule 1) and, for those named in
        ``workloads`` (name -> [workload kind, backend]), the device they compute on and
        the Ray resources they ask for (``hardware/replica_devices.py``); recorded as
        "serve"."""
        loop = asyncio.get_running_loop()
        resources = await loop.run_in_executor(None, ray.cluster_resources)
        total = float(resources.get("CPU", 0.0))
        share = share_serving(
            {name: (float(c), int(r)) for name, (c, r) in requested.items()}, total, training_slot
        )
        devices = {
            name: asdict(choose_replica_device(kind, backend, self.cfg.capabilities, resources))
            for name, (kind, backend) in (workloads or {}).items()
        }
        record = {
            "workload": "serve",
            "state": "placed",
            "cpus": share.cpus,
            "devices": devices,
            "replicas": {name: int(r) for name, (_, r) in requested.items()},
            "kept_for_training": share.kept_for_training,
            "reason": share.reason,
            "since": time.time(),
        }
        self._placements["serve"] = record
        self._save_state()
        return dict(record)

    async def place_training(
        self,
        run_id: str,
        kind: str,
        workers: int,
        cpus_per_worker: float,
        gpus_per_worker: float = 0.0,
    ) -> dict[str, Any]:
        """Rule 2 for one training run, now. Placed: its CPUs count as taken until Ray
        shows them held (``GRANT_HOLD_S``) or :meth:`release`; not placed: recorded as
        waiting with the reason (``placements`` shows it)."""
        loop = asyncio.get_running_loop()
        free = await loop.run_in_executor(None, free_per_node)
        now = time.time()
        for other_id, rec in self._placements.items():  # grants Ray may not show yet
            if other_id != run_id and rec.get("state") == "placed" and rec.get("node_grants"):
                if now - rec["since"] < GRANT_HOLD_S:
                    for node, cpus in rec["node_grants"].items():
                        if node in free:
                            free[node]["CPU"] = free[node].get("CPU", 0.0) - cpus
        plan = place_training(workers, cpus_per_worker, gpus_per_worker, free)
        if not plan.placed:
            holders = await loop.run_in_executor(None, cpu_holders)
            plan = place_training(workers, cpus_per_worker, gpus_per_worker, free, holders)
        previous = self._placements.get(run_id, {})
        record = {
            "workload": kind,
            "state": "placed" if plan.placed else "waiting",
            "workers": plan.workers,
            "requested_workers": workers,
            "cpus_per_worker": cpus_per_worker,
            "gpus_per_worker": gpus_per_worker,
            "reason": plan.reason,
            "node_grants": plan.node_grants,
            "since": now if plan.placed else previous.get("since", now),
        }
        self._placements[run_id] = record
        self._save_state()
        return dict(record)

    async def hold_task(self, run_id: str, record: dict[str, Any]) -> dict[str, Any]:
        """A one-off Ray task (``qlp eval``, ``qlp optimize``) runs where ``record`` says
        (``hardware/task_placement.py``): held as a placement until :meth:`release`, and
        kept in the history (``workloads``) with its device and outcome."""
        now = time.time()
        held = {**record, "state": "placed", "since": now}
        self._placements[run_id] = held
        self._save_state()
        self._history.append(
            {
                "job_id": run_id,
                "kind": record["workload"],
                "priority": 0,
                "device": f"{record['node_id']}/{record['device_class']}",
                "device_class": record["device_class"],
                "node_id": record["node_id"],
                "attempt": 1,
                "outcome": "running",
                "started": now,
            }
        )
        return dict(held)

    async def release(self, run_id: str, outcome: str = "done") -> bool:
        """A training run or task ended: its placement is dropped (``outcome`` is logged,
        and a task's history entry takes it)."""
        for h in reversed(self._history):
            if h["job_id"] == run_id and h["outcome"] == "running":
                h["outcome"] = outcome
                break
        record = self._placements.pop(run_id, None)
        if record is not None:
            self._save_state()
            logger.info("placement %s released (%s)", run_id, outcome)
        return record is not None

    async def placements(self) -> dict[str, dict[str, Any]]:
        """Every live placement: serving and each waiting or running training run."""
        return {k: dict(v) for k, v in self._placements.items()}

    async def devices(self) -> list[dict[str, Any]]:
        """One row per registered device: what it is, where, and how loaded."""
        self._ensure_loops()
        return [
            {
                **e.device.to_dict(),
                "id": key,
                "node_id": e.state.node_id,
                "alive": e.state.alive,
                "inflight": e.state.inflight,
                "utilization": e.state.utilization,
                "queue": e.last_status.get("queue", 0),
                "free_memory_bytes": e.state.free_memory_bytes,
                "registrations": e.registrations,
            }
            for key, e in self._devices.items()
        ]

    async def history(self) -> list[dict[str, Any]]:
        """The last ``HISTORY_MAX`` placements (job, device, node, attempt, outcome)."""
        return list(self._history)

    async def workloads(self) -> dict[str, dict[str, Any]]:
        """The device workloads of the last ``HISTORY_MAX`` placements, per kind: by
        outcome (``running``, ``done``, ``failed``: an error or a dead device), the devices
        that took them, and when the last one started (``qlp devices --placements``)."""
        out: dict[str, dict[str, Any]] = {}
        for h in self._history:
            w = out.setdefault(h["kind"], {"workload": h["kind"], "running": 0, "done": 0,
                                           "failed": 0, "devices": {}, "last": 0.0})  # fmt: skip
            key = {"running": "running", "done": "done"}.get(h["outcome"], "failed")
            w[key] += 1
            w["devices"][h["device"]] = w["devices"].get(h["device"], 0) + 1
            w["last"] = max(w["last"], h.get("started", 0.0))
        return out

    async def queued(self) -> int:
        return len(self._queue)

    async def ping(self) -> dict[str, Any]:
        """Liveness, and whether this process restored a predecessor's placements."""
        self._ensure_loops()
        return {"pid": os.getpid(), "restored": self.restored, "devices": len(self._devices)}
