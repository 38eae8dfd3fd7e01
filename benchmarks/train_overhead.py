"""Ray Train overhead: the same LoRA SFT run in plain TRL (this process) vs inside a
Ray Train ``TorchTrainer`` with 1 and with 2 workers; and the same PPO run
(``qlp_ray.train.ppo_loop.train_ppo`` in this process vs ``train_ppo_on_ray``).

SFT throughput is training tokens per second of the trainer's own ``train_runtime``
(tokens = samples seen x mean tokens per example); PPO's is PPO steps per second of
the loop's own ``train_seconds`` (rollouts + updates), so Ray's start-up cost is
reported separately as wall time. Both SFT sides run the SFT code of ``qlp train``
(``run_sft``; on Ray its worker ``train_loop_per_worker``). Target: Ray overhead <= 10 %
for >= 300 SFT steps.

    PYTHONPATH=. python benchmarks/train_overhead.py --steps 300
    PYTHONPATH=. python benchmarks/train_overhead.py --method ppo --ppo-steps 60 --rounds 2
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path


def _records(domain: str):
    from qlp_ray.data.capsules import load_capsules, sample_path
    from qlp_ray.data.format import to_prompt_completion

    return [to_prompt_completion(c) for c in load_capsules(sample_path(domain, "train"))]


def _mean_tokens(base_path: str, records, max_length: int) -> float:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(base_path)
    lengths = [
        min(max_length, len(tok(r["prompt"] + r["completion"])["input_ids"])) for r in records
    ]
    return sum(lengths) / len(lengths)


def _train_cfg(args):
    from qlp_ray.core.config import load_config

    cfg = load_config()
    cfg.model.max_seq_len = args.max_length
    # like the plain run: no checkpoints or held-out evaluations during training
    train_cfg = cfg.train.model_copy(
        update={"steps": args.steps, "batch_size": args.batch_size, "warmup_ratio": 0.0,
                "checkpoint_every": 0, "max_failures": 0}
    )  # fmt: skip
    return cfg, train_cfg


def plain(base_path: str, records, args) -> tuple[float, float]:
    """The SFT function of every Ray Train worker (``run_sft``), in this process."""
    import torch

    from qlp_ray.train.sft import run_sft

    torch.set_num_threads(1)
    cfg, train_cfg = _train_cfg(args)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        res = run_sft(base_path, records, records[:16], train_cfg, tmp,
                      max_seq_len=args.max_length, save_adapter=False)  # fmt: skip
    return res.tokens / res.tokens_per_s, time.perf_counter() - t0


def on_ray(base_path: str, records, args, workers: int) -> tuple[float, float]:
    """The SFT worker of ``qlp train`` (``train_loop_per_worker``) on a ``TorchTrainer``."""
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from qlp_ray.train.ray_train import sft_loop_config, train_loop_per_worker

    cfg, train_cfg = _train_cfg(args)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config=sft_loop_config(
                cfg, train_cfg, base_model=base_path, train_records=records,
                eval_records=records[:16], use_gpu=False,
            ),
            scaling_config=ScalingConfig(num_workers=workers),
            run_config=RunConfig(name=f"overhead-{workers}w", storage_path=str(Path(tmp))),
        )  # fmt: skip
        res = trainer.fit()
    m = res.metrics  # rank 0's final report
    return m["tokens"] / m["tokens_per_s"], time.perf_counter() - t0


PPO_KEYWORD = "steps"  # the reward of the PPO runs: keyword_reward([PPO_KEYWORD])


def _ppo_prompts(domain: str) -> list[str]:
    from qlp_ray.data.capsules import load_capsules, sample_path
    from qlp_ray.models.prompt import format_prompt

    return [
        format_prompt(c.instruction, c.input) for c in load_capsules(sample_path(domain, "train"))
    ]


def _ppo_options(args):
    from qlp_ray.train.ppo_loop import PPOOptions

    # like the plain run: no checkpoints
    return PPOOptions(steps=args.ppo_steps, batch_size=8, checkpoint_every=args.ppo_steps + 1)


def ppo_plain(base_path: str, prompts, args) -> tuple[float, float]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qlp_ray.train.ppo_loop import train_ppo
    from qlp_ray.train.rewards import keyword_reward

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(base_path)
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    res = train_ppo(model, tok, prompts, keyword_reward([PPO_KEYWORD]), _ppo_options(args))
    return float(res.metrics["train_seconds"]), time.perf_counter() - t0


def ppo_on_ray(cfg, prompts, args, workers: int) -> tuple[float, float]:
    from qlp_ray.train.ray_ppo import train_ppo_on_ray
    from qlp_ray.train.rewards import keyword_reward

    t0 = time.perf_counter()
    res = train_ppo_on_ray(
        cfg,
        prompts=prompts,
        reward=keyword_reward([PPO_KEYWORD]),
        options=_ppo_options(args),
        workers=workers,
        cpus_per_worker=1.0,
        max_failures=0,
        output_dir=Path(tempfile.mkdtemp()) / "adapter",
    )
    return float(res.metrics["train_seconds"]), time.perf_counter() - t0


def main_ppo(args) -> None:
    """Plain PPO loop vs Ray Train (1 worker), interleaved in ``--rounds``; medians."""
    import statistics

    import ray

    from qlp_ray.core.config import load_config
    from qlp_ray.models.base import resolve_base_path

    cfg = load_config()
    base_path = resolve_base_path(cfg)
    prompts = _ppo_prompts(args.domain)
    runs: dict[str, list[tuple[float, float]]] = {"plain PPO loop": [], "Ray Train, 1 worker": []}
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        for _ in range(args.rounds):
            runs["plain PPO loop"].append(ppo_plain(base_path, prompts, args))
            runs["Ray Train, 1 worker"].append(ppo_on_ray(cfg, prompts, args, 1))
    finally:
        ray.shutdown()
    print(f"PPO: {args.ppo_steps} steps, 8 prompts/step, {args.rounds} interleaved round(s)")
    print(f"{'run':<22} {'train s':>8} {'wall s':>8} {'steps/s':>8} {'overhead':>9}")
    plain = [t for t, _ in runs["plain PPO loop"]]
    base_s = statistics.median(plain)
    for name, rounds in runs.items():
        train_s = statistics.median(t for t, _ in rounds)
        wall_s = statistics.median(w for _, w in rounds)
        print(
            f"{name:<22} {train_s:8.1f} {wall_s:8.1f} {args.ppo_steps / train_s:8.2f} "
            f"{100.0 * (train_s / base_s - 1.0):+8.1f}%  (rounds: "
            + ", ".join(f"{t:.1f}" for t, _ in rounds)
            + ")"
        )
    ray_s = [t for t, _ in runs["Ray Train, 1 worker"]]
    ratios = [r / p for r, p in zip(ray_s, plain, strict=True)]
    print(
        f"Ray / plain per round: {', '.join(f'{x:.2f}' for x in ratios)}; median "
        f"{100.0 * (statistics.median(ratios) - 1.0):+.1f}%; fastest round vs fastest "
        f"{100.0 * (min(ray_s) / min(plain) - 1.0):+.1f}%"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=("sft", "ppo"), default="sft")
    parser.add_argument("--ppo-steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=1, help="PPO: interleaved rounds")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--domain", default="api")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.method == "ppo":
        main_ppo(args)
        return

    import ray

    from qlp_ray.core.config import load_config
    from qlp_ray.models.base import resolve_base_path

    base_path = resolve_base_path(load_config())  # builds/caches the built-in tiny model
    records = _records(args.domain)
    per_example = _mean_tokens(base_path, records, args.max_length)
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        runs = {"plain TRL (1 process)": (plain(base_path, records, args), 1)}
        for workers in (1, 2):
            runs[f"Ray Train, {workers} worker(s)"] = (
                on_ray(base_path, records, args, workers),
                workers,
            )
    finally:
        ray.shutdown()
    base_tps = None
    print(
        f"{args.steps} steps, batch {args.batch_size}/worker, "
        f"{per_example:.0f} tokens/example, domain {args.domain}"
    )
    print(f"{'run':<26} {'train s':>8} {'wall s':>8} {'tokens/s':>10} {'vs plain':>9}")
    for name, ((train_s, wall_s), workers) in runs.items():
        tokens = args.steps * args.batch_size * workers * per_example
        tps = tokens / train_s
        base_tps = base_tps or tps
        # per-worker throughput against plain: the Ray overhead (2 workers share 2 cores)
        overhead = 100.0 * (base_tps / (tps / workers) - 1.0)
        print(
            f"{name:<26} {train_s:8.1f} {wall_s:8.1f} {tps:10.0f} "
            f"{tps / base_tps:8.2f}x  (overhead per worker {overhead:+.1f}%)"
        )


if __name__ == "__main__":
    main()
