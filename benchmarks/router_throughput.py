"""Routing decisions/s through the real Serve Router deployment: batched vs unbatched,
and batched with the gateway's call coalescing.

Two Router deployments run side by side on one local Ray (2 CPUs), identical but for
``router.max_batch_size`` (the configured size vs 1 = no batching). Many concurrent
callers in this process send the distinct issue titles of ``dev.jsonl``, one text per
call, three ways; the rounds alternate between them so all see the same machine load:

* **coalesced**: through :class:`~qlp_ray.serve.route_client.CoalescingRouter` over the
  batched deployment, which is how the HTTP gateway calls the router
  (``router.coalesce_calls``): concurrent calls travel as ``route_many`` calls;
* **batched**: ``handle.route.remote(text)`` per text, batched by ``@serve.batch`` only;
* **unbatched**: the same against the ``max_batch_size: 1`` deployment;
* **coalesced padded**: coalesced, against a third deployment whose encoder pads its
  batches (``router.embedding_packing: false``) instead of packing them, the baseline of
  packed batches.

Every decision is a full route: embedding (OpenVINO IR by default) + centroid decision.
After the Serve runs (Ray shut down, the machine to itself) the same encoder embeds the
same texts in this process in batches of the coalesced mode's mean size: that rate, with
no serving cost at all, is the ceiling any routing path on this machine can reach (packed
and padded).

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

    from qlp_ray.serve.route_client import CoalescingRouter
    from qlp_ray.serve.router import router_deployment

    cfgs = {
        "batched": router_bench_config(
            home, {"embedding_backend": backend, "embedding_precision": precision}
        ),
        "unbatched": router_bench_config(
            home,
            {"embedding_backend": backend, "embedding_precision": precision, "max_batch_size": 1},
        ),
        "padded": router_bench_config(
            home,
            {
                "embedding_backend": backend,
                "embedding_precision": precision,
                "embedding_packing": False,
            },
        ),  # fmt: skip
    }
    build_registry(cfgs["batched"])
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": cfgs["batched"].serve.port})
        handles = {}
        for mode, cfg in cfgs.items():
            app = router_deployment(cfg).bind(cfg.model_dump(mode="json"))
            handles[mode] = serve.run(app, name=f"router_{mode}", route_prefix=None)
        # the batched deployment called the way a gateway calls it: concurrent calls of
        # this process coalesced into route_many calls (router.coalesce_calls)
        deployment_of = {"coalesced": "batched", "coalesced padded": "padded",
                         "batched": "batched", "unbatched": "unbatched"}  # fmt: skip
        size = cfgs["batched"].router.max_batch_size
        coalescing = CoalescingRouter(handles["batched"], size)
        callers = {
            "coalesced": coalescing,
            "coalesced padded": CoalescingRouter(handles["padded"], size),
            "batched": handles["batched"],
            "unbatched": handles["unbatched"],
        }
        titles = dev_titles()
        texts = [titles[i % len(titles)] for i in range(n)]
        per_round = max(n // rounds, 1)
        # one loop for every handle call, left open: with Serve's same-loop handle router
        # (RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP=0) the handles are bound to it until shutdown
        loop = asyncio.new_event_loop()
        for caller in callers.values():  # warm-up: code paths, OpenVINO first inference
            loop.run_until_complete(_drive(caller, titles[:concurrency], concurrency))
        seconds = {m: 0.0 for m in callers}
        done = {m: 0 for m in callers}
        targets: dict[str, list] = {m: [] for m in callers}
        stats = {m: {"batches": 0, "texts": 0, "seconds": 0.0} for m in callers}

        def batch_stats(mode: str) -> dict:
            handle = handles[deployment_of[mode]]
            return loop.run_until_complete(handle.batch_stats.remote())

        for r in range(rounds):
            chunk = texts[r * per_round : (r + 1) * per_round]
            order = list(callers) if r % 2 == 0 else list(reversed(callers))
            for mode in order:
                before = batch_stats(mode)
                dt, decisions = loop.run_until_complete(_drive(callers[mode], chunk, concurrency))
                after = batch_stats(mode)
                for key in stats[mode]:
                    stats[mode][key] += after[key] - before[key]
                seconds[mode] += dt
                done[mode] += len(chunk)
                targets[mode] += [d["target"] for d in decisions]
        calls = dict(coalescing.route.stats)
    finally:
        serve.shutdown()
        ray.shutdown()
    same = sum(len(set(row)) == 1 for row in zip(*targets.values(), strict=True))
    batch = max(round(stats["coalesced"]["texts"] / max(stats["coalesced"]["batches"], 1)), 1)
    return {
        "encoder_alone": {
            "packed": _encoder_alone(cfgs["batched"], texts, batch),
            "padded": _encoder_alone(cfgs["padded"], texts, batch),
        },
        "calls": calls,
        "rate": {m: done[m] / seconds[m] for m in seconds},
        "done": done,
        "stats": stats,
        "same_decisions": same,
        "distinct_texts": len(set(texts)),
    }


def _encoder_alone(cfg, texts: list[str], batch: int) -> dict[str, float]:
    """Texts/s of the router's encoder in this process, ``batch`` texts per call."""
    from qlp_ray.serve.router import router_embedder

    embedder = router_embedder(cfg)
    embedder.encode(texts[:batch])  # first inference
    t0 = time.perf_counter()
    for i in range(0, len(texts), batch):
        embedder.encode(texts[i : i + batch])
    return {"rate": len(texts) / (time.perf_counter() - t0), "batch": batch}


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
    print(f"{'':17}{'per s':>7}{'batches':>9}{'mean batch':>12}{'encoder ms/text':>17}")
    for mode in ("coalesced", "coalesced padded", "batched", "unbatched"):
        st = s["stats"][mode]
        mean = st["texts"] / max(st["batches"], 1)
        per_text = 1000 * st["seconds"] / max(st["texts"], 1)
        print(f"{mode:17}{s['rate'][mode]:7.0f}{st['batches']:9d}{mean:12.1f}{per_text:17.2f}")
    ratio = s["rate"]["batched"] / s["rate"]["unbatched"]
    coalesced = s["rate"]["coalesced"]
    calls = s["calls"]
    print(f"batched / unbatched: {ratio:.2f}x; coalesced / unbatched: "
          f"{coalesced / s['rate']['unbatched']:.2f}x ({calls['texts']} texts in "
          f"{calls['calls']} route_many calls); same decision in all four modes for "
          f"{s['same_decisions']}/{s['done']['batched']} texts")  # fmt: skip
    print(f"packed / padded batches: coalesced {coalesced / s['rate']['coalesced padded']:.2f}x")
    alone = s["encoder_alone"]
    for kind, mode in (("packed", "coalesced"), ("padded", "coalesced padded")):
        a = alone[kind]
        print(f"encoder alone in-process, {kind} (batches of {a['batch']}, no serving): "
              f"{a['rate']:.0f} texts/s = the ceiling; {mode} reaches "
              f"{s['rate'][mode] / a['rate']:.2f}x of it")  # fmt: skip
    print(
        f"packed / padded encoder alone: {alone['packed']['rate'] / alone['padded']['rate']:.2f}x"
    )
    for mode, how in (("coalesced", "as the gateway calls it"), ("batched", "one call per text")):
        verdict = "meets" if s["rate"][mode] >= TARGET_PER_S else "MISSES"
        print(f"target >= {TARGET_PER_S:.0f} decisions/s with batching, {how}: {verdict}")


if __name__ == "__main__":
    main()
