"""Generation speed and perplexity: torch fp32 vs OpenVINO fp32 vs OpenVINO INT8 (NNCF).

Same merged model (the configured base, builtin tiny Llama by default, plus a LoRA
adapter trained here for a few steps and merged with ``merge_and_unload``), same
prompts (held-out instructions of the bundled samples), greedy decoding, one process.
The OpenVINO IR has no KV cache, so torch is timed twice: ``generate`` with its KV cache
(what you would run) and a no-cache loop (the same algorithm as the IR).

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


def _torch_nocache(model, tok, prompts: list[str], n: int) -> tuple[list[list[int]], float]:
    outs, t0 = [], time.perf_counter()
    for p in prompts:
        ids = tok(p)["input_ids"]
        new: list[int] = []
        for _ in range(n):
            with torch.no_grad():
                logits = model(torch.tensor([ids + new]), use_cache=False).logits[0, -1]
            new.append(int(logits.argmax()))
            if new[-1] == tok.eos_token_id:
                break
        outs.append(new)
    return outs, time.perf_counter() - t0


def _ov_generate(backend: OpenVINOBackend, tok, prompts, n) -> tuple[list[list[int]], float]:
    outs, t0 = [], time.perf_counter()
    for p in prompts:
        outs.append(backend.generate_ids(tok(p)["input_ids"], n))
    return outs, time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=5, help="held-out prompts per domain")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--adapter-steps", type=int, default=20)
    args = parser.parse_args()

    cfg = load_config()
    base, tok = load_base(cfg)
    heldout = _records("heldout", args.prompts)
    prompts = [format_prompt(r["instruction"], r["input"]) for r in heldout]
    ppl_texts = [p + r["output"] for p, r in zip(prompts, heldout, strict=True)]
    with tempfile.TemporaryDirectory() as tmp:
        adapter = _train_adapter(base, tok, Path(tmp), args.adapter_steps)
        merged = merge_adapter(base, adapter)
    max_len = int(merged.config.max_position_embeddings)

    n = args.new_tokens
    _torch_generate(merged, tok, prompts[:1], 4)  # warm-up
    torch_out, t_torch = _torch_generate(merged, tok, prompts, n)
    nocache_out, t_nocache = _torch_nocache(merged, tok, prompts, n)
    fp32 = OpenVINOBackend(merged, tok, weight_format="fp32")
    int8 = OpenVINOBackend(merged, tok, weight_format="int8")
    _ov_generate(fp32, tok, prompts[:1], 4)
    _ov_generate(int8, tok, prompts[:1], 4)
    fp32_out, t_fp32 = _ov_generate(fp32, tok, prompts, n)
    int8_out, t_int8 = _ov_generate(int8, tok, prompts, n)

    ppl = {
        "torch fp32": perplexity(merged, tok, ppl_texts, max_length=max_len).perplexity,
        "OpenVINO fp32": perplexity_from_nll(*fp32.token_nll(ppl_texts)),
        "OpenVINO INT8": perplexity_from_nll(*int8.token_nll(ppl_texts)),
    }
    runs = {
        "torch fp32 (KV cache)": (torch_out, t_torch),
        "torch fp32 (no cache)": (nocache_out, t_nocache),
        "OpenVINO fp32": (fp32_out, t_fp32),
        "OpenVINO INT8": (int8_out, t_int8),
    }
    params = sum(p.numel() for p in merged.parameters())
    print(
        f"model: {cfg.model.base_model} + merged LoRA ({params / 1e6:.2f} M params), "
        f"{len(prompts)} prompts x {n} new tokens, greedy, torch threads {torch.get_num_threads()}"
    )
    print(
        f"{'engine':<24}{'tokens':>8}{'seconds':>9}{'tok/s':>9}{'vs torch':>10}{'same tokens':>13}"
    )
    base_tps = sum(map(len, torch_out)) / t_torch
    for name, (outs, secs) in runs.items():
        toks = sum(map(len, outs))
        same = sum(o == t for o, t in zip(outs, torch_out, strict=True))
        print(
            f"{name:<24}{toks:>8}{secs:>9.2f}{toks / secs:>9.1f}{toks / secs / base_tps:>9.2f}x"
            f"{same:>8}/{len(prompts)}"
        )
    print(f"\nheld-out perplexity ({len(ppl_texts)} texts):")
    for name, value in ppl.items():
        print(f"  {name:<16}{value:>10.3f}")
    change = ppl["OpenVINO INT8"] / ppl["OpenVINO fp32"] - 1
    print(f"INT8 perplexity change vs OpenVINO fp32: {100 * change:+.2f}%")


if __name__ == "__main__":
    main()
