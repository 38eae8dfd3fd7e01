"""Router overhead: p50/p95 latency of routed (``model=auto``) vs direct-adapter requests.

Deploys the app (or uses ``--url``), then sends the same prompts both ways, interleaved
one after the other so both see the same load: each routed request is followed by a
direct request to the adapter the router picked (the base model id on fallback), so the
generation work is identical and the difference is the router's added latency.

    python benchmarks/serve_latency.py --n 100 [--config my.yaml] [--url http://127.0.0.1:8000]
"""

from __future__ import annotations

import argparse
import statistics
import time

import httpx
import numpy as np

DEFAULT_PROMPTS = [
    "Write a SQL query that joins orders and customers and sums revenue per month.",
    "Design an Airflow DAG that loads Parquet files from S3 into the warehouse.",
    "Write a Kubernetes deployment with liveness and readiness probes.",
    "Set up a CI pipeline that builds and pushes a Docker image on every tag.",
    "Design a REST endpoint for paginated search with proper status codes.",
    "How should an API version its JSON responses without breaking clients?",
    "Write a React component that renders a sortable table with hooks.",
    "Center a div horizontally and vertically with CSS flexbox.",
    "Train a logistic regression with scikit-learn and report cross-validated AUC.",
    "How do I avoid overfitting when fine-tuning a transformer on a small dataset?",
]


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q))


def run(url: str, n: int, max_tokens: int, api_key: str | None) -> dict[str, float]:
    headers = {"authorization": f"Bearer {api_key}"} if api_key else {}
    client = httpx.Client(base_url=url, headers=headers, timeout=120)
    base_id = next(m["id"] for m in client.get("/v1/models").json()["data"] if m["kind"] == "base")

    def send(model: str, prompt: str) -> tuple[float, dict]:
        body = {"model": model, "prompt": prompt, "max_tokens": max_tokens}
        t0 = time.perf_counter()
        r = client.post("/v1/completions", json=body)
        ms = (time.perf_counter() - t0) * 1000
        r.raise_for_status()
        return ms, r.json()

    for prompt in DEFAULT_PROMPTS:  # warm-up: embedder, adapter loads, code paths
        _, body = send("auto", prompt)
        send(body["qlp"]["adapter"] or base_id, prompt)
    routed, direct, adapters = [], [], []
    for i in range(n):
        prompt = DEFAULT_PROMPTS[i % len(DEFAULT_PROMPTS)]
        ms_routed, body = send("auto", prompt)
        target = body["qlp"]["adapter"] or base_id
        ms_direct, _ = send(target, prompt)
        routed.append(ms_routed)
        direct.append(ms_direct)
        adapters.append(target)
    client.close()
    return {
        "n": n,
        "targets": len(set(adapters)),
        "routed_p50": _pct(routed, 50),
        "routed_p95": _pct(routed, 95),
        "direct_p50": _pct(direct, 50),
        "direct_p95": _pct(direct, 95),
        "added_mean_ms": statistics.fmean(r - d for r, d in zip(routed, direct, strict=True)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100, help="request pairs to send")
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--config", default=None, help="qlp YAML config (registry, model, port)")
    parser.add_argument("--url", default=None, help="use a running app instead of deploying")
    args = parser.parse_args()

    from qlp_ray.core.config import load_config

    cfg = load_config(args.config)
    url = args.url
    deployed = False
    if url is None:
        from qlp_ray.serve.app import deploy

        url = deploy(cfg, persistent=False)
        deployed = True
    try:
        s = run(url, args.n, args.max_tokens, cfg.serve.api_key)
    finally:
        if deployed:
            from ray import serve

            serve.shutdown()
    added_p50 = s["routed_p50"] - s["direct_p50"]
    added_p95 = s["routed_p95"] - s["direct_p95"]
    print(f"serve latency, {s['n']} routed + {s['n']} direct requests, interleaved, "
          f"max_tokens={args.max_tokens}, {s['targets']} distinct targets")  # fmt: skip
    print(f"{'':10}{'p50 ms':>10}{'p95 ms':>10}")
    print(f"{'direct':10}{s['direct_p50']:10.1f}{s['direct_p95']:10.1f}")
    print(f"{'routed':10}{s['routed_p50']:10.1f}{s['routed_p95']:10.1f}")
    print(f"router added latency: p50 {added_p50:+.1f} ms, p95 {added_p95:+.1f} ms, "
          f"mean per pair {s['added_mean_ms']:+.1f} ms")  # fmt: skip
    print(f"ratio routed/direct: p50 {s['routed_p50'] / s['direct_p50']:.2f}x, "
          f"p95 {s['routed_p95'] / s['direct_p95']:.2f}x")  # fmt: skip


if __name__ == "__main__":
    main()
