"""Multi-adapter throughput: 50 distinct adapters vs one adapter vs a naive per-request load.

Served by the real compositor: a Ray Serve deployment (``Compositor``, one replica,
``serve.max_batch_size`` = C) called through a ``DeploymentHandle`` with the multiplexed
model id, exactly as the gateway calls it. C clients keep C requests in flight; the
replica batches them (requests arriving during a batch form the next one) and generates
each batch in one forward per step, each row with its own adapter
(``TransformersBackend.generate_batch``). All 50
signed adapters are verified and loaded once before measuring (the Serve LRU,
``serve.max_adapters_per_replica``, is set to 64 so none is evicted).

* **50 adapters**: request *i* uses adapter *i* mod 50 (a batch of 16 mixes ~16).
* **1 adapter**: every request uses the same adapter.
* **naive**: per request ``PeftModel.from_pretrained`` of its adapter onto the base model,
  generate, ``unload()`` — one request at a time, in the driver process. A naive server
  cannot batch across adapters: it holds only the one adapter it has just loaded.
* **naive + verify**: the same plus the registry's signature check this platform
  requires before any load.
* **50 adapters, C=1**: the compositor with one request in flight (no batching).

Same prompts, same greedy settings (``max_tokens`` new tokens); the kinds are interleaved
in rounds so they see the same machine load; greedy outputs of the 50-adapter run are
checked against the naive run's for the same (adapter, prompt). Targets: 50 adapters
≥ 0.8× one adapter, ≥ 10× naive.

    QLP_HOME=/tmp/qlp_multi_bench python benchmarks/multi_adapter.py [--rounds 6]
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import os
import sys
import time
from pathlib import Path
from statistics import median

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _compositor_setup import (  # noqa: E402
    PROMPTS,
    bench_config,
    percentile,
    register_adapters,
)

N_ADAPTERS = 50
_handles: dict = {}


async def _closed_loop(send, jobs: list[tuple[str, int]], clients: int):
    """Run ``jobs`` ((model, prompt index)) with ``clients`` in flight through ``send``
    (an async ``(model, prompt) -> text``); texts by job index, seconds, latencies (ms)."""
    queue = list(enumerate(jobs))
    texts: dict[int, str] = {}
    latencies: list[float] = []

    async def client() -> None:
        while queue:
            i, (model, p) = queue.pop(0)
            t0 = time.perf_counter()
            texts[i] = await send(model, PROMPTS[p])
            latencies.append((time.perf_counter() - t0) * 1000)

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return texts, time.perf_counter() - t0, latencies


def _serve_run(handle, jobs: list[tuple[str, int]], clients: int, max_tokens: int):
    """Through the Serve deployment handle, with the multiplexed model id."""

    async def send(model_id: str, prompt: str) -> str:
        if model_id not in _handles:  # one handle per model id, like a long-lived client
            _handles[model_id] = handle.options(multiplexed_model_id=model_id)
        payload = {"prompt": prompt, "max_new_tokens": max_tokens}
        return (await _handles[model_id].generate.remote(payload))["text"]

    return _closed_loop(send, jobs, clients)


def _inproc_run(merger, jobs: list[tuple[str, int]], clients: int, max_tokens: int):
    """The same with the compositor's ``BatchMerger`` over the backend, in this process."""
    from qlp_ray.models.backend import GenerationRequest

    async def send(name: str, prompt: str) -> str:
        [gen] = await merger.submit([(GenerationRequest(prompt, max_new_tokens=max_tokens), name)])
        return gen.text

    return _closed_loop(send, jobs, clients)


