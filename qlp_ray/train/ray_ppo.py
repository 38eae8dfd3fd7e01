"""PPO on Ray Train: data-parallel workers (gloo on CPU), checkpoints and FailureConfig resume.

Each worker runs :class:`~qlp_ray.train.ppo_loop.PPOLearner` on its own seeded draw of
prompts; the gradients of the LoRA weights and the value head are averaged across the
workers (``all_reduce``) before every optimiser step, so all workers hold the same
policy (OpenRLHF's layout minus its separate actor/critic/reference actors: here the
reference is the adapter-disabled policy and the critic a head on the policy).

Rank 0 appends every step's stats (reward, KL, losses) to a ``metrics.jsonl`` in its temp
dir, kept in its checkpoints, and sends them in one batch per checkpoint (not one
``ray.train.report`` per step: a report waits for the controller's next poll, which doubled
the step time); on the driver's node the controller appends them to the run's
``metrics.jsonl`` and logs them to the MLflow run (:mod:`qlp_ray.train.ray_metrics`), and the
final checkpoint's file replaces it at the end. A worker reads nothing of the driver's disk:
the base model resolves on its node, a parent adapter comes as bytes. Every
``checkpoint_every`` steps rank 0 saves adapter + value head + optimiser + scheduler + step
+ KL coefficient + RNG and reports it with ``ray.train.report``; a restarted worker group
(``FailureConfig(max_failures)``) resumes from ``ray.train.get_checkpoint()``. Rank 0
evaluates the held-out prompts before the first step (kept in the checkpoints) and after
the last: mean reward and KL to the reference. The final adapter directory holds the value
head (``value_head.safetensors``) beside the LoRA weights, so a registered PPO adapter is
signed with its critic and ``--parent`` continues both.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from qlp_ray.core.config import QLPConfig
from qlp_ray.core.errors import InvalidRequest, TrainingError
from qlp_ray.train.node_files import (
    materialize,
    resolve_base_on_node,
    restore_metrics_from,
    save_metrics_to,
    ship_dir,
)
from qlp_ray.train.placement import failure_config, placed_workers, quick_controller_polls
from qlp_ray.train.ppo_loop import ADAPTER_DIR, VALUE_HEAD_FILE, PPOOptions
from qlp_ray.train.ray_metrics import STEP_STATS, metrics_from_checkpoint, step_stats_callback
from qlp_ray.train.run_metrics import METRICS_FILE as METRICS_LOG
from qlp_ray.train.run_metrics import append_metrics

logger = logging.getLogger(__name__)

STATE_DIR = "ppo"  # inside each reported checkpoint
METRICS_FILE = "metrics.json"


@dataclass
class PPORayResult:
    adapter_dir: Path
    metrics: dict[str, float]  # reward_before/after, kl_after, resumed_from_step, ...


def _average_grads(params: list[Any]) -> None:
    """Mean of each gradient over the workers, as one flat all_reduce."""
    import torch
    import torch.distributed as dist

    grads = [p.grad for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= dist.get_world_size()
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def _mean_over_workers(stats: dict[str, float]) -> dict[str, float]:
    import torch
    import torch.distributed as dist

    if not dist.is_initialized() or dist.get_world_size() == 1:
        return stats
    keys = sorted(stats)
    t = torch.tensor([stats[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(t)
    return {k: float(v) / dist.get_world_size() for k, v in zip(keys, t.tolist(), strict=True)}


def _maybe_kill(config: dict[str, Any], step: int, rank: int) -> None:
    """Test hook: SIGKILL worker ``kill_rank`` once at ``kill_at_step`` (a marker file
    remembers it across the restart), after ``grace_s`` so the controller has collected
    the checkpoint reported before."""
    marker = config.get("kill_marker")
    if not marker or step != config["kill_at_step"] or rank != config["kill_rank"]:
        return
    if Path(marker).exists():
        return
    Path(marker).write_text(str(os.getpid()))
    time.sleep(config.get("kill_grace_s", 3.0))
    logger.warning("test hook: killing PPO worker pid %d at step %d", os.getpid(), step)
    os.kill(os.getpid(), signal.SIGKILL)


def ppo_loop_per_worker(config: dict[str, Any]) -> None:
    """Ray Train worker: PPO steps, periodic checkpoints, resume, final adapter report."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import ray.train
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qlp_ray.train.ppo_loop import PPOLearner, evaluate, make_policy, prompt_batch

    torch.set_num_threads(max(1, int(config.get("threads", 1))))
    opts: PPOOptions = config["options"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    base_path = resolve_base_on_node(config["base_path"])
    tokenizer = AutoTokenizer.from_pretrained(base_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    work = tempfile.TemporaryDirectory(prefix="qlp-ppo-work-")  # parent files, metrics
    parent = None
    if config.get("parent_path"):  # the verified parent's files, shipped as bytes
        parent = str(materialize(config["parent_path"], Path(work.name) / "parent"))
    policy, head = make_policy(base, opts, parent)
    learner = PPOLearner(
        policy,
        head,
        tokenizer,
        config["reward"],
        opts,
        grad_sync=_average_grads if world > 1 else None,
    )
    metrics_file = str(Path(work.name) / METRICS_LOG) if rank == 0 else None
    meta: dict[str, Any] = {}
    ckpt = ray.train.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            meta = learner.load(Path(d) / STATE_DIR)
            if metrics_file:  # the lines up to the checkpoint's step
                restore_metrics_from(d, metrics_file, learner.step)
        logger.info("rank %d resumed PPO at step %d", rank, learner.step)
    resumed_from = learner.step
    pending: list[tuple[int, dict[str, float]]] = []  # rank 0's steps not yet reported

    def flush() -> dict[str, Any]:
        """The report's batch of rank 0's steps (:func:`step_stats_callback`)."""
        batch = list(pending) if rank == 0 else []
        pending.clear()
        return {STEP_STATS: batch}

    eval_prompts = config.get("eval_prompts") or []
    before = meta.get("eval_before")
    if before is None and eval_prompts and rank == 0:
        before = evaluate(policy, tokenizer, eval_prompts, config["reward"], opts)
    history: list[dict[str, float]] = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="qlp-ppo-") as tmp:
        while learner.step < opts.steps:
            batch = prompt_batch(config["prompts"], learner.step, opts.batch_size, opts.seed, rank)
            stats = _mean_over_workers(learner.train_step(batch))
            history.append(stats)
            # the PPO objective as the run's "loss" (the curve of every method plots it)
            stats["loss"] = stats["policy_loss"] + opts.vf_coef * stats["value_loss"]
            if metrics_file:
                append_metrics(metrics_file, {**stats, "step": learner.step})
            pending.append((learner.step, stats))
            if learner.step % opts.checkpoint_every == 0 and learner.step < opts.steps:
                checkpoint = None
                if rank == 0:
                    path = Path(tmp) / f"step-{learner.step}"
                    learner.save(path / STATE_DIR, extra={"eval_before": before})
                    save_metrics_to(metrics_file, path)
                    checkpoint = ray.train.Checkpoint.from_directory(str(path))
                batch = flush()
                ray.train.report(
                    {**stats, "step": float(learner.step), **batch}, checkpoint=checkpoint
                )
            if config.get("kill_marker"):
                _maybe_kill(config, learner.step, rank)
        metrics: dict[str, float] = {
            "steps": float(learner.step),
            "resumed_from_step": float(resumed_from),
            "workers": float(world),
            "kl_coef": learner.kl_ctl.value,
            "finished": 1.0,
            "train_seconds": time.perf_counter() - t0,  # the steps of this (last) attempt
        }
        if history:
            metrics["train_reward_first"] = history[0]["reward"]
            metrics["train_reward_last"] = history[-1]["reward"]
            metrics.update({k: v for k, v in history[-1].items() if k not in metrics})
        batch = flush()
        checkpoint = None
        if rank == 0:
            if eval_prompts:
                after = evaluate(policy, tokenizer, eval_prompts, config["reward"], opts)
                metrics.update(
                    reward_before=before["reward"],
                    kl_before=before["kl"],
                    reward_after=after["reward"],
                    kl_after=after["kl"],
                    kl_per_token_after=after["kl_per_token"],
                )
            final = Path(tmp) / "final"
            learner.save(final / STATE_DIR, extra={"eval_before": before})
            (final / METRICS_FILE).write_text(json.dumps(metrics))
            save_metrics_to(metrics_file, final)
            checkpoint = ray.train.Checkpoint.from_directory(str(final))
        ray.train.report({**metrics, **batch}, checkpoint=checkpoint)
    work.cleanup()


def train_ppo_on_ray(
    cfg: QLPConfig,
    *,
    prompts: Sequence[str],
    reward: Callable[..., list[float | None]],
    eval_prompts: Sequence[str] = (),
    options: PPOOptions | None = None,
    steps: int | None = None,
    workers: int | None = None,
    output_dir: str | Path | None = None,
    run_name: str | None = None,
    cpus_per_worker: float | None = None,
    max_failures: int | None = None,
    parent_path: str | None = None,
    metrics_file: str | Path | None = None,
    tracking_run: tuple[str, str] | None = None,
    _kill_at_step: int | None = None,
    _kill_rank: int = 0,
) -> PPORayResult:
    """PPO of a LoRA adapter on ``cfg``'s base model with ``workers`` Ray Train workers.

    ``reward`` is a reward function (``f(prompts=, completions=)``, picklable: it runs in
    the workers); ``eval_prompts`` are held out for the before/after reward and KL.
    ``parent_path``: a (verified) adapter directory to continue; it is also the reference.
    The adapter (with its value head) lands in ``output_dir`` (default
    ``<runs>/<run_name>/adapter``); every step's stats of rank 0 reach ``metrics_file`` and
    the MLflow run ``tracking_run`` (``(uri, run_id)``) through its reports, here.
    Checkpoints go to ``train.storage_uri`` (:func:`~qlp_ray.train.storage.run_storage`).
    """
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from qlp_ray.train.node_files import base_model_ref
    from qlp_ray.train.storage import run_storage

    if not prompts:
        raise InvalidRequest("PPO needs at least one training prompt", param="prompts")
    if not callable(reward):
        raise InvalidRequest("PPO needs a reward function", param="reward")
    opts = options or PPOOptions()
    if steps is not None:
        opts = replace(opts, steps=steps)
    n_workers = workers or cfg.train.workers
    cpus = cpus_per_worker or cfg.train.cpus_per_worker
    run_name = run_name or f"ppo-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    storage = cfg.paths.runs  # the driver's run directory (adapter, test hook marker)
    storage.mkdir(parents=True, exist_ok=True)
    storage_path, filesystem = run_storage(cfg)
    config: dict[str, Any] = {
        "base_path": base_model_ref(cfg),  # resolved by each worker on its node
        "prompts": list(prompts),
        "eval_prompts": list(eval_prompts),
        "reward": reward,
        "options": opts,
        "parent_path": ship_dir(parent_path) if parent_path is not None else None,
        "threads": max(1, int(cpus)),
    }
    if _kill_at_step is not None:
        config.update(
            kill_at_step=_kill_at_step,
            kill_rank=_kill_rank,
            kill_marker=str(storage / f"{run_name}.killed"),
        )
    with placed_workers(
        "ppo",
        n_workers,
        cpus,
        False,
        timeout_s=cfg.train.placement_timeout_s,
        hardware=cfg.hardware,
    ) as placed:
        quick_controller_polls()
        trainer = TorchTrainer(
            ppo_loop_per_worker,
            train_loop_config=config,
            scaling_config=ScalingConfig(
                num_workers=placed, use_gpu=False, resources_per_worker={"CPU": cpus}
            ),
            run_config=RunConfig(
                name=run_name,
                storage_path=storage_path,
                storage_filesystem=filesystem,
                failure_config=failure_config(
                    cfg.train.max_failures if max_failures is None else max_failures
                ),
                checkpoint_config=CheckpointConfig(num_to_keep=2),
                callbacks=step_stats_callback(metrics_file, tracking_run),
            ),
        )
        logger.info("Ray Train PPO run %s: %d worker(s), %d steps", run_name, placed, opts.steps)
        result = trainer.fit()
    if result.error is not None:
        raise TrainingError(f"PPO run {run_name} failed: {result.error}")
    if result.checkpoint is None:
        raise TrainingError(f"PPO run {run_name} reported no final adapter")
    dest = Path(output_dir) if output_dir is not None else storage / run_name / ADAPTER_DIR
    with result.checkpoint.as_directory() as d:
        src = Path(d) / STATE_DIR / ADAPTER_DIR
        if not (Path(d) / METRICS_FILE).is_file() or not src.is_dir():
            raise TrainingError(f"PPO run {run_name}: the last checkpoint is not the final one")
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(src, dest)
        shutil.copyfile(Path(d) / STATE_DIR / VALUE_HEAD_FILE, dest / VALUE_HEAD_FILE)
        metrics = json.loads((Path(d) / METRICS_FILE).read_text())
        metrics_from_checkpoint(d, metrics_file)
    logger.info("PPO run %s finished: %s", run_name, metrics)
    return PPORayResult(dest, metrics)


__all__ = ["PPORayResult", "ppo_loop_per_worker", "train_ppo_on_ray"]
