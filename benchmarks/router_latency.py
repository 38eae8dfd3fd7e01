"""Router added latency over HTTP: ``model=auto`` vs a direct adapter request, same load.

Deploys the whole app (gateway → router → compositor) on local Ray (2 CPUs), port 8200,
with five signed adapters whose centroids come from the bundled domain samples. Requests
are the distinct issue titles of ``dev.jsonl``, sent in interleaved pairs: each routed
request is followed by a direct request to the adapter the router picked (the base model
on fallback), so generation work is identical and the difference is the router's cost.

Besides the HTTP figures it breaks the routed path down, on the router's own handle:
``in-router`` is embedding + decision inside the replica (the ``route_ms`` it reports),
``handle call`` is the whole gateway-side call, so their difference is the hop.

    QLP_HOME=/tmp/qlp_routerperf PYTHONPATH=. python benchmarks/router_latency.py \\
        [--n 150] [--max-tokens 4] [--backend openvino|torch]

Target (issue 3): router added latency p50 <= 5 ms.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _compositor_setup import percentile  # noqa: E402
from _router_setup import build_registry, dev_titles, router_bench_config  # noqa: E402

TARGET_MS = 5.0


def _pairs(url: str, texts: list[str], max_tokens: int) -> dict[str, list[float]]:
    client = httpx.Client(base_url=url, timeout=120)
    base_id = next(m["id"] for m in client.get("/v1/models").json()["data"] if m["kind"] == "base")

    def send(model: str, prompt: str) -> tuple[float, dict]:
        body = {"model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
        t0 = time.perf_counter()
        r = client.post("/v1/completions", json=body)
        ms = (time.perf_counter() - t0) * 1000
        r.raise_for_status()
        return ms, r.json()

    for prompt in texts[:10]:  # warm-up: adapter loads, code paths
        _, body = send("auto", prompt)
        send(body["qlp"]["adapter"] or base_id, prompt)
    out: dict[str, list] = {"routed": [], "direct": [], "targets": []}
    for prompt in texts:
        ms_routed, body = send("auto", prompt)
        target = body["qlp"]["adapter"] or base_id
        ms_direct, _ = send(target, prompt)
        out["routed"].append(ms_routed)
        out["direct"].append(ms_direct)
        out["targets"].append(target)
    client.close()
    return out


def _handle_breakdown(app_name: str, texts: list[str]) -> dict[str, float]:
    from ray import serve

    handle = serve.get_deployment_handle("Router", app_name=app_name)
    total, inside = [], []
    for text in texts:
        t0 = time.perf_counter()
        d = handle.route.remote(text).result(timeout_s=60)
        total.append((time.perf_counter() - t0) * 1000)
        inside.append(d["route_ms"])
    return {"handle_p50": percentile(total, 50), "inside_p50": percentile(inside, 50)}


def run(n: int, max_tokens: int, backend: str, home: Path) -> dict:
    import ray
    from ray import serve

    from qlp_ray.serve.app import deploy

    cfg = router_bench_config(home, {"embedding_backend": backend})
    build_registry(cfg)
    titles = dev_titles()
    texts = [titles[(10 + i) % len(titles)] for i in range(n)]
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        url = deploy(cfg, persistent=False)
        pairs = _pairs(url, texts, max_tokens)
        breakdown = _handle_breakdown(cfg.serve.app_name, texts)
    finally:
        serve.shutdown()
        ray.shutdown()
    routed, direct = pairs["routed"], pairs["direct"]
    return {
        "n": n,
        "distinct": len(set(texts)),
        "targets": len(set(pairs["targets"])),
        "routed_p50": percentile(routed, 50),
        "routed_p95": percentile(routed, 95),
        "direct_p50": percentile(direct, 50),
        "direct_p95": percentile(direct, 95),
        "pair_median": statistics.median(r - d for r, d in zip(routed, direct, strict=True)),
        **breakdown,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=150, help="request pairs (routed + direct)")
    parser.add_argument("--max-tokens", type=int, default=4)
    parser.add_argument("--backend", choices=("openvino", "torch"), default="openvino")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    home = Path(os.environ.get("QLP_HOME", "/tmp/qlp_routerperf"))

    s = run(args.n, args.max_tokens, args.backend, home)
    load = os.getloadavg()
    added_p50 = s["routed_p50"] - s["direct_p50"]
    added_p95 = s["routed_p95"] - s["direct_p95"]
    print(f"router latency: {s['n']} routed + {s['n']} direct HTTP requests, interleaved, "
          f"{s['distinct']} distinct dev.jsonl titles, {s['targets']} targets, "
          f"max_tokens={args.max_tokens}, encoder {args.backend}, "
          f"load average {load[0]:.2f}")  # fmt: skip
    print(f"{'':10}{'p50 ms':>10}{'p95 ms':>10}")
    print(f"{'direct':10}{s['direct_p50']:10.1f}{s['direct_p95']:10.1f}")
    print(f"{'routed':10}{s['routed_p50']:10.1f}{s['routed_p95']:10.1f}")
    print(f"router added latency: p50 {added_p50:+.1f} ms, p95 {added_p95:+.1f} ms, "
          f"median per pair {s['pair_median']:+.1f} ms")  # fmt: skip
    print(f"ratio routed/direct: p50 {s['routed_p50'] / s['direct_p50']:.2f}x, "
          f"p95 {s['routed_p95'] / s['direct_p95']:.2f}x")  # fmt: skip
    hop = s["handle_p50"] - s["inside_p50"]
    print(f"breakdown p50: in-router (embed + decide) {s['inside_p50']:.2f} ms, "
          f"handle call {s['handle_p50']:.2f} ms (hop {hop:.2f} ms)")  # fmt: skip
    verdict = "meets" if added_p50 <= TARGET_MS else "MISSES"
    print(f"target added p50 <= {TARGET_MS:.0f} ms: {verdict}")


if __name__ == "__main__":
    main()
