"""DeviceActor: one Ray actor per device, pinned to its node, running workloads.

The actor runs one workload at a time (the device is the bottleneck), reports health,
utilization (busy share of the last ``UTIL_WINDOW_S`` seconds), queue depth and memory,
and registers itself with the scheduler actor on every start, so a restarted actor
(``max_restarts``) is re-registered without anyone's help. P-core / E-core actors pin
their process to those cores with ``os.sched_setaffinity``.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections import deque
from typing import Any

import ray

from qlp_ray.hardware.discovery import Device
from qlp_ray.hardware.workloads import WorkloadRunner

logger = logging.getLogger(__name__)

SCHEDULER_NAME = "qlp-scheduler"  # the named actor device actors report to

UTIL_WINDOW_S = 10.0
PINNED_CLASSES = ("pcore", "ecore")


DEVICE_ACTOR_PREFIX = "qlp-device:"


def device_actor_name(node_id: str, device_key: str) -> str:
    """Actor name shown in the Ray dashboard."""
    return f"{DEVICE_ACTOR_PREFIX}{node_id[:12]}:{device_key}"


def _memory(device: Device) -> tuple[int | None, int | None]:
    """(total, free) bytes of the device's memory; ``None`` where it cannot be read."""
    if device.target.startswith("cuda") and not device.emulated:
        import torch

        free, total = torch.cuda.mem_get_info(int(device.target.split(":")[1]))
        return int(total), int(free)
    if device.device_class in ("arc", "npu", "ncs2") and not device.emulated:
        return device.memory_bytes, None
    import psutil

    vm = psutil.virtual_memory()
    return int(vm.total), int(vm.available)


@ray.remote(max_task_retries=0, max_concurrency=16)
class DeviceActor:
    def __init__(
        self,
        device: dict[str, Any],
        node_id: str,
        scheduler_name: str,
        scheduler_namespace: str | None = None,
    ) -> None:
        self.device = Device.from_dict(device)
        self.node_id = node_id
        self.started = time.time()
        if self.device.device_class in PINNED_CLASSES and self.device.cores:
            os.sched_setaffinity(0, set(self.device.cores))
            logger.info("pinned %s to cores %s", self.device.key, sorted(self.device.cores))
        self._runner = WorkloadRunner(self.device)
        self._run_lock = threading.Lock()
        self._state_lock = threading.Lock()
        self._waiting = 0
        self._running_since: float | None = None
        self._busy: deque[tuple[float, float]] = deque()
        self._completed = 0
        ctx = ray.get_runtime_context()
        # the scheduler's namespace (hardware.namespace), else this actor's job's namespace
        scheduler = ray.get_actor(scheduler_name, namespace=scheduler_namespace or ctx.namespace)
        ray.get(scheduler.register.remote(self.info(), ctx.current_actor))

    def info(self) -> dict[str, Any]:
        return {
            "device": self.device.to_dict(),
            "node_id": self.node_id,
            "pid": os.getpid(),
            "hostname": socket.gethostname(),
            "started": self.started,
        }

    def run(self, kind: str, payload: dict[str, Any]) -> dict[str, Any]:
        """Run one workload (waits for the device); returns the result and where it ran."""
        with self._state_lock:
            self._waiting += 1
        with self._run_lock:
            start = time.time()
            with self._state_lock:
                self._waiting -= 1
                self._running_since = start
            try:
                result = self._runner.run(kind, payload)
            finally:
                end = time.time()
                with self._state_lock:
                    self._running_since = None
                    self._busy.append((start, end))
                    self._completed += 1
        return {
            "result": result,
            "device": self.device.key,
            "device_class": self.device.device_class,
            "node_id": self.node_id,
            "pid": os.getpid(),
            "seconds": end - start,
        }

    def utilization(self, now: float | None = None) -> float:
        """Busy share of the last ``UTIL_WINDOW_S`` seconds."""
        now = now or time.time()
        lo = now - UTIL_WINDOW_S
        with self._state_lock:
            while self._busy and self._busy[0][1] < lo:
                self._busy.popleft()
            spans = list(self._busy)
            if self._running_since is not None:
                spans.append((self._running_since, now))
        busy = sum(min(e, now) - max(s, lo) for s, e in spans if e > lo)
        return max(0.0, min(1.0, busy / UTIL_WINDOW_S))

    def status(self) -> dict[str, Any]:
        total, free = _memory(self.device)
        with self._state_lock:
            queue = self._waiting + (1 if self._running_since is not None else 0)
            completed = self._completed
        return {
            "healthy": True,
            "device": self.device.key,
            "node_id": self.node_id,
            "pid": os.getpid(),
            "utilization": self.utilization(),
            "queue": queue,
            "completed": completed,
            "total_memory_bytes": total,
            "free_memory_bytes": free,
            "affinity": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [],
        }
