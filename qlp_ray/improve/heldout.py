"""Held-out evaluation of an adapter (or the bare base model) for the orchestrator.

Completion perplexity: the base model, optionally with a LoRA adapter (PEFT,
safetensors only), scores each held-out completion given its prompt in the one
training prompt format; prompt tokens are masked out. Lower is better, and the
same records are scored for candidate and production, so the numbers compare.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qlp_ray.core.errors import AdapterLoadError, InvalidRequest
from qlp_ray.data.format import to_prompt_completion
from qlp_ray.models.base import load_base

if TYPE_CHECKING:
    from qlp_ray.core.config import QLPConfig

logger = logging.getLogger(__name__)


class CompletionPerplexityEvaluator:
    """``evaluate(adapter_dir | None, capsule rows) -> {"perplexity", "mean_nll", ...}``."""

    def __init__(self, cfg: QLPConfig, *, batch_size: int = 8) -> None:
        self.cfg = cfg
        self.batch_size = batch_size
        self._base: Any = None
        self._tokenizer: Any = None

    def _load_base(self):
        if self._base is None:
            self._base, self._tokenizer = load_base(self.cfg)
        return self._base, self._tokenizer

    def _model(self, adapter_dir: Path | None):
        base, tok = self._load_base()
        if adapter_dir is None:
            return base, tok, None
        from peft import PeftModel

        adapter_dir = Path(adapter_dir)
        if not (adapter_dir / "adapter_model.safetensors").is_file():
            raise AdapterLoadError(f"{adapter_dir} has no adapter_model.safetensors")
        try:
            model = PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=False)
        except (ValueError, KeyError, RuntimeError, OSError) as exc:
            raise AdapterLoadError(f"cannot load adapter {adapter_dir}: {exc}") from exc
        return model, tok, model

    def evaluate(self, adapter_dir: Path | None, records: list[dict]) -> dict[str, float]:
        import torch

        if not records:
            raise InvalidRequest("held-out evaluation needs at least one record")
        pairs = [to_prompt_completion(r) for r in records]
        model, tok, peft_model = self._model(adapter_dir)
        eos = tok.eos_token or ""
        max_len = self.cfg.model.max_seq_len
        t0 = time.perf_counter()
        total_nll, n_tokens = 0.0, 0
        model.eval()
        try:
            with torch.no_grad():
                for start in range(0, len(pairs), self.batch_size):
                    nll, n = self._batch(model, tok, pairs[start : start + self.batch_size],
                                         eos, max_len)  # fmt: skip
                    total_nll += nll
                    n_tokens += n
        finally:
            if peft_model is not None:
                peft_model.unload()  # leave the shared base model without adapter layers
        if n_tokens == 0:
            raise InvalidRequest("no completion tokens to score (all truncated away?)")
        mean_nll = total_nll / n_tokens
        out = {
            "perplexity": math.exp(mean_nll),
            "mean_nll": mean_nll,
            "n_tokens": float(n_tokens),
            "n_examples": float(len(pairs)),
            "seconds": time.perf_counter() - t0,
        }
        logger.info("held-out %s: ppl %.3f over %d tokens",
                    adapter_dir or "base model", out["perplexity"], n_tokens)  # fmt: skip
        return out

    @staticmethod
    def _batch(model, tok, pairs, eos: str, max_len: int) -> tuple[float, int]:
        import torch
        import torch.nn.functional as F

        ids, labels = [], []
        for p in pairs:
            prompt = tok(p["prompt"], add_special_tokens=False)["input_ids"]
            completion = tok(p["completion"] + eos, add_special_tokens=False)["input_ids"]
            seq = (prompt + completion)[:max_len]
            lab = ([-100] * len(prompt) + completion)[:max_len]
            ids.append(seq)
            labels.append(lab)
        width = max(len(s) for s in ids)
        pad = tok.pad_token_id if tok.pad_token_id is not None else 0
        input_ids = torch.tensor([s + [pad] * (width - len(s)) for s in ids])
        attn = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in ids])
        lab_t = torch.tensor([s + [-100] * (width - len(s)) for s in labels])
        logits = model(input_ids=input_ids, attention_mask=attn).logits[:, :-1].float()
        target = lab_t[:, 1:]
        nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1),
                              ignore_index=-100, reduction="sum")  # fmt: skip
        return float(nll), int((target != -100).sum())
