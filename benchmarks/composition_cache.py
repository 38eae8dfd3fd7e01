"""Composition cache: latency of a request on a cached stack vs on a cold (uncached) stack.

Measured in-process on the compositor's own code path (``StackComposer`` on the shared
``TransformersBackend``, no HTTP): a *cold* request verifies every member through the
signed registry, loads it, composes with PEFT ``add_weighted_adapter`` and generates; a
*cached* request finds the composed adapter in the LRU+TTL cache and only generates.
Cold and cached requests alternate (same prompts, same load). Each cold request uses a
stack never seen before (new weights), so it really composes. Target: cached p50 ≤ 0.1×
cold p50.

    QLP_HOME=/tmp/qlp_compose3_bench python benchmarks/composition_cache.py [--n 30]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _compositor_setup import PROMPTS, bench_config, percentile, register_adapters  # noqa: E402


def run(n: int, max_tokens: int, combinations: list[str]) -> list[dict[str, float]]:
    from qlp_ray.models.backend import GenerationRequest
    from qlp_ray.models.base import base_model_id, load_base
    from qlp_ray.models.composition import parse_stack
    from qlp_ray.models.hf_backend import TransformersBackend
    from qlp_ray.serve.composition import StackComposer

    cfg = bench_config()
    base, tokenizer = load_base(cfg)
    ids = ["dataeng", "devops", "api"]
    registry = register_adapters(cfg, base, ids)
    backend = TransformersBackend(base, tokenizer)
    base_id = base_model_id(cfg)

    def resolve(adapter_id: str, version: int | None) -> Path:
        return registry.verified_path(adapter_id, version, expected_base_model=base_id)

    rows = []
    for combination in combinations:
        composer = StackComposer(backend, resolve, combination=combination, cache_size=4 * n)
        hot = parse_stack("dataeng@1:0.6+devops@1:0.3+api@1:0.1")
        composer.generate(hot, GenerationRequest(PROMPTS[0], max_tokens))  # warm code paths
        cold_ms, cached_ms, compose_ms, lookup_us = [], [], [], []
        for i in range(n):
            request = GenerationRequest(PROMPTS[i % len(PROMPTS)], max_tokens)
            w = 0.5 + i / (4 * n)  # a stack never composed before
            stack = parse_stack(f"dataeng@1:{w:.5f}+devops@1:{1 - w:.5f}+api@1:0.2")
            before = composer.compose_ms_total
            t0 = time.perf_counter()
            composer.generate(stack, request)
            cold_ms.append((time.perf_counter() - t0) * 1000)
            compose_ms.append(composer.compose_ms_total - before)
            t0 = time.perf_counter()
            composer.generate(hot, request)
            cached_ms.append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            composer.get(hot)  # the cache hit alone, without generation
            lookup_us.append((time.perf_counter() - t0) * 1e6)
        stats = composer.stats()
        assert stats["compositions"] == n + 1, stats  # every cold request composed
        rows.append(
            {
                "combination": combination,
                "cold_p50": percentile(cold_ms, 50),
                "cold_p95": percentile(cold_ms, 95),
                "compose_p50": percentile(compose_ms, 50),
                "cached_p50": percentile(cached_ms, 50),
                "cached_p95": percentile(cached_ms, 95),
                "lookup_us": percentile(lookup_us, 50),
                "hit_ratio": float(stats["hit_ratio"]),
            }
        )
        composer.cache.clear()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=40, help="cold/cached request pairs")
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--combinations", default="linear,cat", help="also: svd, ties")
    args = parser.parse_args()
    t0 = time.perf_counter()
    rows = run(args.n, args.max_tokens, args.combinations.split(","))
    print(
        f"composition cache, in-process, 3-adapter stacks (rank 8, q/k/v/o), "
        f"{args.n} cold + {args.n} cached requests each, max_tokens={args.max_tokens}"
    )
    print(
        f"{'combination':<12}{'cold p50':>10}{'(compose)':>11}{'cold p95':>10}"
        f"{'cached p50':>12}{'cached p95':>12}{'hit only':>10}{'ratio':>8}  target"
    )
    for r in rows:
        ratio = r["cached_p50"] / r["cold_p50"]
        print(
            f"{r['combination']:<12}{r['cold_p50']:>8.1f}ms{r['compose_p50']:>9.1f}ms"
            f"{r['cold_p95']:>8.1f}ms{r['cached_p50']:>10.1f}ms{r['cached_p95']:>10.1f}ms"
            f"{r['lookup_us']:>8.0f}us"
            f"{ratio:>8.3f}  <= 0.1 {'ok' if ratio <= 0.1 else 'MISSED'}"
        )
    print(
        "ratio = cached p50 / cold p50 (request latency, generation included in both); "
        "'hit only' = the cache lookup itself, without generation"
    )
    print(f"(total {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
