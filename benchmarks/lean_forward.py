"""Lean forward vs transformers + PEFT forward in the continuous decoder, same rows.

Two ``TransformersBackend`` over copies of the built-in tiny Llama with the same 50 real
LoRA adapters (rank 8, q/k/v/o), one with ``lean_forward`` (``models/lean_llama.py``) and
one without. Per round, interleaved: a decoding step of R running rows (each its own
adapter) and a prefill of a few joining rows, timed on each; medians over rounds. Then a
closed loop (C rows in flight, 8 greedy tokens each, a finished row replaced at once)
through each, with every output compared. One torch thread, as Ray gives the compositor
replica.

    QLP_HOME=/tmp/qlp_lean_bench PYTHONPATH=. python benchmarks/lean_forward.py \\
        [--rows 14] [--rounds 9]
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _compositor_setup import PROMPTS, bench_config, save_random_adapters  # noqa: E402

N_ADAPTERS = 50


def _closed_loop(backend, n: int, rows: int, max_tokens: int) -> tuple[float, dict]:
    """req/s and texts by request of ``n`` requests with ``rows`` in flight."""
    from qlp_ray.models.backend import GenerationRequest

    def item(i: int):
        request = GenerationRequest(PROMPTS[i % len(PROMPTS)], max_new_tokens=max_tokens)
        return (request, f"a{i % N_ADAPTERS}", i)

    decoder = backend.continuous_decoder()
    joining, started, texts = [item(i) for i in range(rows)], rows, {}
    t0 = time.perf_counter()
    while len(texts) < n:
        done = decoder.admit(joining) + decoder.step()
        texts.update((key, gen.text) for key, gen in done)
        joining = [item(i) for i in range(started, min(n, started + len(done)))]
        started += len(joining)
    return n / (time.perf_counter() - t0), texts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=14, help="running rows in a step")
    parser.add_argument("--joining", type=int, default=3, help="rows in a prefill")
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--requests", type=int, default=300, help="closed-loop requests")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.set_num_threads(1)

    from qlp_ray.models.backend import GenerationRequest
    from qlp_ray.models.base import load_base
    from qlp_ray.models.hf_backend import TransformersBackend

    cfg = bench_config(Path(os.environ.get("QLP_HOME", "/tmp/qlp_lean_bench")))
    base, tokenizer = load_base(cfg)
    src = cfg.paths.root / "lean_bench_adapters"
    outs = [src / f"a{i}" for i in range(N_ADAPTERS)]
    if not all((o / "adapter_config.json").is_file() for o in outs):
        save_random_adapters(base, outs)
    kinds = {}
    for kind, lean in (("lean", True), ("transformers", False)):
        backend = TransformersBackend(copy.deepcopy(base), tokenizer, lean_forward=lean)
        for i, out in enumerate(outs):
            backend.load_adapter(f"a{i}", str(out))
        kinds[kind] = backend
    assert kinds["lean"]._lean is not None, "the tiny Llama must get the lean forward"

    def rows(n: int, first: int):
        return [
            (GenerationRequest(PROMPTS[i % len(PROMPTS)], max_new_tokens=64), f"a{i}", i)
            for i in range(first, first + n)
        ]

    step_ms: dict[str, list[float]] = {k: [] for k in kinds}
    prefill_ms: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(args.rounds):
        for kind, backend in kinds.items():
            decoder = backend.continuous_decoder()
            done = decoder.admit(rows(args.rows, 0))
            errors = [r for _, r in done if isinstance(r, Exception)]
            assert not errors, f"rows failed to join: {errors[0]!r}"
            decoder.step()
            t0 = time.perf_counter()
            for _ in range(10):
                decoder.step()
            step_ms[kind].append((time.perf_counter() - t0) * 100)
            t0 = time.perf_counter()
            decoder.admit(rows(args.joining, args.rows))
            prefill_ms[kind].append((time.perf_counter() - t0) * 1000)
    loops = {k: _closed_loop(b, args.requests, 16, 8) for k, b in kinds.items()}
    same = sum(loops["lean"][1][i] == loops["transformers"][1][i] for i in loops["lean"][1])

    med = {k: (statistics.median(step_ms[k]), statistics.median(prefill_ms[k])) for k in kinds}
    print(f"continuous decoder forward, tiny Llama + {N_ADAPTERS} LoRA adapters (rank 8, q/k/v/o),"
          f" 1 torch thread, medians over {args.rounds} interleaved rounds")  # fmt: skip
    print(f"{'forward':14}{'step ms':>9}{'prefill ms':>12}{'loop req/s':>12}")
    for kind in kinds:
        s, p = med[kind]
        print(f"{kind:14}{s:9.2f}{p:12.2f}{loops[kind][0]:12.1f}")
    t, lean = med["transformers"], med["lean"]
    print(f"decoding step of {args.rows} rows: lean {t[0] / lean[0]:.2f}x faster; prefill of "
          f"{args.joining} rows: {t[1] / lean[1]:.2f}x; closed loop (16 in flight, 8 tokens): "
          f"{loops['lean'][0] / loops['transformers'][0]:.2f}x")  # fmt: skip
    print(f"greedy outputs equal: {same}/{args.requests}")


if __name__ == "__main__":
    main()
