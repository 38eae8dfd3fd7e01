"""Checkpoint resume inside a Ray Train worker, shared by the SFT worker (``ray_train``) and
the DPO/GRPO/distillation worker (``ray_rlhf``); and the test hook that kills a worker.

A checkpoint reported to Ray Train holds the HF trainer's checkpoint (adapter, optimizer,
scheduler, RNG, step) under ``checkpoint/``. After ``FailureConfig`` restarts the worker
group, every worker copies the latest one locally and passes it to
``Trainer.train(resume_from_checkpoint=...)``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

HF_CHECKPOINT = "checkpoint"  # RayTrainReportCallback.CHECKPOINT_NAME


def resume_dir(tmp: str) -> tuple[str | None, int]:
    """Copy the latest Ray checkpoint into ``tmp``; return (HF checkpoint dir, its global
    step), or (None, 0) on a first start."""
    import ray.train

    ckpt = ray.train.get_checkpoint()
    logger.info("worker start: latest checkpoint %s", ckpt)
    if ckpt is None:
        return None, 0
    dest = Path(tmp) / "resume"
    with ckpt.as_directory() as d:
        src = Path(d) / HF_CHECKPOINT
        if not src.is_dir():
            return None, 0
        shutil.copytree(src, dest)
    state = json.loads((dest / "trainer_state.json").read_text())
    return str(dest), int(state.get("global_step", 0))


def world_rank() -> int:
    import ray.train

    return ray.train.get_context().get_world_rank()


def kill_worker_callback(step: int, rank: int, marker: str, grace_s: float = 6.0) -> Any:
    """Test hook: a ``TrainerCallback`` that SIGKILLs this worker at ``step`` (once per run,
    remembered by a marker file), after waiting ``grace_s`` so the Ray Train controller
    has collected the last reported checkpoint (it polls the workers for reports).
    """
    from transformers import TrainerCallback

    class KillWorker(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            if state.global_step == step and world_rank() == rank and not Path(marker).exists():
                Path(marker).write_text(str(os.getpid()))
                time.sleep(grace_s)
                logger.warning("test hook: killing worker pid %d at step %d", os.getpid(), step)
                os.kill(os.getpid(), signal.SIGKILL)

    return KillWorker()


__all__ = ["HF_CHECKPOINT", "kill_worker_callback", "resume_dir", "world_rank"]
