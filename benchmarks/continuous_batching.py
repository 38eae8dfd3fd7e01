"""Continuous (step-level) vs request-level batching on a mixed workload: short requests
behind long ones.

Both schedulers run the compositor's own code in this process over one shared
``TransformersBackend`` with 16 signed adapters (1 torch thread, as Ray gives the
compositor replica): ``StepMerger`` (default; a request joins the running batch at the
next decoding step and leaves it when done) and ``BatchMerger`` (requests arriving during
a batch form the next one, and a batch runs until its longest row is done). C closed-loop
clients send the same job list to each (every 4th request wants ``--long`` tokens, the
others ``--short``); the two schedulers alternate in rounds so they see the same load.
Greedy outputs are checked to be equal between the two.

    QLP_HOME=/tmp/qlp_cont_bench PYTHONPATH=. python benchmarks/continuous_batching.py \\
        [--rounds 6] [--concurrency 16] [--short 4] [--long 48]

Printed: throughput, p50/p95 latency of the short and of the long requests, and the
ratios continuous / request-level.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _compositor_setup import PROMPTS, bench_config, percentile, register_adapters  # noqa: E402

N_ADAPTERS = 16


async def _closed_loop(merger, jobs: list, clients: int):
    """``jobs`` = (request, adapter); (texts by index, seconds, latencies ms by index)."""
    queue = list(enumerate(jobs))
    texts: dict[int, str] = {}
    latency: dict[int, float] = {}

    async def client() -> None:
        while queue:
            i, row = queue.pop(0)
            t0 = time.perf_counter()
            (gen,) = await merger.submit([row])
            if isinstance(gen, Exception):
                raise gen
            latency[i] = (time.perf_counter() - t0) * 1000
            texts[i] = gen.text

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return texts, time.perf_counter() - t0, latency


def run(args: argparse.Namespace) -> dict:
    import torch

    from qlp_ray.models.backend import GenerationRequest
    from qlp_ray.models.base import base_model_id, load_base
    from qlp_ray.models.hf_backend import TransformersBackend
    from qlp_ray.serve.batching import BatchMerger, StepMerger

    cfg = bench_config()
    torch.set_num_threads(1)  # the compositor replica's torch threads (num_cpus 1)
    base, tokenizer = load_base(cfg)
    ids = [f"cont{i:02d}" for i in range(N_ADAPTERS)]
    registry = register_adapters(cfg, base, ids)
    backend = TransformersBackend(base, tokenizer)
    for adapter_id in ids:
        path = registry.verified_path(adapter_id, expected_base_model=base_model_id(cfg))
        backend.load_adapter(adapter_id, str(path))
    c = args.concurrency
    mergers = {"continuous": StepMerger(backend, c), "request-level": BatchMerger(
        backend.generate_batch, c)}  # fmt: skip

    def jobs(start: int, n: int) -> list:
        out = []
        for i in range(start, start + n):
            tokens = args.long if i % 4 == 0 else args.short
            request = GenerationRequest(PROMPTS[i % len(PROMPTS)], max_new_tokens=tokens)
            out.append((request, ids[i % N_ADAPTERS]))
        return out

    loop = asyncio.new_event_loop()
    for merger in mergers.values():  # warm-up
        loop.run_until_complete(_closed_loop(merger, jobs(0, c), c))
    spent = dict.fromkeys(mergers, 0.0)
    lat: dict[str, dict[str, list[float]]] = {m: {"short": [], "long": []} for m in mergers}
    texts: dict[str, dict[int, str]] = {m: {} for m in mergers}
    done = 0
    for r in range(args.rounds):
        batch = jobs(done, args.per_round)
        order = list(mergers) if r % 2 == 0 else list(reversed(mergers))
        for name in order:
            got, secs, ms = loop.run_until_complete(_closed_loop(mergers[name], batch, c))
            spent[name] += secs
            for i, value in ms.items():
                kind = "long" if (done + i) % 4 == 0 else "short"
                lat[name][kind].append(value)
                texts[name][done + i] = got[i]
        done += args.per_round
    loop.close()
    same = sum(texts["continuous"][i] == texts["request-level"][i] for i in texts["continuous"])
    return {
        "rps": {m: done / spent[m] for m in mergers},
        "lat": lat,
        "same": (same, done),
        "steps": mergers["continuous"].stats,
        "batches": mergers["request-level"].stats,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--per-round", type=int, default=64, help="requests per round")
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight")
    parser.add_argument("--short", type=int, default=4, help="max_tokens of 3 in 4 requests")
    parser.add_argument("--long", type=int, default=48, help="max_tokens of 1 in 4 requests")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    r = run(args)
    load = os.getloadavg()
    print(
        f"continuous vs request-level batching, in-process compositor schedulers, "
        f"{N_ADAPTERS} adapters, C={args.concurrency}, 1 in 4 requests max_tokens={args.long}, "
        f"the others {args.short}, greedy, 1 torch thread, load average {load[0]:.2f}"
    )
    print(f"{'':15}{'req/s':>8}{'short p50':>11}{'short p95':>11}{'long p50':>10}{'long p95':>10}")
    for name in ("continuous", "request-level"):
        s, g = r["lat"][name]["short"], r["lat"][name]["long"]
        print(
            f"{name:15}{r['rps'][name]:8.1f}{percentile(s, 50):11.1f}{percentile(s, 95):11.1f}"
            f"{percentile(g, 50):10.1f}{percentile(g, 95):10.1f}"
        )
    cont, req = r["lat"]["continuous"], r["lat"]["request-level"]
    st, bt = r["steps"], r["batches"]
    print(
        f"continuous: {st['batches']} decoding steps, {st['prefills']} prefills, mean "
        f"{st['row_steps'] / max(st['batches'], 1):.1f} rows per step; request-level: "
        f"{bt['batches']} batches, mean {bt['rows'] / max(bt['batches'], 1):.1f} rows"
    )

    def ratio(kind: str, q: float) -> float:
        return percentile(cont[kind], q) / percentile(req[kind], q)

    speed = r["rps"]["continuous"] / r["rps"]["request-level"]
    print(
        f"continuous / request-level: throughput {speed:.2f}x, short p50 latency "
        f"{ratio('short', 50):.2f}x, short p95 {ratio('short', 95):.2f}x, long p50 "
        f"{ratio('long', 50):.2f}x"
    )
    same, total = r["same"]
    print(f"same greedy text from both schedulers: {same}/{total}")


if __name__ == "__main__":
    main()
