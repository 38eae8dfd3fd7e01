"""The long-running, restartable orchestrator as a Ray actor.

The actor holds no state of its own: every finished step is an event in the store
(keyed by its inputs) and every version lives in the registry, so when Ray restarts
it (``max_restarts=-1``) the next cycle picks up exactly where the last one stopped,
without training or promoting anything twice.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict
from typing import Any

import ray

from qlp_ray.core.config import QLPConfig, portable_config, resolve_config
from qlp_ray.improve.engines import build_orchestrator

logger = logging.getLogger(__name__)

ACTOR_NAME = "qlp-improve-orchestrator"


@ray.remote(max_restarts=-1, max_task_retries=-1, num_cpus=0, max_concurrency=4)
class OrchestratorActor:
    """``run_once`` one cycle, ``run_forever`` every ``improve.interval_s``, ``stop``."""

    def __init__(self, cfg_data: dict[str, Any]) -> None:

        self.cfg = resolve_config(cfg_data)  # secrets from this node (core/config/secrets.py)
        self._log: list[str] = []
        self.orchestrator = build_orchestrator(self.cfg, progress=self._log.append)
        self.cycles = 0
        self.last: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._lock = threading.Lock()  # one cycle at a time

    def run_once(self, domains: list[str] | None = None) -> list[dict[str, Any]]:
        with self._lock:
            outcomes = self.orchestrator.run_cycle(domains)
            self.cycles += 1
            self.last = [asdict(o) for o in outcomes]
        return self.last

    def run_forever(self) -> int:
        """Cycle until :meth:`stop`; a failed cycle is logged and retried next interval."""
        self._stop.clear()
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:  # keep the service alive; the error is in the log
                logger.exception("orchestrator cycle %d failed", self.cycles + 1)
            self._stop.wait(self.cfg.improve.interval_s)
        return self.cycles

    def stop(self) -> None:
        self._stop.set()

    def status(self) -> dict[str, Any]:
        running = [e.payload for e in self.orchestrator.running_experiments()]
        return {"cycles": self.cycles, "last": self.last, "running_experiments": running,
                "log": self._log[-50:], "time": time.time()}  # fmt: skip


def start_orchestrator(cfg: QLPConfig, *, name: str = ACTOR_NAME):
    """The named orchestrator actor (created once; later calls return the same one)."""
    return OrchestratorActor.options(name=name, get_if_exists=True).remote(
        portable_config(cfg, "improve-orchestrator")
    )
