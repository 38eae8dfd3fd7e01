"""Durable acknowledgements: what waiting for the request row's commit costs a reply.

The gateway's recorder (``RequestRecorder.record``, the step before a completion's reply)
writes each answered request's row into a real SQLite feedback store (WAL,
``synchronous=FULL``) in a temporary directory, in each ``store.request_log_commit`` mode:

- ``durable`` (default): the reply waits until the writer thread committed the row's group
  (concurrent requests share one COMMIT);
- ``background`` (lossy opt-out): the reply goes out at once, the row is committed after;
  the time until the last row is committed (drain) is printed too;
- ``inline``: every reply commits its own row.

``--concurrency`` asyncio clients call ``record`` back to back (one in four is an
A/B-assigned failure, ``record_failure``, on the same path) for ``--rows`` rows per mode:
rows/s and the p50/p99 of the time a reply waits for recording, and the shortest request
whose latency that p50 stays within the 2 % budget of (p50 / 0.02). A one-title MiniLM
embedding (``ab_assignment.py``'s lower bound of a request) is printed for scale.

    PYTHONPATH=. python benchmarks/durable_acks.py [--rows 3000] [--concurrency 1 8 32]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import tempfile
import time
from types import SimpleNamespace

from _router_setup import embedding_ms

from qlp_ray.core.config import load_config
from qlp_ray.serve.telemetry.recording import RequestRecorder

MODES = ("durable", "background", "inline")


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


async def _run(recorder: RequestRecorder, rows: int, concurrency: int, tag: str) -> list[float]:
    target = SimpleNamespace(
        adapter="ml-v1", version=1, domain="ml", routed=True, confidence=0.9, external=None,
        experiment="e", variant="a",
    )  # fmt: skip
    gen = {"text": "Check the shuffle partitions " * 8, "prompt_tokens": 40,
           "completion_tokens": 16}  # fmt: skip
    waits: list[float] = []
    counter = iter(range(rows))

    async def client(c: int) -> None:
        for i in counter:
            t0 = time.perf_counter()
            if i % 4 == 3:
                state = await recorder.record_failure(f"{tag}-{i}", "e", "b", status=424,
                                                      latency_s=0.03, user=None)  # fmt: skip
            else:
                state = await recorder.record(
                    request_id=f"{tag}-{i}",
                    target=target,
                    gen=gen,
                    latency_s=0.03,
                    user=None,
                    prompt="Spark job fails with OOM on large shuffle " * 3,
                )
            waits.append(time.perf_counter() - t0)
            assert state in ("committed", "queued"), state

    await asyncio.gather(*(client(c) for c in range(concurrency)))
    return waits


def measure(mode: str, rows: int, concurrency: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        store = {"request_log_commit": mode}
        cfg = load_config(overrides={"paths": {"home": tmp}, "store": store}, environ={})
        recorder = RequestRecorder(cfg, "base")
        asyncio.run(_run(recorder, 20, 1, "warm"))  # warm: schema, first commit
        t0 = time.perf_counter()
        waits = asyncio.run(_run(recorder, rows, concurrency, "r"))
        t1 = time.perf_counter()
        if recorder.writer is not None:
            assert recorder.writer.flush(timeout=300)
        t2 = time.perf_counter()
        batches = recorder.writer.stats()["batches"] if recorder.writer else rows + 20
        errors = recorder.store_errors
        recorder.close()
        assert errors == 0, f"{errors} rows refused"
    return {
        "replies_per_s": rows / (t1 - t0),
        "committed_per_s": rows / (t2 - t0),
        "drain_ms": (t2 - t1) * 1000,
        "p50_ms": statistics.median(waits) * 1000,
        "p99_ms": _pct(waits, 0.99) * 1000,
        "rows_per_commit": (rows + 20) / max(batches, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=3000, help="rows per mode and concurrency")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    args = ap.parse_args()
    print("load average at start: {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))
    base_ms = embedding_ms()
    print(f"for scale: one MiniLM title embedding (median of 60) takes {base_ms:.2f} ms")
    print(f"{'clients':>7} {'mode':>10} {'replies/s':>10} {'committed/s':>11} {'p50 ms':>8} "
          f"{'p99 ms':>8} {'rows/commit':>11} {'drain ms':>9} {'2 % of >= ms':>12}")  # fmt: skip
    for conc in args.concurrency:
        rows = args.rows if conc > 1 else max(args.rows // 4, 100)
        for mode in MODES:
            m = measure(mode, rows, conc)
            print(f"{conc:>7} {mode:>10} {m['replies_per_s']:>10.0f} {m['committed_per_s']:>11.0f} "
                  f"{m['p50_ms']:>8.3f} {m['p99_ms']:>8.3f} {m['rows_per_commit']:>11.1f} "
                  f"{m['drain_ms']:>9.1f} {m['p50_ms'] / 0.02:>12.0f}")  # fmt: skip
    print("load average at end: {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main()
