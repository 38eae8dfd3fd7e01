"""Routing decisions/s through the real Serve Router deployment: batched vs unbatched.

Two Router deployments run side by side on one local Ray (2 CPUs), identical but for
``router.max_batch_size`` (the configured size vs 1 = no batching). Many concurrent
callers in this process send the distinct issue titles of ``dev.jsonl`` through the
deployment handle (``handle.route.remote(text)``, the call the HTTP gateway makes); the
rounds alternate between the two deployments so both see the same machine load. Every
decision is a full route: embedding (OpenVINO IR by default) + centroid decision.

    QLP_HOME=/tmp/qlp_routerperf PYTHONPATH=. python benchmarks/router_throughput.py \\
        [--n 1200] [--concurrency 64] [--rounds 3] [--backend openvino|torch] \\
        [--precision auto|f32|bf16]

Target (issue 3): >= 500 decisions/s on 2 cores with batching.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _router_setup import (  # noqa: E402
    add_encoder_args,
    build_registry,
    dev_titles,
    encoder_label,
    router_bench_config,
)

TARGET_PER_S = 500.0


async def _drive(handle, texts: list[str], concurrency: int) -> tuple[float, list]:
    """Send every text once with ``concurrency`` closed-loop callers; (seconds, decisions)."""
    decisions: list = [None] * len(texts)
    next_index = iter(range(len(texts)))

    async def caller() -> None:
        for i in next_index:
            decisions[i] = await handle.route.remote(texts[i])

    t0 = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(concurrency)))
    return time.perf_counter() - t0, decisions


def run(n: int, concurrency: int, rounds: int, backend: str, precision: str, home: Path) -> dict:
    import ray
    from ray import serve

    from qlp_ray.serve.router import router_deployment

    cfgs = {
        "batched": router_bench_config(
            home, {"embedding_backend": backend, "embedding_precision": precision}
        ),
        "unbatched": router_bench_config(
            home,
            {"embedding_backend": backend, "embedding_precision": precision, "max_batch_size": 1},
        ),
    }
    build_registry(cfgs["batched"])
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": cfgs["batched"].serve.port})
        handles = {}
        for mode, cfg in cfgs.items():
            app = router_deployment(cfg).bind(cfg.model_dump(mode="json"))
            handles[mode] = serve.run(app, name=f"router_{mode}", route_prefix=None)
        titles = dev_titles()
        texts = [titles[i % len(titles)] for i in range(n)]
        per_round = max(n // rounds, 1)
        # one loop for every handle call, left open: with Serve's same-loop handle router
        # (RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP=0) the handles are bound to it until shutdown
        loop = asyncio.new_event_loop()
        for handle in handles.values():  # warm-up: code paths, OpenVINO first inference
            loop.run_until_complete(_drive(handle, titles[:concurrency], concurrency))
        seconds = {m: 0.0 for m in handles}
        done = {m: 0 for m in handles}
        targets: dict[str, list] = {m: [] for m in handles}
        for r in range(rounds):
            chunk = texts[r * per_round : (r + 1) * per_round]
            order = list(handles) if r % 2 == 0 else list(reversed(handles))
            for mode in order:
                dt, decisions = loop.run_until_complete(_drive(handles[mode], chunk, concurrency))
                seconds[mode] += dt
                done[mode] += len(chunk)
                targets[mode] += [d["target"] for d in decisions]
        stats = {m: loop.run_until_complete(h.batch_stats.remote()) for m, h in handles.items()}
    finally:
        serve.shutdown()
        ray.shutdown()
    same = sum(a == b for a, b in zip(targets["batched"], targets["unbatched"], strict=True))
    return {
        "rate": {m: done[m] / seconds[m] for m in seconds},
        "done": done,
        "stats": stats,
        "same_decisions": same,
        "distinct_texts": len(set(texts)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1200, help="routing calls per mode")
    parser.add_argument("--concurrency", type=int, default=64, help="concurrent callers")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per mode")
    add_encoder_args(parser)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    home = Path(os.environ.get("QLP_HOME", "/tmp/qlp_routerperf"))

    s = run(args.n, args.concurrency, args.rounds, args.backend, args.precision, home)
    load = os.getloadavg()
    print(f"router throughput: {s['done']['batched']} routing calls per mode, "
          f"{args.concurrency} concurrent callers, {s['distinct_texts']} distinct dev.jsonl "
          f"titles, encoder {encoder_label(args.backend, args.precision)}, 2 CPUs, "
          f"load average {load[0]:.2f}")  # fmt: skip
    print(f"{'':12}{'decisions/s':>12}{'batches':>9}{'mean batch':>12}{'encoder ms/text':>17}")
    for mode in ("batched", "unbatched"):
        st = s["stats"][mode]
        mean = st["texts"] / max(st["batches"], 1)
        per_text = 1000 * st["seconds"] / max(st["texts"], 1)
        print(f"{mode:12}{s['rate'][mode]:12.0f}{st['batches']:9d}{mean:12.1f}{per_text:17.2f}")
    ratio = s["rate"]["batched"] / s["rate"]["unbatched"]
    print(f"batched / unbatched: {ratio:.2f}x; same decision for "
          f"{s['same_decisions']}/{s['done']['batched']} texts")  # fmt: skip
    verdict = "meets" if s["rate"]["batched"] >= TARGET_PER_S else "MISSES"
    print(f"target >= {TARGET_PER_S:.0f} decisions/s with batching: {verdict}")


if __name__ == "__main__":
    main()
