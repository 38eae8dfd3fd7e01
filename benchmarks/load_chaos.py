"""Load + chaos: mixed HTTP load while a compositor, the router, then the gateway replica is killed.

Deploys the app on local Ray Serve (port 8250, app ``qlp_load_chaos_bench``; two compositor
replicas, one router replica, a ``user`` API key) with five signed adapters that have real
routing centroids (``_router_setup.build_registry``). ``--concurrency`` asyncio clients
(httpx) send, for ``--duration-s``, a mix of routed (``model=auto``), pinned
(``<adapter>@1``) and stacked (``a:0.5+b:0.5``) completions and feedback posts on the
server-chosen request ids (``x-qlp-request-id``) of earlier answers. At 20 % of the run one
compositor replica process is SIGKILLed; once the load succeeds again and Serve has
replaced it (or at 45 % of the run at the latest), the router replica process; likewise
(70 % at the latest) the gateway replica process (the HTTP ingress, which owns the request
log writer: with ``--request-log background`` its queued rows die with it). Replica PIDs
come from ``ray.util.state.list_actors`` (Serve replica actors
``ServeReplica:<app>:<deployment>``). A client retries a request that got no answer (a
transport error) or a 500/502/503/504 up to ``--retries`` times within its timeout, with
the same body: completions carry no idempotency key (a retried completion is a new request
with a new id; only answered ids count as acknowledged), and feedback is idempotent enough
(a second thumbs on the same id is one more row).

Printed: requests sent per kind, success % (after retries; and the attempts that failed),
max latency vs the client timeout, recovery per kill (kill → first success of a request
sent after the kill; kill → last failed request, after which every request succeeded;
kill → Serve runs a new replica), and acknowledged rows lost: every 200 completion's
request id looked up in the feedback store after the run (``FeedbackStore.from_config``;
``--request-log`` sets ``store.request_log_commit``, default ``durable``: a 200 goes out
after its row's commit). With ``--soak-s`` a steady load (no kills) follows and the RSS of
every Serve replica process is reported at its start and end against a bound
(``--rss-bound-mib`` growth per process).

    python benchmarks/load_chaos.py [--duration-s 90] [--soak-s 600] [--concurrency 4]
                                    [--retries 3] [--request-log durable|background]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _router_setup import build_registry, dev_titles, router_bench_config  # noqa: E402

PORT = 8250
URL = f"http://127.0.0.1:{PORT}"
APP = "qlp_load_chaos_bench"
API_KEY = "load-chaos-user-key"
HOME = Path(os.environ.get("QLP_HOME", "/tmp/qlp_load_chaos_bench"))
RETRY_STATUS = (500, 502, 503, 504)
MIX = (("routed", 0.4), ("pinned", 0.25), ("stacked", 0.2), ("feedback", 0.15))


@dataclass
class Result:
    kind: str
    sent: float
    done: float
    status: int  # 0 = transport error or client timeout
    request_id: str | None = None
    error: str = ""
    failed_attempts: int = 0  # attempts retried (transport error, 500/502/503/504)

    @property
    def ok(self) -> bool:
        return self.status == 200


@dataclass
class Load:
    adapters: list[str]
    texts: list[str]
    max_tokens: int
    timeout_s: float
    retries: int = 0
    results: list[Result] = field(default_factory=list)
    answered: list[str] = field(default_factory=list)  # ids of 200 completions
    stop: asyncio.Event = field(default_factory=asyncio.Event)

    def _body(self, kind: str, rng: random.Random) -> dict:
        if kind == "routed":
            model = "auto"
        elif kind == "pinned":
            model = f"{rng.choice(self.adapters)}@1"
        else:
            a, b = rng.sample(self.adapters, 2)
            model = f"{a}:0.5+{b}:0.5"
        return {"model": model, "prompt": rng.choice(self.texts), "max_tokens": self.max_tokens}

    async def _one(self, client: httpx.AsyncClient, kind: str, rng: random.Random) -> Result:
        if kind == "feedback":
            if not self.answered:
                kind = "routed"
            else:
                rid = rng.choice(self.answered[-200:])
                path, body = "/v1/feedback", {"request_id": rid, "kind": "thumbs", "value": 1}
        if kind != "feedback":
            path, body = "/v1/completions", self._body(kind, rng)
        sent = time.monotonic()
        failed = 0
        while True:
            try:
                r = await client.post(path, json=body)
                if r.status_code not in RETRY_STATUS:
                    break
                error, status = r.text[:160], r.status_code
            except httpx.HTTPError as exc:
                error, status = type(exc).__name__, 0
            left = self.timeout_s - (time.monotonic() - sent)
            if failed >= self.retries or left < 1.0:
                return Result(kind, sent, time.monotonic(), status, error=error,
                              failed_attempts=failed + 1)  # fmt: skip
            failed += 1
            await asyncio.sleep(min(0.5 * failed, left / 2))
        res = Result(kind, sent, time.monotonic(), r.status_code, failed_attempts=failed)
        if kind != "feedback":
            res.request_id = r.headers.get("x-qlp-request-id")
            if r.status_code == 200:
                self.answered.append(r.json()["qlp"]["request_id"])
        if r.status_code != 200:
            res.error = r.text[:160]
        return res

    async def worker(self, i: int) -> None:
        rng = random.Random(i)
        kinds, weights = zip(*MIX, strict=True)
        headers = {"authorization": f"Bearer {API_KEY}"}
        async with httpx.AsyncClient(base_url=URL, headers=headers, timeout=self.timeout_s) as c:
            while not self.stop.is_set():
                self.results.append(await self._one(c, rng.choices(kinds, weights)[0], rng))


def warm_up(adapters: list[str]) -> None:
    """One routed, pinned and stacked request each must answer 200 before the load starts."""
    headers = {"authorization": f"Bearer {API_KEY}"}
    for model in ("auto", f"{adapters[0]}@1", f"{adapters[0]}:0.5+{adapters[1]}:0.5"):
        body = {"model": model, "prompt": "Write a SQL join", "max_tokens": 4}
        r = httpx.post(URL + "/v1/completions", json=body, headers=headers, timeout=120)
        if r.status_code != 200:
            raise RuntimeError(f"warm-up {model!r}: HTTP {r.status_code} {r.text[:200]}")


def replicas(deployment: str) -> list[int]:
    """PIDs of the ALIVE Serve replica actors of ``deployment`` in this app."""
    import ray
    from ray.util.state import list_actors

    name = f"ServeReplica:{APP}:{deployment}"
    address = ray.get_runtime_context().gcs_address  # other Ray instances may run here too
    actors = list_actors(address=address,
                         filters=[("class_name", "=", name), ("state", "=", "ALIVE")])  # fmt: skip
    return [a.pid for a in actors if a.pid]


def all_replica_pids() -> dict[str, list[int]]:
    return {d: replicas(d) for d in ("Gateway", "Router", "Compositor")}


@dataclass
class Kill:
    deployment: str
    pid: int
    at: float
    expected: int
    replaced_at: float | None = None


def kill_one(deployment: str) -> Kill:
    pids = replicas(deployment)
    if not pids:
        raise RuntimeError(f"no ALIVE {deployment} replica to kill")
    pid = pids[0]
    kill = Kill(deployment, pid, time.monotonic(), len(pids))
    os.kill(pid, signal.SIGKILL)

    def watch() -> None:  # until Serve runs `expected` replicas again, none the dead one
        while time.monotonic() - kill.at < 300:
            now = replicas(deployment)
            if len(now) >= kill.expected and pid not in now:
                kill.replaced_at = time.monotonic()
                return
            time.sleep(0.5)

    threading.Thread(target=watch, daemon=True).start()
    return kill


def recovery(load: Load, kill: Kill, until: float) -> dict[str, float | int | None]:
    after = [r for r in load.results if kill.at <= r.sent < until]
    # the first success of a request that needs the killed deployment
    needs = {"Router": ("routed",), "Compositor": ("routed", "pinned", "stacked")}.get(
        kill.deployment, tuple(k for k, _ in MIX)
    )
    ok = [r.done for r in after if r.ok and r.kind in needs]
    lat = [r.done - r.sent for r in load.results if r.done >= kill.at and r.sent < until]
    failed = [r for r in after if not r.ok]
    return {
        "first_ok_s": (min(ok) - kill.at) if ok else None,
        "last_fail_s": (max(r.sent for r in failed) - kill.at) if failed else 0.0,
        "replaced_s": (kill.replaced_at - kill.at) if kill.replaced_at else None,
        "max_latency_s": max(lat, default=0.0),
        "failed": len(failed),
        "sent": len(after),
        "retried": sum(r.failed_attempts > 0 for r in after),
        "failed_attempts": sum(r.failed_attempts for r in after),
    }


async def chaos_phase(load: Load, duration_s: float, concurrency: int) -> list[Kill]:
    t0 = time.monotonic()
    tasks = [asyncio.create_task(load.worker(i)) for i in range(concurrency)]
    await asyncio.sleep(0.2 * duration_s)
    kills = [await asyncio.to_thread(kill_one, "Compositor")]
    for deployment, share in (("Router", 0.45), ("Gateway", 0.7)):
        latest = t0 + share * duration_s
        while time.monotonic() < latest:  # the load succeeds again and Serve replaced it
            k = kills[-1]
            back = [r for r in load.results if r.sent > k.at and r.ok]
            if back and k.replaced_at is not None:
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(min(5.0, max(0.0, latest - time.monotonic())))
        kills.append(await asyncio.to_thread(kill_one, deployment))
    await asyncio.sleep(max(0.0, t0 + duration_s - time.monotonic()))
    load.stop.set()
    await asyncio.gather(*tasks)
    return kills


async def steady_phase(load: Load, duration_s: float, concurrency: int) -> None:
    load.stop.clear()
    tasks = [asyncio.create_task(load.worker(100 + i)) for i in range(concurrency)]
    await asyncio.sleep(duration_s)
    load.stop.set()
    await asyncio.gather(*tasks)


def rss_mib(pids: dict[str, list[int]]) -> dict[tuple[str, int], float]:
    import psutil

    out = {}
    for dep, ps in pids.items():
        for pid in ps:
            try:
                out[(dep, pid)] = psutil.Process(pid).memory_info().rss / 2**20
            except psutil.NoSuchProcess:
                pass
    return out


def lost_rows(cfg, ids: list[str], flush_wait_s: float) -> list[str]:
    from qlp_ray.core.errors import NotFound
    from qlp_ray.store.database import FeedbackStore

    time.sleep(flush_wait_s)  # the background writer's last group commit
    store = FeedbackStore.from_config(cfg, environ={})
    lost = []
    try:
        for rid in ids:
            try:
                store.get_request(rid)
            except NotFound:
                lost.append(rid)
    finally:
        store.close()
    return lost


def summary(label: str, results: list[Result], timeout_s: float) -> None:
    n = len(results)
    ok = sum(r.ok for r in results)
    lat = [r.done - r.sent for r in results]
    print(f"{label}: {n} requests, {ok} ok = {100 * ok / max(n, 1):.2f} % (target >= 99 %); "
          f"{sum(r.failed_attempts > 0 for r in results)} needed a retry, "
          f"{sum(r.failed_attempts for r in results)} attempts failed")  # fmt: skip
    by_kind = {k: [r for r in results if r.kind == k] for k, _ in MIX}
    print("  by kind: " + ", ".join(
        f"{k} {sum(r.ok for r in v)}/{len(v)}" for k, v in by_kind.items()))  # fmt: skip
    hung = sum(x > timeout_s + 1.0 for x in lat)
    print(f"  max latency {max(lat, default=0):.2f} s vs client timeout {timeout_s:.0f} s; "
          f"past timeout + 1 s: {hung}; client timeouts/transport errors: "
          f"{sum(r.status == 0 for r in results)}")  # fmt: skip
    codes: dict[str, int] = {}
    for r in results:
        if not r.ok:
            key = f"{r.status} {r.error[:90]}"
            codes[key] = codes.get(key, 0) + 1
    for key, count in sorted(codes.items(), key=lambda kv: -kv[1])[:6]:
        print(f"  failure x{count}: {key}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration-s", type=float, default=90.0, help="chaos load phase")
    parser.add_argument("--soak-s", type=float, default=0.0, help="steady soak after (0 = none)")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--timeout-s", type=float, default=30.0, help="client timeout")
    parser.add_argument("--flush-wait-s", type=float, default=3.0)
    parser.add_argument(
        "--retries",
        type=int,
        default=3,
        help="retries of a request that got a transport error or 5xx",
    )
    parser.add_argument("--request-log", choices=("durable", "background"), default="durable",
                        help="store.request_log_commit (background: lossy opt-out)")  # fmt: skip
    parser.add_argument("--rss-bound-mib", type=float, default=64.0,
                        help="soak: largest allowed RSS growth of one replica process")  # fmt: skip
    args = parser.parse_args()

    import ray
    from ray import serve

    from qlp_ray.serve.app import deploy

    t_start = time.perf_counter()
    print("load average at start: {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))
    cfg = router_bench_config(HOME)
    cfg = cfg.model_copy(update={"serve": cfg.serve.model_copy(update={
        "port": PORT, "app_name": APP, "api_key": API_KEY, "compositor_replicas": 2,
        "compositor_num_cpus": 0.5, "router_num_cpus": 0.25, "feedback_per_minute": 100000,
    }), "store": cfg.store.model_copy(update={"request_log_commit": args.request_log}),
    })  # fmt: skip
    adapters = build_registry(cfg)
    texts = dev_titles()[:200]
    ray.init(address="local", num_cpus=2, include_dashboard=True, log_to_driver=False)
    load = Load(adapters, texts, args.max_tokens, args.timeout_s, retries=args.retries)
    soak: list[Result] = []
    rss0 = rss1 = {}
    try:
        deploy(cfg, persistent=False)
        warm_up(adapters)
        print(f"deployed in {time.perf_counter() - t_start:.0f} s; replicas {all_replica_pids()}")
        kills = asyncio.run(chaos_phase(load, args.duration_s, args.concurrency))
        chaos = list(load.results)
        deadline = time.monotonic() + 120  # the last kills' replicas back before the soak
        while any(k.replaced_at is None for k in kills) and time.monotonic() < deadline:
            time.sleep(1)
        if args.soak_s > 0:
            pids = all_replica_pids()
            asyncio.run(steady_phase(load, min(10.0, args.soak_s), args.concurrency))  # warm
            rss0 = rss_mib(pids)
            n0 = len(load.results)
            asyncio.run(steady_phase(load, args.soak_s, args.concurrency))
            rss1 = rss_mib(pids)
            soak = load.results[n0:]
    finally:
        serve.shutdown()
        ray.shutdown()
    completions = [r for r in load.results if r.kind != "feedback"]
    chaos_end = max((r.sent for r in chaos), default=0.0) + 1e-6
    ends = [k.at for k in kills[1:]] + [chaos_end]
    rec = [recovery(load, k, end) for k, end in zip(kills, ends, strict=True)]
    lost = lost_rows(cfg, list(load.answered), args.flush_wait_s)

    print(f"\nload + chaos over HTTP on {URL}: {args.concurrency} async clients, "
          f"{args.duration_s:.0f} s, max_tokens={args.max_tokens}, mix "
          + ", ".join(f"{k} {int(w * 100)} %" for k, w in MIX))  # fmt: skip
    summary("chaos phase", chaos, args.timeout_s)
    for k, r in zip(kills, rec, strict=True):
        fmt = lambda v: "never" if v is None else f"{v:.2f} s"  # noqa: E731
        print(f"  kill {k.deployment} pid {k.pid} at +{k.at - min(r.sent for r in chaos):.1f} s: "
              f"first success needing it {fmt(r['first_ok_s'])}, last failure "
              f"{fmt(r['last_fail_s'])}, max latency in flight or after {fmt(r['max_latency_s'])} "
              f"({r['failed']} failed of {r['sent']} sent until the next kill/end, "
              f"{r['retried']} needed a retry), "
              f"new replica running {fmt(r['replaced_s'])}")  # fmt: skip
    print(f"acknowledged rows lost: {len(lost)} of {len(load.answered)} answered completions "
          "(chaos + soak) "
          f"(target 0; store.request_log_commit={cfg.store.request_log_commit})"
          + (f" LOST: {lost[:5]}" if lost else ""))  # fmt: skip
    print(f"completions with a request id: {sum(r.request_id is not None for r in completions)}"
          f" of {len(completions)}")  # fmt: skip
    if soak:
        summary(f"soak phase ({args.soak_s:.0f} s, no kills)", soak, args.timeout_s)
        worst = 0.0
        for key in sorted(rss0):
            if key in rss1:
                growth = rss1[key] - rss0[key]
                worst = max(worst, growth)
                print(f"  RSS {key[0]} pid {key[1]}: {rss0[key]:.0f} -> {rss1[key]:.0f} MiB "
                      f"({growth:+.1f} MiB)")  # fmt: skip
        print(f"  worst RSS growth {worst:+.1f} MiB vs bound {args.rss_bound_mib:.0f} MiB: "
              f"{'ok' if worst <= args.rss_bound_mib else 'MISSED'}")  # fmt: skip
    print("load average at end: {:.1f} {:.1f} {:.1f}".format(*os.getloadavg()))
    print(f"(total {time.perf_counter() - t_start:.0f} s)")


if __name__ == "__main__":
    main()
