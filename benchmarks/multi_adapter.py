"""Multi-adapter throughput: 50 distinct adapters vs one adapter vs a naive per-request load.

Measured in-process at the backend level (no HTTP, no Serve): the compositor's shared
``TransformersBackend`` holds all adapters on one ``PeftModel`` (each verified through
the signed registry once, when loaded — the load time is reported separately; the
Serve LRU, ``serve.max_adapters_per_replica``, must be ≥ 50 for this to hold over HTTP).

* **50 adapters**: request *i* uses adapter *i* mod 50.
* **1 adapter**: every request uses the same adapter.
* **naive**: every request loads its adapter with ``PeftModel.from_pretrained`` onto the
  base model, generates, and ``unload()``s it again (the same 50 adapters, round robin).
* **naive + verify**: the same, plus the registry's signature check that this platform
  requires before any load.

Same prompts, same greedy generation settings, one request at a time; the four kinds are
interleaved in rounds so they see the same machine load. Targets: 50 adapters ≥ 0.8× one
adapter, ≥ 10× naive.

    QLP_HOME=/tmp/qlp_compose3_bench python benchmarks/multi_adapter.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _compositor_setup import (  # noqa: E402
    PROMPTS,
    bench_config,
    percentile,
    register_adapters,
)

N_ADAPTERS = 50


def run(rounds: int, per_round: int, naive_per_round: int, max_tokens: int) -> dict[str, float]:
    import torch
    from peft import PeftModel

    from qlp_ray.models.backend import GenerationRequest
    from qlp_ray.models.base import base_model_id, load_base
    from qlp_ray.models.hf_backend import TransformersBackend

    cfg = bench_config()
    base, tokenizer = load_base(cfg)
    naive_base = copy.deepcopy(base)
    ids = [f"bench{i:02d}" for i in range(N_ADAPTERS)]
    t0 = time.perf_counter()
    registry = register_adapters(cfg, base, ids)
    register_s = time.perf_counter() - t0
    base_id = base_model_id(cfg)

    backend = TransformersBackend(base, tokenizer)
    t0 = time.perf_counter()
    for adapter_id in ids:
        path = registry.verified_path(adapter_id, expected_base_model=base_id)
        backend.load_adapter(adapter_id, str(path))
    load_all_s = time.perf_counter() - t0
    paths = {a: registry.get(a).path for a in ids}

    def request(i: int) -> GenerationRequest:
        return GenerationRequest(PROMPTS[i % len(PROMPTS)], max_new_tokens=max_tokens)

    load_ms: list[float] = []

    def naive(i: int, verify: bool) -> None:
        adapter_id = ids[i % N_ADAPTERS]
        if verify:
            path = registry.verified_path(adapter_id, expected_base_model=base_id)
        else:
            path = paths[adapter_id]
        t_load = time.perf_counter()
        model = PeftModel.from_pretrained(naive_base, str(path))
        load_ms.append((time.perf_counter() - t_load) * 1000)
        enc = tokenizer(request(i).prompt, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(
                **enc,
                max_new_tokens=max_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        tokenizer.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        model.unload()  # restores naive_base for the next request

    for i in range(3):  # warm-up of every code path
        backend.generate(request(i), ids[i])
        naive(i, verify=False)
    spent = {"multi": 0.0, "single": 0.0, "naive": 0.0, "naive_verify": 0.0}
    count = dict.fromkeys(spent, 0)
    latencies: dict[str, list[float]] = {k: [] for k in spent}
    i = 0
    for _ in range(rounds):
        for kind in spent:
            n = per_round if kind in ("multi", "single") else naive_per_round
            for _ in range(n):
                t0 = time.perf_counter()
                if kind == "multi":
                    backend.generate(request(i), ids[i % N_ADAPTERS])
                elif kind == "single":
                    backend.generate(request(i), ids[0])
                else:
                    naive(i, verify=kind == "naive_verify")
                i += 1
                ms = (time.perf_counter() - t0) * 1000
                spent[kind] += ms / 1000
                latencies[kind].append(ms)
                count[kind] += 1
    rps = {k: count[k] / spent[k] for k in spent}
    p50 = {k: percentile(v, 50) for k, v in latencies.items()}
    return {
        "register_s": register_s,
        "load_all_s": load_all_s,
        "count": count,
        "p50": p50,
        "naive_load_p50": percentile(load_ms, 50),
        **rps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--per-round", type=int, default=5, help="requests per round, ours")
    parser.add_argument("--naive-per-round", type=int, default=2)
    parser.add_argument("--max-tokens", type=int, default=8)
    args = parser.parse_args()
    t0 = time.perf_counter()
    r = run(args.rounds, args.per_round, args.naive_per_round, args.max_tokens)
    c = r["count"]
    print(
        f"multi-adapter throughput, in-process backend, {N_ADAPTERS} signed rank-8 adapters "
        f"(q/k/v/o), max_tokens={args.max_tokens}, sequential requests"
    )
    print(
        f"setup: registered+signed {N_ADAPTERS} in {r['register_s']:.1f} s, "
        f"verified+loaded all {N_ADAPTERS} in {r['load_all_s']:.1f} s"
    )
    print(f"{'workload':<38}{'requests':>9}{'req/s':>9}{'p50 ms':>9}")
    rows = [
        (f"{N_ADAPTERS} adapters (shared PeftModel)", "multi"),
        ("1 adapter (shared PeftModel)", "single"),
        ("naive: from_pretrained per request", "naive"),
        ("naive + signature check per request", "naive_verify"),
    ]
    for label, key in rows:
        print(f"{label:<38}{c[key]:>9}{r[key]:>9.2f}{r['p50'][key]:>9.1f}")
    vs_single = r["multi"] / r["single"]
    vs_naive = r["multi"] / r["naive"]
    vs_naive_verify = r["multi"] / r["naive_verify"]
    print(
        f"50 adapters / 1 adapter      = {vs_single:.2f}x  (target >= 0.8x) "
        f"{'ok' if vs_single >= 0.8 else 'MISSED'}"
    )
    print(
        f"50 adapters / naive          = {vs_naive:.2f}x  (target >= 10x) "
        f"{'ok' if vs_naive >= 10 else 'MISSED'}"
    )
    print(f"50 adapters / naive + verify = {vs_naive_verify:.2f}x")
    print(
        f"naive per-request PeftModel.from_pretrained p50 = {r['naive_load_p50']:.1f} ms "
        f"(vs {r['p50']['multi']:.1f} ms for a whole request on the shared model)"
    )
    print(f"(total {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
