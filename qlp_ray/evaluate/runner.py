"""Run a causal LM over an evaluation set and collect every metric in one dict.

An evaluation set is a list of ``{"prompt": ..., "reference": ...}`` records
(JSONL on disk). Perplexity is measured on ``prompt + reference``; the model
greedily generates from ``prompt`` and the output is scored against
``reference`` (exact match, token F1, BLEU, ROUGE, and classification P/R/F1
on the first word when ``label_task`` is set). Latency is per prompt.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qlp_ray.core.errors import InvalidRequest
from qlp_ray.core.jsonl import iter_jsonl
from qlp_ray.data.format import to_prompt_completion
from qlp_ray.evaluate import metrics as M

logger = logging.getLogger(__name__)


def load_eval_set(path: str | Path) -> list[dict[str, str]]:
    """Read a JSONL evaluation set: ``{prompt, reference}`` lines, or capsules
    (``{instruction, input, output}``, turned into the training prompt format)."""

    p = Path(path)
    records = []
    for lineno, rec in iter_jsonl(p, "evaluation set"):
        if isinstance(rec, dict) and "instruction" in rec and "prompt" not in rec:
            pc = to_prompt_completion(rec)
            rec = {"prompt": pc["prompt"], "reference": pc["completion"]}
        if not isinstance(rec, dict) or not all(
            isinstance(rec.get(k), str) for k in ("prompt", "reference")
        ):
            raise InvalidRequest(
                f"{p}:{lineno}: needs string fields 'prompt' and 'reference' (or a capsule)"
            )
        records.append(rec)
    if not records:
        raise InvalidRequest(f"evaluation set {p} is empty")
    return records


def generate_timed(
    model: Any, tokenizer: Any, prompts: Sequence[str], *, max_new_tokens: int
) -> tuple[list[str], list[float], int]:
    """Greedy-generate one completion per prompt; returns texts, per-prompt seconds, new tokens."""
    import torch

    device = next(model.parameters()).device
    outputs, latencies, total_new = [], [], 0
    model.eval()
    with torch.no_grad():
        for prompt in prompts:
            enc = tokenizer(prompt, return_tensors="pt").to(device)
            t0 = time.perf_counter()
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
            latencies.append(time.perf_counter() - t0)
            new = out[0, enc["input_ids"].shape[1] :]
            total_new += int(new.numel())
            outputs.append(tokenizer.decode(new, skip_special_tokens=True).strip())
    return outputs, latencies, total_new


def evaluate_model(
    model: Any,
    tokenizer: Any,
    records: Sequence[dict[str, str]],
    *,
    max_new_tokens: int = 32,
    label_task: bool = False,
    max_length: int = 256,
) -> dict[str, float]:
    """Every metric of ``model`` on ``records`` as a flat dict (see module docstring)."""
    if not records:
        raise InvalidRequest("evaluation set is empty")
    prompts = [r["prompt"] for r in records]
    refs = [r["reference"] for r in records]
    ppl = M.perplexity(
        model,
        tokenizer,
        [p + " " + r for p, r in zip(prompts, refs, strict=True)],
        max_length=max_length,
    )
    mem = M.measure_peak_memory(
        lambda: generate_timed(model, tokenizer, prompts, max_new_tokens=max_new_tokens)
    )
    preds, latencies, new_tokens = mem.value
    out: dict[str, float] = {
        "n_examples": float(len(records)),
        "perplexity": ppl.perplexity,
        "mean_nll": ppl.mean_nll,
        "n_tokens": float(ppl.n_tokens),
        "exact_match": M.exact_match(preds, refs),
        "token_f1": M.token_f1(preds, refs),
        "bleu": M.bleu(preds, refs),
        **M.rouge(preds, refs),
        **M.latency_percentiles(latencies),
        "generated_tokens": float(new_tokens),
        "tokens_per_s": M.tokens_per_second(new_tokens, sum(latencies)),
        "python_peak_bytes": float(mem.python_peak_bytes),
        "process_max_rss_bytes": float(mem.process_max_rss_bytes),
    }
    if label_task:
        first = [(p.split() or [""])[0] for p in preds]
        for avg in ("macro", "micro"):
            prf = M.precision_recall_f1(first, refs, average=avg)
            out[f"precision_{avg}"] = prf.precision
            out[f"recall_{avg}"] = prf.recall
            out[f"f1_{avg}"] = prf.f1
        out["accuracy"] = M.accuracy(first, refs)
    logger.info(
        "evaluated %d examples: ppl %.2f, EM %.3f, p95 %.1f ms",
        len(records),
        out["perplexity"],
        out["exact_match"],
        out["p95_ms"],
    )
    return out


__all__ = ["evaluate_model", "generate_timed", "load_eval_set"]
