"""Router added latency over HTTP: ``model=auto`` vs a direct adapter request, same load.

Deploys the whole app twice on local Ray (2 CPUs), port 8200: ``router.placement:
deployment`` (gateway → Router deployment → compositor) at ``/`` and ``placement: gateway``
(the gateway routes in its own process) at ``/gw``, with five signed adapters whose
centroids come from the bundled domain samples. Requests
are the distinct issue titles of ``dev.jsonl``, sent in interleaved pairs: a routed
request and a direct request to the adapter the router picks (the base model on fallback)
on the same app, so generation work is identical and the difference is the router's cost;
the two apps take turns per title so both see the same load. A first pass routes every
title, so the pair's order alternates per title: the first request of a pair may find the
compositor's previous request on another adapter, the second never does, and routed and
direct requests each come first in half the pairs (always sending the routed one first
would charge it that switch). ``gateway-internal`` is the same difference measured inside
the gateway (``qlp.latency_ms``), without the HTTP proxy.

Besides the HTTP figures it breaks the routed path down, on the router's own handle:
``in-router`` is embedding + decision inside the replica (the ``route_ms`` it reports),
``handle call`` is the whole gateway-side call, so their difference is the hop.

    QLP_HOME=/tmp/qlp_routerperf PYTHONPATH=. python benchmarks/router_latency.py \\
        [--n 150] [--max-tokens 4] [--backend openvino|torch] [--precision auto|f32|bf16]

Target (issue 3): router added latency p50 <= 5 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _compositor_setup import percentile  # noqa: E402
from _router_setup import (  # noqa: E402
    add_encoder_args,
    build_registry,
    dev_titles,
    encoder_label,
    router_bench_config,
)

TARGET_MS = 5.0


def _pairs(urls: dict[str, str], texts: list[str], max_tokens: int) -> dict[str, dict]:
    """Per app: routed and direct latencies, the apps and the pairs interleaved per text."""
    client = httpx.Client(timeout=120)
    first = next(iter(urls.values()))
    models = client.get(f"{first}/v1/models").json()["data"]
    base_id = next(m["id"] for m in models if m["kind"] == "base")

    def send(url: str, model: str, prompt: str) -> tuple[float, dict]:
        body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
        t0 = time.perf_counter()
        r = client.post(f"{url}/v1/completions", json=body)
        ms = (time.perf_counter() - t0) * 1000
        r.raise_for_status()
        return ms, r.json()

    for url in urls.values():  # warm-up: adapter loads, code paths
        for prompt in texts[:10]:
            _, body = send(url, "auto", prompt)
            send(url, body["qlp"]["adapter"] or base_id, prompt)
    targets = {  # decisions are deterministic: the first pass tells each pair's target
        name: [send(url, "auto", prompt)[1]["qlp"]["adapter"] or base_id for prompt in texts]
        for name, url in urls.items()
    }
    keys = ("routed", "direct", "routed_in", "direct_in")
    out = {name: {key: [] for key in keys} for name in urls}
    for i, prompt in enumerate(texts):
        for name, url in urls.items():
            target = targets[name][i]
            if i % 2:  # direct first: it may find the compositor on another adapter
                ms_direct, direct = send(url, target, prompt)
                ms_routed, routed = send(url, "auto", prompt)
            else:
                ms_routed, routed = send(url, "auto", prompt)
                ms_direct, direct = send(url, target, prompt)
            if (routed["qlp"]["adapter"] or base_id) != target:
                raise RuntimeError(f"{name}: {prompt!r} routed differently on the second pass")
            row = (ms_routed, ms_direct, routed["qlp"]["latency_ms"], direct["qlp"]["latency_ms"])
            for key, value in zip(keys, row, strict=True):
                out[name][key].append(value)
    for name in urls:
        out[name]["targets"] = targets[name]
    client.close()
    return out


async def _handle_breakdown(app_name: str, texts: list[str]) -> dict[str, float]:
    """One handle call at a time, from an event loop as a gateway replica calls."""
    from ray import serve

    handle = serve.get_deployment_handle("Router", app_name=app_name)
    total, inside = [], []
    for text in texts:
        t0 = time.perf_counter()
        d = await handle.route.remote(text)
        total.append((time.perf_counter() - t0) * 1000)
        inside.append(d["route_ms"])
    return {"handle_p50": percentile(total, 50), "inside_p50": percentile(inside, 50)}


def run(n: int, max_tokens: int, backend: str, precision: str, home: Path) -> dict:
    import ray
    from ray import serve

    from qlp_ray.serve.app import build_app, deploy, wait_healthy

    cfg = router_bench_config(
        home, {"embedding_backend": backend, "embedding_precision": precision}
    )
    cfg_gw = router_bench_config(
        home,
        {"embedding_backend": backend, "embedding_precision": precision, "placement": "gateway"},
    )
    build_registry(cfg)
    titles = dev_titles()
    texts = [titles[(10 + i) % len(titles)] for i in range(n)]
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    # the handle is bound to this loop (Serve's same-loop handle router in throughput
    # mode): it stays open until Serve has shut down and released the handle
    loop = asyncio.new_event_loop()
    try:
        url = deploy(cfg, persistent=False)  # placement: deployment, app "qlp" at /
        serve.run(build_app(cfg_gw), name="qlp_gw", route_prefix="/gw")
        wait_healthy(f"{url}/gw", 300)
        pairs = _pairs({"deployment": url, "gateway": f"{url}/gw"}, texts, max_tokens)
        breakdown = loop.run_until_complete(_handle_breakdown(cfg.serve.app_name, texts))
    finally:
        serve.shutdown()
        ray.shutdown()
        loop.close()
    result: dict = {"n": n, "distinct": len(set(texts)), **breakdown}
    for name, p in pairs.items():
        routed, direct = p["routed"], p["direct"]
        result[name] = {
            "targets": len(set(p["targets"])),
            "routed_p50": percentile(routed, 50),
            "routed_p95": percentile(routed, 95),
            "direct_p50": percentile(direct, 50),
            "direct_p95": percentile(direct, 95),
            "pair_median": statistics.median(r - d for r, d in zip(routed, direct, strict=True)),
            "internal_added_p50": percentile(p["routed_in"], 50) - percentile(p["direct_in"], 50),
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=150, help="request pairs (routed + direct)")
    parser.add_argument("--max-tokens", type=int, default=4)
    add_encoder_args(parser)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    home = Path(os.environ.get("QLP_HOME", "/tmp/qlp_routerperf"))

    s = run(args.n, args.max_tokens, args.backend, args.precision, home)
    load = os.getloadavg()
    print(f"router latency: {s['n']} titles x (routed + direct) HTTP requests per placement, "
          f"all interleaved, {s['distinct']} distinct dev.jsonl titles, max_tokens="
          f"{args.max_tokens}, encoder {encoder_label(args.backend, args.precision)}, "
          f"load average {load[0]:.2f}")  # fmt: skip
    print(f"{'placement':12}{'direct p50':>11}{'routed p50':>11}{'added p50':>10}"
          f"{'direct p95':>11}{'routed p95':>11}{'added p95':>10}{'pair median':>12}")  # fmt: skip
    verdicts = []
    for name in ("deployment", "gateway"):
        r = s[name]
        added_p50 = r["routed_p50"] - r["direct_p50"]
        added_p95 = r["routed_p95"] - r["direct_p95"]
        verdicts.append(f"{name} {'meets' if added_p50 <= TARGET_MS else 'MISSES'}")
        print(f"{name:12}{r['direct_p50']:11.1f}{r['routed_p50']:11.1f}{added_p50:+10.1f}"
              f"{r['direct_p95']:11.1f}{r['routed_p95']:11.1f}{added_p95:+10.1f}"
              f"{r['pair_median']:+12.1f}")  # fmt: skip
        print(f"{'':12}ratio routed/direct: p50 {r['routed_p50'] / r['direct_p50']:.2f}x, "
              f"p95 {r['routed_p95'] / r['direct_p95']:.2f}x; gateway-internal added p50 "
              f"{r['internal_added_p50']:+.1f} ms")  # fmt: skip
    hop = s["handle_p50"] - s["inside_p50"]
    print(f"deployment breakdown p50: in-router (embed + decide) {s['inside_p50']:.2f} ms, "
          f"handle call {s['handle_p50']:.2f} ms (hop {hop:.2f} ms)")  # fmt: skip
    print(f"target added p50 <= {TARGET_MS:.0f} ms: " + ", ".join(verdicts))
    if s["inside_p50"] >= TARGET_MS:  # no placement can beat its own embedding
        floor = s["inside_p50"]
        print(f"floor: embedding + decision alone take {floor:.2f} ms p50 here "
              f"({floor / TARGET_MS:.2f}x the target) with requests one at a time")  # fmt: skip


if __name__ == "__main__":
    main()
