"""Generation speed and perplexity: torch fp32 vs OpenVINO fp32 vs OpenVINO INT8 (NNCF).

Same merged model (the configured base, builtin tiny Llama by default, plus a LoRA
adapter trained here for a few steps and merged with ``merge_and_unload``), same
prompts (held-out instructions of the bundled samples), greedy decoding, one process.
Every engine decodes with a KV cache: torch ``generate``, and openvino-genai's
``LLMPipeline`` on the stateful IR the OpenVINO backend exports. One more row runs the
adapter *unmerged*, as an openvino-genai runtime LoRA adapter on the INT8 base (what the
backend does by default). Each engine is timed ``--rounds`` times, interleaved; the best
round counts (the 2-core VM is shared with other work).

    QLP_HOME=/tmp/qlp_bench PYTHONPATH=. python benchmarks/openvino_vs_torch.py
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time
from pathlib import Path

import torch

from qlp_ray.core.config import load_config
from qlp_ray.evaluate.metrics import perplexity, perplexity_from_nll
from qlp_ray.models.base import load_base
from qlp_ray.models.openvino_backend import OpenVINOBackend, merge_adapter
from qlp_ray.models.prompt import format_prompt

SAMPLES = Path(__file__).resolve().parent.parent / "qlp_ray" / "data" / "samples"


def _records(split: str, n: int) -> list[dict]:
    rows = []
    for path in sorted(SAMPLES.glob(f"*.{split}.jsonl")):
        rows += [json.loads(line) for line in path.read_text().splitlines()[:n]]
    return rows


def _train_adapter(model, tok, out: Path, steps: int) -> Path:
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    peft_model = get_peft_model(
        copy.deepcopy(model),
        LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
    )
    texts = [
        format_prompt(r["instruction"], r["input"]) + r["output"] for r in _records("train", 8)
    ]
    batch = tok(texts, return_tensors="pt", padding=True, truncation=True, max_length=128)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    opt = torch.optim.AdamW([p for p in peft_model.parameters() if p.requires_grad], lr=3e-3)
    peft_model.train()
    for _ in range(steps):
        loss = peft_model(**batch, labels=labels).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    peft_model.save_pretrained(out, safe_serialization=True)
    return out


def _torch_generate(model, tok, prompts: list[str], n: int) -> tuple[list[list[int]], float]:
    outs, t0 = [], time.perf_counter()
    for p in prompts:
        ids = tok(p, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = model.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                max_new_tokens=n,
                do_sample=False,
                pad_token_id=tok.pad_token_id,
            )
        outs.append(out[0, ids.shape[1] :].tolist())
    return outs, time.perf_counter() - t0


def _ov_generate(
    backend: OpenVINOBackend, tok, prompts, n, adapter: str | None = None
) -> tuple[list[list[int]], float]:
    outs, t0 = [], time.perf_counter()
    for p in prompts:
        outs.append(backend.generate_ids(tok(p)["input_ids"], n, adapter=adapter))
    return outs, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=5, help="held-out prompts per domain")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--adapter-steps", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per engine")
    args = parser.parse_args()

    cfg = load_config()
    base, tok = load_base(cfg)
    heldout = _records("heldout", args.prompts)
    prompts = [format_prompt(r["instruction"], r["input"]) for r in heldout]
    ppl_texts = [p + r["output"] for p, r in zip(prompts, heldout, strict=True)]
    n = args.new_tokens
    with tempfile.TemporaryDirectory() as tmp:
        adapter = _train_adapter(base, tok, Path(tmp) / "adapter", args.adapter_steps)
        merged = merge_adapter(base, adapter)
        max_len = int(merged.config.max_position_embeddings)
        t0 = time.perf_counter()
        fp32 = OpenVINOBackend(merged, tok, weight_format="fp32", cache_dir=Path(tmp) / "ir")
        int8 = OpenVINOBackend(merged, tok, weight_format="int8", cache_dir=Path(tmp) / "ir")
        export_s = (time.perf_counter() - t0) / 2
        lora8 = OpenVINOBackend(base, tok, weight_format="int8", cache_dir=Path(tmp) / "ir")
        t0 = time.perf_counter()
        lora8.load_adapter("lora", str(adapter))
        load_ms = (time.perf_counter() - t0) * 1000
        engines = {
            "torch fp32 (KV cache)": lambda ps, k: _torch_generate(merged, tok, ps, k),
            "OpenVINO fp32": lambda ps, k: _ov_generate(fp32, tok, ps, k),
            "OpenVINO INT8": lambda ps, k: _ov_generate(int8, tok, ps, k),
            "OpenVINO INT8 + runtime LoRA": lambda ps, k: _ov_generate(lora8, tok, ps, k, "lora"),
        }
        for run in engines.values():  # warm-up
            run(prompts[:1], 4)
        best: dict[str, tuple[list[list[int]], float]] = {}
        for _ in range(args.rounds):
            for name, run in engines.items():
                outs, secs = run(prompts, n)
                if name not in best or secs < best[name][1]:
                    best[name] = (outs, secs)
        ppl = {
            "torch fp32": perplexity(merged, tok, ppl_texts, max_length=max_len).perplexity,
            "OpenVINO fp32": perplexity_from_nll(*fp32.token_nll(ppl_texts)),
            "OpenVINO INT8": perplexity_from_nll(*int8.token_nll(ppl_texts)),
        }  # (the backend scores a runtime adapter on a merged export: the INT8 row again)
    torch_out, t_torch = best["torch fp32 (KV cache)"]
    params = sum(p.numel() for p in merged.parameters())
    print(
        f"model: {cfg.model.base_model} + merged LoRA ({params / 1e6:.2f} M params), "
        f"{len(prompts)} prompts x {n} new tokens, greedy, torch threads "
        f"{torch.get_num_threads()}, best of {args.rounds} rounds"
    )
    print(f"OpenVINO export (stateful IR) {export_s:.1f} s per format; runtime LoRA load "
          f"{load_ms:.0f} ms (no export)")  # fmt: skip
    print(
        f"{'engine':<30}{'tokens':>8}{'seconds':>9}{'tok/s':>9}{'vs torch':>10}{'same tokens':>13}"
    )
    base_tps = sum(map(len, torch_out)) / t_torch
    for name, (outs, secs) in best.items():
        toks = sum(map(len, outs))
        same = sum(o == t for o, t in zip(outs, torch_out, strict=True))
        print(
            f"{name:<30}{toks:>8}{secs:>9.3f}{toks / secs:>9.1f}{toks / secs / base_tps:>9.2f}x"
            f"{same:>8}/{len(prompts)}"
        )
    print(f"\nheld-out perplexity ({len(ppl_texts)} texts):")
    for name, value in ppl.items():
        print(f"  {name:<30}{value:>10.4f}")
    change = ppl["OpenVINO INT8"] / ppl["OpenVINO fp32"] - 1
    print(f"INT8 perplexity change vs OpenVINO fp32: {100 * change:+.2f}%")


if __name__ == "__main__":
    main()