def run(args: argparse.Namespace) -> dict:
    import ray
    import torch
    from peft import PeftModel
    from ray import serve

    from qlp_ray.models.base import base_model_id, load_base
    from qlp_ray.models.hf_backend import TransformersBackend
    from qlp_ray.serve.batching import BatchMerger
    from qlp_ray.serve.compositor import compositor_deployment, multiplex_id

    c = args.concurrency
    cfg = bench_config(
        serve={
            "max_adapters_per_replica": 64,
            "max_batch_size": c,
            "compositor_max_ongoing_requests": max(c, 16),
            "compositor_num_cpus": 1,
        }
    )
    # the in-process server and the naive baseline run in this process with the torch
    # threads Ray gives the compositor replica (OMP_NUM_THREADS = its num_cpus = 1)
    torch.set_num_threads(int(cfg.serve.compositor_num_cpus))
    base, tokenizer = load_base(cfg)
    ids = [f"bench{i:02d}" for i in range(N_ADAPTERS)]
    t0 = time.perf_counter()
    registry = register_adapters(cfg, base, ids)
    register_s = time.perf_counter() - t0
    base_id = base_model_id(cfg)
    paths = {a: registry.get(a).path for a in ids}
    mids = [multiplex_id(a, int(registry.get(a).version)) for a in ids]

    backend = TransformersBackend(copy.deepcopy(base), tokenizer)  # the in-process server
    for adapter_id in ids:
        path = registry.verified_path(adapter_id, expected_base_model=base_id)
        backend.load_adapter(adapter_id, str(path))
    merger = BatchMerger(backend.generate_batch, c)

    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        app = compositor_deployment(cfg).bind(cfg.model_dump(mode="json"))
        handle = serve.run(app, name="multi_adapter_bench", route_prefix=None)
        loop = asyncio.new_event_loop()
        t0 = time.perf_counter()  # verify + load all 50 (one request each)
        loop.run_until_complete(_serve_run(handle, [(m, 0) for m in mids], c, 1))
        load_all_s = time.perf_counter() - t0

        load_ms: list[float] = []
        naive_texts: dict[tuple[int, int], str] = {}

        def naive(i: int, verify: bool) -> None:
            a, p = i % N_ADAPTERS, i % len(PROMPTS)
            if verify:
                path = registry.verified_path(ids[a], expected_base_model=base_id)
            else:
                path = paths[ids[a]]
            t_load = time.perf_counter()
            model = PeftModel.from_pretrained(base, str(path))
            load_ms.append((time.perf_counter() - t_load) * 1000)
            enc = tokenizer(PROMPTS[p], return_tensors="pt")
            with torch.inference_mode():
                out = model.generate(
                    **enc,
                    max_new_tokens=args.max_tokens,
                    do_sample=False,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
            new = out[0, enc["input_ids"].shape[1] :].tolist()
            eos = tokenizer.eos_token_id
            new = new[: new.index(eos) + 1] if eos in new else new
            naive_texts[(a, p)] = tokenizer.decode(new, skip_special_tokens=True)
            model.unload()  # restores the base model for the next request

        def serve_kind(kind: str, start: int, n: int):
            inproc = kind.endswith("_inproc")
            names = ids if inproc else mids

            def job(i: int) -> tuple[str, int]:
                one = kind.startswith("single")
                return (names[0] if one else names[i % N_ADAPTERS], i % len(PROMPTS))

            jobs = [job(i) for i in range(start, start + n)]
            clients = 1 if kind == "sequential" else c
            if inproc:
                coro = _inproc_run(merger, jobs, clients, args.max_tokens)
            else:
                coro = _serve_run(handle, jobs, clients, args.max_tokens)
            texts, secs, lat = loop.run_until_complete(coro)
            if kind.startswith("multi"):  # keep (adapter, prompt) -> text to compare
                for k, i in enumerate(range(start, start + n)):
                    served[kind, i % N_ADAPTERS, i % len(PROMPTS)] = texts[k]
            return secs, lat

        served: dict[tuple[str, int, int], str] = {}
        for i in range(3):  # warm-up of every code path
            naive(i, verify=False)
        kinds = ["multi", "single", "multi_inproc", "single_inproc"]
        for kind in kinds:
            serve_kind(kind, 0, 2 * c)
        kinds += ["naive", "naive_verify", "sequential"]
        spent = dict.fromkeys(kinds, 0.0)
        count = dict.fromkeys(kinds, 0)
        latencies: dict[str, list[float]] = {k: [] for k in kinds}
        start = 0
        round_rps: list[dict[str, float]] = []

        def n_of(kind: str) -> int:
            if kind.startswith("naive"):
                return args.naive_per_round
            return args.seq_per_round if kind == "sequential" else args.per_round

        for _ in range(args.rounds):
            round_spent = dict.fromkeys(kinds, 0.0)
            for kind in kinds:
                n = n_of(kind)
                if kind.startswith("naive"):
                    for i in range(start, start + n):
                        t0 = time.perf_counter()
                        naive(i, verify=kind == "naive_verify")
                        ms = (time.perf_counter() - t0) * 1000
                        round_spent[kind] += ms / 1000
                        latencies[kind].append(ms)
                else:
                    secs, lat = serve_kind(kind, start, n)
                    round_spent[kind] += secs
                    latencies[kind].extend(lat)
                count[kind] += n
                spent[kind] += round_spent[kind]
            round_rps.append({k: (n_of(k) / round_spent[k]) for k in kinds})
            start += args.per_round
        stats = handle.cache_stats.remote().result()
    finally:
        serve.shutdown()
        ray.shutdown()
    pairs = [(k, (a, p)) for (k, a, p) in served if (a, p) in naive_texts]
    same = sum(served[(k, *pair)] == naive_texts[pair] for k, pair in pairs)
    return {
        "register_s": register_s,
        "load_all_s": load_all_s,
        "count": count,
        "rps": {k: count[k] / spent[k] for k in kinds},
        "p50": {k: percentile(v, 50) for k, v in latencies.items()},
        "naive_load_p50": percentile(load_ms, 50),
        "same": (same, len(pairs)),
        "batching": stats["batching"],
        "round_rps": round_rps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--concurrency", type=int, default=16, help="requests in flight (C)")
    parser.add_argument("--per-round", type=int, default=32, help="requests per round, batched")
    parser.add_argument("--seq-per-round", type=int, default=4, help="per round, C=1")
    parser.add_argument("--naive-per-round", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=8)
    args = parser.parse_args()
    t0 = time.perf_counter()
    load0 = os.getloadavg()
    r = run(args)
    load1 = os.getloadavg()
    c = r["count"]
    print(
        f"multi-adapter throughput, compositor on Ray Serve (1 replica, "
        f"max_batch_size={args.concurrency}), {N_ADAPTERS} signed rank-8 adapters (q/k/v/o), "
        f"max_tokens={args.max_tokens}, greedy, C={args.concurrency} in flight"
    )
    print(
        f"setup: registered+signed {N_ADAPTERS} in {r['register_s']:.1f} s, "
        f"verified+loaded all {N_ADAPTERS} through the compositor in {r['load_all_s']:.1f} s"
    )
    print(f"{'workload':<50}{'requests':>9}{'req/s':>9}{'p50 ms':>9}")
    cc = args.concurrency
    rows = [
        (f"Serve: {N_ADAPTERS} adapters, C={cc} (batched)", "multi"),
        (f"Serve: 1 adapter, C={cc} (batched)", "single"),
        (f"Serve: {N_ADAPTERS} adapters, C=1 (one at a time)", "sequential"),
        (f"in-process: {N_ADAPTERS} adapters, C={cc} (batched)", "multi_inproc"),
        (f"in-process: 1 adapter, C={cc} (batched)", "single_inproc"),
        ("naive: from_pretrained per request", "naive"),
        ("naive + signature check per request", "naive_verify"),
    ]
    rps = r["rps"]
    for label, key in rows:
        print(f"{label:<50}{c[key]:>9}{rps[key]:>9.2f}{r['p50'][key]:>9.1f}")
    b = r["batching"]
    print(
        f"compositor batches: {b['batches']} for {b['rows']} requests "
        f"(mean {b['rows'] / max(b['batches'], 1):.1f}, largest {b['largest']}, "
        f"up to {b['most_adapters']} distinct adapters in one)"
    )
    same, total = r["same"]
    print(f"greedy outputs equal to the naive PEFT run for the same adapter+prompt: {same}/{total}")
    for where, suffix in (("Serve", ""), ("in-process", "_inproc")):
        vs_single = rps["multi" + suffix] / rps["single" + suffix]
        vs_naive = rps["multi" + suffix] / rps["naive"]
        print(
            f"{where}: 50 adapters / 1 adapter = {vs_single:.2f}x (target >= 0.8x) "
            f"{'ok' if vs_single >= 0.8 else 'MISSED'}; 50 adapters / naive = "
            f"{vs_naive:.2f}x (target >= 10x) {'ok' if vs_naive >= 10 else 'MISSED'}; "
            f"/ naive + verify = {rps['multi' + suffix] / rps['naive_verify']:.2f}x"
        )
    rr = r["round_rps"]
    for where, suffix in (("Serve", ""), ("in-process", "_inproc")):
        m, one = "multi" + suffix, "single" + suffix
        print(
            f"{where}, median over {len(rr)} rounds: 50 adapters / 1 adapter = "
            f"{median(x[m] / x[one] for x in rr):.2f}x, 50 adapters / naive = "
            f"{median(x[m] / x['naive'] for x in rr):.2f}x"
        )
    print(
        "Serve batched / Serve one at a time (50 adapters) = "
        f"{rps['multi'] / rps['sequential']:.2f}x"
    )
    print(f"naive per-request PeftModel.from_pretrained p50 = {r['naive_load_p50']:.1f} ms")
    print(
        f"load average (1 min) before/after: {load0[0]:.2f}/{load1[0]:.2f} on {os.cpu_count()} "
        f"cores; total {time.perf_counter() - t0:.0f} s"
    )


if __name__ == "__main__":
    main()
