"""Multi-adapter throughput: 50 distinct adapters vs one adapter vs a naive per-request load.

Served by the real compositor: a Ray Serve deployment (``Compositor``, one replica,
``serve.max_batch_size`` = C) called through a ``DeploymentHandle`` with the multiplexed
model id, exactly as the gateway calls it. C clients keep C requests in flight; the
replica runs them in one forward per decoding step, each row with its own adapter. With
continuous batching (the default) a request joins the running batch at the next step and
leaves it when done (``serve/batching.StepMerger``, ``models/continuous.py``; the forward
of the tiny Llama is the scripted lean one, ``models/lean_llama.py``). All 50
signed adapters are verified and loaded once before measuring (the Serve LRU,
``serve.max_adapters_per_replica``, is set to 64 so none is evicted).

* **50 adapters**: request *i* uses adapter *i* mod 50 (a batch of 16 mixes ~16).
* **50 adapters, request-level batches**: a second, identical deployment with
  ``serve.continuous_batching: false``: requests arriving during a batch form the next one.
* **1 adapter**: every request uses the same adapter.
* **naive**: per request ``PeftModel.from_pretrained`` of its adapter onto the base model,
  generate, ``unload()`` — one request at a time, in the driver process. A naive server
  cannot batch across adapters: it holds only the one adapter it has just loaded.
* **naive + verify**: the same plus the registry's signature check this platform
  requires before any load.
* **Serve naive**: the naive server as a Serve deployment (1 CPU, 1 torch thread, one
  request at a time), called like the compositor: the same serving stack, so the ratio
  compares adapter handling only. The in-process naive has no serving cost at all.
* **50 adapters, C=1**: the compositor with one request in flight (no batching).

For the continuous runs it also prints where the decoder's time goes (ms per decoding
step and per prefill, and how busy the decoder was), in the Serve replica and in-process,
from the compositor's ``batching`` stats (``prefill_s``, ``step_s``; every request here is
greedy, so all of them run through the decoder).

The Ray cluster and this driver run Ray Serve's throughput mode, as in a cluster ``qlp
serve`` starts (``_compositor_setup``); ``RAY_SERVE_THROUGHPUT_OPTIMIZED=0`` runs without it.

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


def naive_generate(base, tokenizer, path: str, prompt: str, max_tokens: int) -> tuple[str, float]:
    """The naive server's request: ``PeftModel.from_pretrained`` of the adapter onto the
    base model, greedy generate, ``unload()``; (text, load ms)."""
    import torch
    from peft import PeftModel

    t_load = time.perf_counter()
    model = PeftModel.from_pretrained(base, path)
    load_ms = (time.perf_counter() - t_load) * 1000
    enc = tokenizer(prompt, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(
            **enc,
            max_new_tokens=max_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    new = out[0, enc["input_ids"].shape[1] :].tolist()
    eos = tokenizer.eos_token_id
    new = new[: new.index(eos) + 1] if eos in new else new
    model.unload()  # restores the base model for the next request
    return tokenizer.decode(new, skip_special_tokens=True), load_ms


class NaiveServer:
    """The naive baseline as a Serve deployment, called like the compositor (multiplexed
    model id = adapter id): per request :func:`naive_generate`, one at a time."""

    def __init__(self, config: dict, paths: dict[str, str]) -> None:
        import threading

        import torch

        from qlp_ray.core.config import QLPConfig
        from qlp_ray.models.base import load_base

        torch.set_num_threads(1)  # as the compositor replica (num_cpus 1)
        self.base, self.tokenizer = load_base(QLPConfig.model_validate(config))
        self.paths = paths
        self._lock = threading.Lock()  # it holds one adapter at a time

    def _run(self, adapter_id: str, payload: dict) -> str:
        with self._lock:
            path = self.paths[adapter_id]
            prompt, max_tokens = payload["prompt"], payload["max_new_tokens"]
            return naive_generate(self.base, self.tokenizer, path, prompt, max_tokens)[0]

    async def generate(self, payload: dict) -> dict:
        from ray import serve

        model_id = serve.get_multiplexed_model_id()
        return {"text": await asyncio.to_thread(self._run, model_id, payload)}


def _serve_run(handle, jobs: list[tuple[str, int]], clients: int, max_tokens: int):
    """Through the Serve deployment handle, with the multiplexed model id."""

    async def send(model_id: str, prompt: str) -> str:
        key = (id(handle), model_id)
        if key not in _handles:  # one handle per model id, like a long-lived client
            _handles[key] = handle.options(multiplexed_model_id=model_id)
        payload = {"prompt": prompt, "max_new_tokens": max_tokens}
        return (await _handles[key].generate.remote(payload))["text"]

    return _closed_loop(send, jobs, clients)


def _inproc_run(merger, jobs: list[tuple[str, int]], clients: int, max_tokens: int):
    """The same with the compositor's merger over the backend, in this process."""
    from qlp_ray.models.backend import GenerationRequest

    async def send(name: str, prompt: str) -> str:
        [gen] = await merger.submit([(GenerationRequest(prompt, max_new_tokens=max_tokens), name)])
        return gen.text

    return _closed_loop(send, jobs, clients)


