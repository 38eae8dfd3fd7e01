"""Hot-swap under load: failed requests and time until the new version serves.

Over real HTTP: deploys the app on local Ray Serve (port 8140), keeps ``--threads``
clients sending completions to an adapter (``dataeng``) and to a stack holding it
(``dataeng+frontend``), and swaps ``dataeng`` between two signed versions with
``POST /v1/admin/swap``, alternating warm (pre-load + pre-compose, then switch) and cold
(switch, invalidate; load on first use). Per swap it measures the time from sending the
swap to the first response served by the new version (adapter and stack), and counts
failed requests and requests sent after the swap returned that were still served by
the old version. Targets: 0 failed, new version serving within 1 s. With ``--replicas 2``
the compositor has two replicas and the swap goes through the swap board (every replica
warms / invalidates and acknowledges; ``acks`` counts them).

    QLP_HOME=/tmp/qlp_compose3_bench python benchmarks/hot_swap.py [--swaps 6] [--replicas 1]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _compositor_setup import PROMPTS, bench_config, register_adapters  # noqa: E402

PORT = 8140
URL = f"http://127.0.0.1:{PORT}"
STACK = "dataeng+frontend"


class Load:
    """Client threads; each result is (sent, done, status, served-by)."""

    def __init__(self, threads: int, max_tokens: int) -> None:
        self.results: list[tuple[float, float, int, str]] = []
        self.max_tokens = max_tokens
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,)) for i in range(threads)]

    def _run(self, i: int) -> None:
        models = ["dataeng", STACK]
        with httpx.Client(timeout=60) as client:
            n = i
            while not self._stop.is_set():
                body = {
                    "model": models[n % 2],
                    "prompt": PROMPTS[n % len(PROMPTS)],
                    "max_tokens": self.max_tokens,
                }
                n += 1
                sent = time.perf_counter()
                try:
                    r = client.post(URL + "/v1/completions", json=body)
                    status, served = r.status_code, r.text[:200]
                    if status == 200:
                        q = r.json()["qlp"]
                        served = q["adapter"] + (f"@{q['version']}" if q["version"] else "")
                except httpx.HTTPError as exc:
                    status, served = 0, repr(exc)
                self.results.append((sent, time.perf_counter(), status, served))

    def start(self) -> None:
        for t in self._threads:
            t.start()

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)


def swap_once(load: Load, old: int, new: int, warm: bool) -> dict[str, float]:
    t_swap = time.perf_counter()
    r = httpx.post(
        URL + "/v1/admin/swap",
        timeout=60,
        json={"old": f"dataeng@{old}", "new": f"dataeng@{new}", "warm": warm},
    )
    t_done = time.perf_counter()
    r.raise_for_status()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # until both kinds were served after the swap
        after = [x for x in load.results if x[0] > t_done]
        if sum("+" in x[3] for x in after) >= 2 and sum("+" not in x[3] for x in after) >= 2:
            break
        time.sleep(0.05)
    new_tag, old_tag = f"dataeng@{new}", f"dataeng@{old}"

    def first_new(stack: bool) -> float:
        done = [
            x[1]
            for x in load.results
            if x[0] >= t_swap and new_tag in x[3] and ("+" in x[3]) == stack
        ]
        return (min(done) - t_swap) if done else float("inf")

    stale = [x for x in load.results if x[0] > t_done and old_tag in x[3]]
    # latency of the requests sent during the swap call or in the second after it
    around = [(x[1] - x[0]) * 1000 for x in load.results if t_swap <= x[0] <= t_done + 1.0]
    return {
        "swap_ms": (t_done - t_swap) * 1000,
        "adapter_s": first_new(False),
        "stack_s": first_new(True),
        "stale": len(stale),
        "warmed": len(r.json()["warmed"]),
        "acks": sum(r.json()["acknowledged"].values()),
        "around_max_ms": max(around) if around else float("nan"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--swaps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=4)
    parser.add_argument("--gap-s", type=float, default=1.5, help="load between two swaps")
    parser.add_argument("--replicas", type=int, default=1, help="compositor replicas")
    args = parser.parse_args()

    import ray
    from ray import serve

    from qlp_ray.models.base import load_base
    from qlp_ray.serve.app import deploy

    t_start = time.perf_counter()
    cfg = bench_config(
        serve={
            "port": PORT,
            "app_name": "qlp_hot_swap_bench",
            "compositor_replicas": args.replicas,
            "compositor_num_cpus": 0.5 if args.replicas == 1 else 1.0 / args.replicas,
            "router_num_cpus": 0.25,
            "prewarm_stacks": [STACK],
        }
    )
    base, _ = load_base(cfg)
    registry = register_adapters(cfg, base, ["dataeng", "frontend"], versions=2)
    for adapter_id in ("dataeng", "frontend"):
        registry.set_current(adapter_id, 1)
    del base
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    rows = []
    try:
        deploy(cfg, persistent=False)
        load = Load(args.threads, args.max_tokens)
        load.start()
        time.sleep(args.gap_s)
        current = 1
        for k in range(args.swaps):
            warm = k % 2 == 0
            rows.append({"warm": warm, **swap_once(load, current, 3 - current, warm)})
            current = 3 - current
            time.sleep(args.gap_s)
        load.stop()
    finally:
        serve.shutdown()
        ray.shutdown()

    results = load.results
    failed = [x for x in results if x[2] != 200]
    print(
        f"hot-swap under load over HTTP: {args.threads} client threads, "
        f"{len(results)} requests ('dataeng' and '{STACK}'), {args.swaps} swaps, "
        f"{args.replicas} compositor replica(s)"
    )
    print(
        f"{'swap':<6}{'mode':<6}{'swap call':>11}{'adapter new':>13}{'stack new':>11}"
        f"{'stale':>7}{'warmed':>8}{'acks':>6}{'max latency':>13}"
    )
    for i, r in enumerate(rows):
        print(
            f"{i + 1:<6}{'warm' if r['warm'] else 'cold':<6}{r['swap_ms']:>9.0f}ms"
            f"{r['adapter_s']:>12.3f}s{r['stack_s']:>10.3f}s{r['stale']:>7}{r['warmed']:>8}"
            f"{r['acks']:>6}{r['around_max_ms']:>11.0f}ms"
        )
    worst = max(max(r["adapter_s"], r["stack_s"]) for r in rows)
    for mode in (True, False):
        sel = [max(r["adapter_s"], r["stack_s"]) for r in rows if r["warm"] == mode]
        if sel:
            print(f"{'warm' if mode else 'cold'}: worst time to new version {max(sel):.3f} s")
    print(
        f"failed requests: {len(failed)} of {len(results)} (target 0) "
        f"{'ok' if not failed else 'MISSED: ' + str(failed[:3])}"
    )
    print(
        f"worst time until the new version serves: {worst:.3f} s = {worst / 1.0:.2f}x "
        f"the 1 s target {'ok' if worst <= 1.0 else 'MISSED'}"
    )
    print(
        "adapter/stack new = swap sent -> first response by the new version; stale = requests "
        "sent after the swap returned but served by the old version; max latency = slowest "
        "request sent during the swap or in the second after it; acks = replicas that "
        "acknowledged the warm-up and the invalidation"
    )
    print(f"(total {time.perf_counter() - t_start:.0f} s)")


if __name__ == "__main__":
    main()
