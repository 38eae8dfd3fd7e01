"""Fixed cost of a Ray Train run with the controller polling every 2 s (Ray's default) vs
every 0.5 s (what qlp sets, ``qlp_ray.train.placement.quick_controller_polls``).

Each round runs the same 1-worker ``TorchTrainer`` twice, one per interval, in this one
process and cluster (the interval reaches the controller through the driver's
environment, which Ray Train propagates). The loop imports what the SFT loop imports and
reports once, so the figure is the run's overhead: scheduling the controller and the
worker, start-up, and noticing the end.

    PYTHONPATH=. python benchmarks/train_controller_poll.py --rounds 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"


def _loop(config: dict) -> None:
    import peft  # noqa: F401  (what the SFT loop imports)
    import ray.train
    import transformers  # noqa: F401
    import trl  # noqa: F401

    ray.train.report({"done": 1})


def one_run(interval: str, storage: str, name: str) -> float:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    os.environ[POLL_ENV] = interval
    t0 = time.perf_counter()
    TorchTrainer(
        _loop,
        scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 0.25}),
        run_config=RunConfig(storage_path=storage, name=name),
    ).fit()
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import ray

    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False)
    seconds: dict[str, list[float]] = {"2.0": [], "0.5": []}
    with tempfile.TemporaryDirectory(prefix="qlp-poll-") as storage:
        for r in range(args.rounds):
            order = ("2.0", "0.5") if r % 2 == 0 else ("0.5", "2.0")  # interleaved
            for interval in order:
                seconds[interval].append(one_run(interval, storage, f"r{r}-{interval}"))
    slow, quick = statistics.median(seconds["2.0"]), statistics.median(seconds["0.5"])
    print(f"empty 1-worker Ray Train run, median of {args.rounds}: poll 2.0 s (Ray default) "
          f"{slow:.1f} s, poll 0.5 s (qlp) {quick:.1f} s: {slow - quick:.1f} s less "
          f"(x{quick / slow:.2f}); all runs {seconds}")  # fmt: skip


if __name__ == "__main__":
    main()