def run(args: argparse.Namespace) -> dict:
    import ray
    import torch
    from ray import serve

    from qlp_ray.models.base import base_model_id, load_base
    from qlp_ray.models.composition import multiplex_id
    from qlp_ray.models.hf_backend import TransformersBackend
    from qlp_ray.serve.batching import StepMerger
    from qlp_ray.serve.compositor import compositor_deployment

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
    merger = StepMerger(backend, c)  # the merger of the compositor replica (continuous)
    cfg_rl = cfg.model_copy(deep=True)  # the same deployment with request-level batches
    cfg_rl.serve.continuous_batching = False

    # 3 logical CPUs for 3 one-CPU deployments on the 2 cores: the kinds take turns, so
    # only one deployment works at a time
    ray.init(address="local", num_cpus=3, include_dashboard=False, log_to_driver=False)
    try:
        handles = {}
        for kind, conf in (("multi", cfg), ("multi_rl", cfg_rl)):
            app = compositor_deployment(conf).bind(conf.model_dump(mode="json"))
            handles[kind] = serve.run(app, name=f"bench_{kind}", route_prefix=None)
        naive_app = serve.deployment(
            name="NaiveServer", ray_actor_options={"num_cpus": 1}, max_ongoing_requests=c
        )(NaiveServer).bind(cfg.model_dump(mode="json"), {a: str(p) for a, p in paths.items()})
        handles["naive_serve"] = serve.run(naive_app, name="bench_naive", route_prefix=None)
        handle = handles["multi"]
        loop = asyncio.new_event_loop()
        t0 = time.perf_counter()  # verify + load all 50 (one request each)
        loop.run_until_complete(_serve_run(handle, [(m, 0) for m in mids], c, 1))
        load_all_s = time.perf_counter() - t0
        loop.run_until_complete(_serve_run(handles["multi_rl"], [(m, 0) for m in mids], c, 1))

        load_ms: list[float] = []
        naive_texts: dict[tuple[int, int], str] = {}

        def naive(i: int, verify: bool) -> None:
            a, p = i % N_ADAPTERS, i % len(PROMPTS)
            if verify:
                path = registry.verified_path(ids[a], expected_base_model=base_id)
            else:
                path = paths[ids[a]]
            text, ms = naive_generate(base, tokenizer, str(path), PROMPTS[p], args.max_tokens)
            naive_texts[(a, p)] = text
            load_ms.append(ms)

        def serve_kind(kind: str, start: int, n: int):
            inproc = kind.endswith("_inproc")
            names = ids if inproc or kind == "serve_naive" else mids

            def job(i: int) -> tuple[str, int]:
                one = kind.startswith("single")
                return (names[0] if one else names[i % N_ADAPTERS], i % len(PROMPTS))

            jobs = [job(i) for i in range(start, start + n)]
            clients = 1 if kind == "sequential" else c
            if kind == "serve_naive":
                where = "naive_serve"
            else:
                where = "inproc" if inproc else ("multi_rl" if kind == "multi_rl" else "multi")
            if inproc:
                coro = _inproc_run(merger, jobs, clients, args.max_tokens)
            else:
                coro = _serve_run(handles[where], jobs, clients, args.max_tokens)
            if where == "naive_serve":
                texts, secs, lat = loop.run_until_complete(coro)
                return secs, lat
            before = batch_counts(where)
            texts, secs, lat = loop.run_until_complete(coro)
            after = batch_counts(where)
            rows_key = "row_steps" if "row_steps" in after else "rows"
            for key in ("batches", "prefills", "prefill_s", "step_s", "prefill_cpu_s",
                        "step_cpu_s"):  # fmt: skip
                batched[kind][key] += after.get(key, 0) - before.get(key, 0)
            batched[kind]["rows"] += after[rows_key] - before[rows_key]
            batched[kind]["secs"] += secs
            if kind.startswith("multi"):  # keep (adapter, prompt) -> text to compare
                for k, i in enumerate(range(start, start + n)):
                    served[kind, i % N_ADAPTERS, i % len(PROMPTS)] = texts[k]
            return secs, lat

        def batch_counts(where: str) -> dict[str, int]:
            if where == "inproc":
                return dict(merger.stats)
            return loop.run_until_complete(handles[where].cache_stats.remote())["batching"]

        zero = dict.fromkeys(("batches", "rows", "prefills", "prefill_s", "step_s", "secs",
                              "prefill_cpu_s", "step_cpu_s"), 0.0)  # fmt: skip
        batched = {k: dict(zero) for k in
                   ("multi", "multi_rl", "single", "multi_inproc", "single_inproc",
                    "sequential")}  # fmt: skip
        served: dict[tuple[str, int, int], str] = {}
        for i in range(3):  # warm-up of every code path
            naive(i, verify=False)
        kinds = ["multi", "multi_rl", "single", "multi_inproc", "single_inproc", "serve_naive"]
        for kind in kinds:
            serve_kind(kind, 0, 2 * c)
        kinds += ["naive", "naive_verify", "sequential"]
        spent = dict.fromkeys(kinds, 0.0)
        count = dict.fromkeys(kinds, 0)
        latencies: dict[str, list[float]] = {k: [] for k in kinds}
        start = 0
        round_rps: list[dict[str, float]] = []

        def n_of(kind: str) -> int:
            if "naive" in kind:
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
        stats = loop.run_until_complete(handle.cache_stats.remote())
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
        "mean_batch": {k: v["rows"] / max(v["batches"], 1) for k, v in batched.items()},
        "decoder": batched,
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
    # batch: mean rows per decoding step (continuous batching) or per batch (request level)
    print(f"{'workload':<50}{'requests':>9}{'req/s':>9}{'p50 ms':>9}{'batch':>7}")
    cc = args.concurrency
    rows = [
        (f"Serve: {N_ADAPTERS} adapters, C={cc} (batched)", "multi"),
        (f"Serve: {N_ADAPTERS} adapters, C={cc}, request-level batches", "multi_rl"),
        (f"Serve: 1 adapter, C={cc} (batched)", "single"),
        (f"Serve: {N_ADAPTERS} adapters, C=1 (one at a time)", "sequential"),
        (f"in-process: {N_ADAPTERS} adapters, C={cc} (batched)", "multi_inproc"),
        (f"in-process: 1 adapter, C={cc} (batched)", "single_inproc"),
        ("naive: from_pretrained per request", "naive"),
        ("Serve naive: the same in a Serve deployment", "serve_naive"),
        ("naive + signature check per request", "naive_verify"),
    ]
    rps = r["rps"]
    for label, key in rows:
        batch = r["mean_batch"].get(key)
        shown = f"{batch:7.1f}" if batch is not None else f"{'-':>7}"
        print(f"{label:<50}{c[key]:>9}{rps[key]:>9.2f}{r['p50'][key]:>9.1f}{shown}")
    b = r["batching"]
    if b.get("continuous"):
        print(
            f"compositor (continuous batching): {b['batches']} decoding steps, "
            f"{b['prefills']} prefills for {b['rows']} requests, mean "
            f"{b['row_steps'] / max(b['batches'], 1):.1f} rows per step, at most "
            f"{b['largest']} rows and {b['most_adapters']} distinct adapters at once"
        )
    else:
        print(
            f"compositor batches: {b['batches']} for {b['rows']} requests "
            f"(mean {b['rows'] / max(b['batches'], 1):.1f}, largest {b['largest']}, "
            f"up to {b['most_adapters']} distinct adapters in one)"
        )
    # where the compositor's time goes: the same decoding work, in the replica vs here
    for label, key in (("Serve replica", "multi"), ("in-process", "multi_inproc")):
        d = r["decoder"][key]
        if d["batches"] and d["prefills"] and d["secs"]:
            print(
                f"{label} (50 adapters, continuous): "
                f"{d['step_s'] / d['batches'] * 1000:.2f} ms per decoding step, "
                f"{d['prefill_s'] / d['prefills'] * 1000:.2f} ms per prefill; decoder busy "
                f"{(d['step_s'] + d['prefill_s']) / d['secs']:.0%} of the run "
                f"({d['prefill_s'] / (d['step_s'] + d['prefill_s']):.0%} of it prefills)"
            )
            print(
                f"  its thread was on a CPU {d['prefill_cpu_s'] / d['prefill_s']:.0%} of the "
                f"prefills' time and {d['step_cpu_s'] / d['step_s']:.0%} of the steps' time"
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
    vs_serve_naive = rps["multi"] / rps["serve_naive"]
    print(
        f"Serve: 50 adapters / Serve naive (both through Serve) = {vs_serve_naive:.2f}x "
        f"(target >= 10x) {'ok' if vs_serve_naive >= 10 else 'MISSED'}; median over rounds "
        f"{median(x['multi'] / x['serve_naive'] for x in rr):.2f}x"
    )
    for where, suffix in (("Serve", ""), ("in-process", "_inproc")):
        m, one = "multi" + suffix, "single" + suffix
        print(
            f"{where}, median over {len(rr)} rounds: 50 adapters / 1 adapter = "
            f"{median(x[m] / x[one] for x in rr):.2f}x, 50 adapters / naive = "
            f"{median(x[m] / x['naive'] for x in rr):.2f}x"
        )
    print(
        "Serve batched / Serve one at a time (50 adapters) = "
        f"{rps['multi'] / rps['sequential']:.2f}x; continuous / request-level batches = "
        f"{rps['multi'] / rps['multi_rl']:.2f}x (median over rounds "
        f"{median(x['multi'] / x['multi_rl'] for x in rr):.2f}x)"
    )
    print(f"naive per-request PeftModel.from_pretrained p50 = {r['naive_load_p50']:.1f} ms")
    print(
        f"load average (1 min) before/after: {load0[0]:.2f}/{load1[0]:.2f} on {os.cpu_count()} "
        f"cores; total {time.perf_counter() - t0:.0f} s"
    )


if __name__ == "__main__":
    main()
