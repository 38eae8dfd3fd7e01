"""Ray Train overhead: the same LoRA SFT run in plain TRL (this process) vs inside a
Ray Train ``TorchTrainer`` with 1 and with 2 workers.

Throughput is training tokens per second of the trainer's own ``train_runtime``
(tokens = samples seen x mean tokens per example), so Ray's start-up cost is
reported separately as wall time. Target: Ray overhead <= 10 % for >= 300 steps.

    PYTHONPATH=. python benchmarks/train_overhead.py --steps 300
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


def plain(base_path: str, records, args) -> tuple[float, float]:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qlp_ray.train.sft import train_sft_trial

    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(base_path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        res = train_sft_trial(
            model,
            tok,
            records,
            output_dir=tmp,
            steps=args.steps,
            batch_size=args.batch_size,
            max_length=args.max_length,
        )
    return float(res.metrics["train_runtime"]), time.perf_counter() - t0


def on_ray(base_path: str, records, args, workers: int) -> tuple[float, float]:
    from qlp_ray.train.ray_rlhf import RLHFOptions, train_rlhf_on_ray

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        res = train_rlhf_on_ray(
            "sft",
            base_path=base_path,
            data=records,
            options=RLHFOptions(
                steps=args.steps,
                batch_size=args.batch_size,
                learning_rate=2e-3,
                lr_scheduler_type="linear",
                warmup_ratio=0.0,
                checkpoint_every=args.steps + 1,  # like the plain run: no checkpoints
                method_kwargs={"max_length": args.max_length},
            ),
            output_dir=Path(tmp) / "adapter",
            storage_path=Path(tmp) / "runs",
            run_name=f"overhead-{workers}w",
            workers=workers,
            max_failures=0,
        )
    return float(res.metrics["train_runtime"]), time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--domain", default="api")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

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
