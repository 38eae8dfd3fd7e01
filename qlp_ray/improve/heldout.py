"""Held-out evaluation of an adapter (or the bare base model) for the orchestrator.

Completion perplexity (:func:`qlp_ray.evaluate.metrics.completion_perplexity`): the base
model, optionally with a LoRA adapter (PEFT, safetensors only), scores each held-out
completion given its prompt in the one training prompt format; prompt tokens are masked
out. Lower is better, and the same records are scored for candidate and production, so
the numbers compare.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qlp_ray.core.errors import AdapterLoadError, InvalidRequest
from qlp_ray.data.format import to_prompt_completion
from qlp_ray.evaluate.metrics import completion_perplexity
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
        if not records:
            raise InvalidRequest("held-out evaluation needs at least one record")
        pairs = [to_prompt_completion(r) for r in records]
        model, tok, peft_model = self._model(adapter_dir)
        t0 = time.perf_counter()
        try:
            ppl = completion_perplexity(
                model, tok, pairs, max_length=self.cfg.model.max_seq_len, batch_size=self.batch_size
            )
        finally:
            if peft_model is not None:
                peft_model.unload()  # leave the shared base model without adapter layers
        out = {
            "perplexity": ppl.perplexity,
            "mean_nll": ppl.mean_nll,
            "n_tokens": float(ppl.n_tokens),
            "n_examples": float(len(pairs)),
            "seconds": time.perf_counter() - t0,
        }
        logger.info("held-out %s: ppl %.3f over %d tokens",
                    adapter_dir or "base model", out["perplexity"], ppl.n_tokens)  # fmt: skip
        return out


class PreferenceEvaluator(CompletionPerplexityEvaluator):
    """``evaluate_pairs(adapter_dir | None, pairs) -> {"preference_margin", ...}``: the DPO
    candidate's gate. ``preference_margin`` is the mean over held-out pairs of
    log p(chosen | prompt) - log p(rejected | prompt) (nats, higher is better);
    ``preference_accuracy`` the share of pairs where chosen scores higher."""

    def evaluate_pairs(self, adapter_dir: Path | None, pairs: list[Any]) -> dict[str, float]:
        from qlp_ray.train.dpo import pair_margins  # lazy: loads torch

        if not pairs:
            raise InvalidRequest("preference evaluation needs at least one held-out pair")
        model, tok, peft_model = self._model(adapter_dir)
        t0 = time.perf_counter()
        try:
            margins = pair_margins(model, tok, pairs)
        finally:
            if peft_model is not None:
                peft_model.unload()
        out = {
            "preference_margin": sum(margins) / len(margins),
            "preference_accuracy": sum(m > 0 for m in margins) / len(margins),
            "n_pairs": float(len(pairs)),
            "seconds": time.perf_counter() - t0,
        }
        logger.info("held-out pairs %s: margin %.3f, accuracy %.2f over %d pairs",
                    adapter_dir or "base model", out["preference_margin"],
                    out["preference_accuracy"], len(pairs))  # fmt: skip
        return out
