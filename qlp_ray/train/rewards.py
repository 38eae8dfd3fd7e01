"""Reward signals for the RL stage (GRPO / RLOO) and preference data.

Three sources, all usable as TRL reward functions
(``f(prompts, completions, **kw) -> list[float | None]``):

(a) a reward model trained with TRL ``RewardTrainer`` on preference pairs
    (:func:`train_reward_model`, wrapped by :func:`reward_model_func`);
(b) programmatic validators per domain (format / keyword checks) in
    :data:`DOMAIN_VALIDATORS`;
(c) the seed's feedback-to-reward mapping (:func:`feedback_reward`) for
    responses that received explicit user feedback.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from qlp_ray.core.errors import InvalidRequest
from qlp_ray.train._rlhf_common import device_args

logger = logging.getLogger(__name__)

FeedbackKind = Literal["thumbs_up", "thumbs_down", "rating", "comparison", "correction"]
RewardFunc = Callable[..., list[float | None]]


# --- (c) feedback -> reward ---------------------------------------------------------------


@dataclass(frozen=True)
class FeedbackEvent:
    """One piece of user feedback on a ``response`` to a ``prompt``.

    ``comparison``: ``response`` was preferred over ``other``.
    ``correction``: the user replaced ``response`` with ``correction``.
    """

    kind: FeedbackKind
    prompt: str
    response: str
    rating: int | None = None
    other: str | None = None
    correction: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeedbackEvent:
        kind = data.get("kind")
        if kind not in ("thumbs_up", "thumbs_down", "rating", "comparison", "correction"):
            raise InvalidRequest(f"unknown feedback kind {kind!r}", param="kind")
        for key in ("prompt", "response"):
            if not isinstance(data.get(key), str):
                raise InvalidRequest(f"feedback needs a string {key!r}", param=key)
        if kind == "rating" and not isinstance(data.get("rating"), int):
            raise InvalidRequest("rating feedback needs an integer 'rating'", param="rating")
        if kind == "comparison" and not isinstance(data.get("other"), str):
            raise InvalidRequest("comparison feedback needs the rejected text in 'other'")
        if kind == "correction" and not isinstance(data.get("correction"), str):
            raise InvalidRequest("correction feedback needs the corrected text in 'correction'")
        return cls(
            kind=kind,
            prompt=data["prompt"],
            response=data["response"],
            rating=data.get("rating"),
            other=data.get("other"),
            correction=data.get("correction"),
        )


def feedback_reward(event: FeedbackEvent) -> float:
    """The seed's mapping: thumbs up +1.0, down -0.5, rating >=4 +0.8, 3 +0.3,
    <=2 -0.3, comparison (the preferred response) +0.5, correction (the
    corrected response) -0.2."""
    if event.kind == "thumbs_up":
        return 1.0
    if event.kind == "thumbs_down":
        return -0.5
    if event.kind == "rating":
        assert event.rating is not None
        if event.rating >= 4:
            return 0.8
        return 0.3 if event.rating == 3 else -0.3
    if event.kind == "comparison":
        return 0.5
    return -0.2  # correction


def feedback_rewards(events: Iterable[FeedbackEvent]) -> dict[tuple[str, str], float]:
    """Mean reward per (prompt, response) over all feedback it received."""
    sums: dict[tuple[str, str], list[float]] = {}
    for e in events:
        sums.setdefault((e.prompt, e.response), []).append(feedback_reward(e))
    return {k: sum(v) / len(v) for k, v in sums.items()}


def feedback_lookup_reward(events: Iterable[FeedbackEvent]) -> RewardFunc:
    """A reward function that scores completions users already gave feedback on
    (``None`` elsewhere, which TRL treats as missing when other functions score it)."""
    table = feedback_rewards(events)

    def feedback_lookup(prompts: list[str], completions: list[str], **_: Any) -> list[float | None]:
        return [table.get((p, c.strip())) for p, c in zip(prompts, completions, strict=True)]

    return feedback_lookup


# --- (b) programmatic validators -----------------------------------------------------------


def keyword_reward(keywords: Sequence[str]) -> RewardFunc:
    """Share of ``keywords`` (whole words, case-insensitive) present in the completion."""
    patterns = [re.compile(rf"\b{re.escape(k.lower())}\b") for k in keywords]

    def keywords_present(completions: list[str], **_: Any) -> list[float]:
        return [
            sum(bool(p.search(c.lower())) for p in patterns) / len(patterns) for c in completions
        ]

    return keywords_present


def regex_reward(pattern: str) -> RewardFunc:
    """1.0 when the completion matches ``pattern`` (search), else 0.0."""
    rx = re.compile(pattern, re.IGNORECASE | re.DOTALL)

    def matches_format(completions: list[str], **_: Any) -> list[float]:
        return [1.0 if rx.search(c) else 0.0 for c in completions]

    return matches_format


def json_object_reward(completions: list[str], **_: Any) -> list[float]:
    """1.0 when the completion contains a parseable JSON object, else 0.0."""
    out = []
    for c in completions:
        start, end = c.find("{"), c.rfind("}")
        try:
            ok = start != -1 and isinstance(json.loads(c[start : end + 1]), dict)
        except json.JSONDecodeError:
            ok = False
        out.append(1.0 if ok else 0.0)
    return out


def token_share_reward(allowed: set[str]) -> RewardFunc:
    """Share of the completion's words that are in ``allowed`` (a dense signal)."""

    def allowed_word_share(completions: list[str], **_: Any) -> list[float]:
        scores = []
        for c in completions:
            words = re.findall(r"[a-z]+", c.lower())
            scores.append(sum(w in allowed for w in words) / len(words) if words else 0.0)
        return scores

    return allowed_word_share


#: Format/keyword checks per skill domain; each returns a reward in [0, 1].
DOMAIN_VALIDATORS: dict[str, list[RewardFunc]] = {
    "dataeng": [regex_reward(r"\bselect\b.+\bfrom\b"), keyword_reward(["table", "parquet"])],
    "devops": [regex_reward(r"\b(docker|kubectl|helm|systemctl)\b"), keyword_reward(["deploy"])],
    "api": [json_object_reward, regex_reward(r"\b[1-5]\d\d\b")],
    "frontend": [regex_reward(r"<[a-z][^>]*>"), keyword_reward(["component", "state"])],
    "ml": [keyword_reward(["loss", "learning rate", "evaluate"])],
}


def domain_reward(domain: str) -> RewardFunc:
    """Mean of the domain's validators, as one TRL reward function."""
    if domain not in DOMAIN_VALIDATORS:
        raise InvalidRequest(
            f"no validators for domain {domain!r}; known: {sorted(DOMAIN_VALIDATORS)}",
            param="domain",
        )
    validators = DOMAIN_VALIDATORS[domain]

    def validate(prompts: list[str], completions: list[str], **kw: Any) -> list[float]:
        per = [v(prompts=prompts, completions=completions, **kw) for v in validators]
        return [sum(col) / len(col) for col in zip(*per, strict=True)]

    validate.__name__ = f"{domain}_validators"
    return validate


# --- (a) reward model ------------------------------------------------------------------------


def reward_model_from_causal_lm(causal_lm: Any) -> Any:
    """A 1-logit sequence-classification model sharing ``causal_lm``'s backbone weights."""
    import copy

    from transformers import AutoModelForSequenceClassification

    config = copy.deepcopy(causal_lm.config)
    config.num_labels = 1
    rm = AutoModelForSequenceClassification.from_config(config)
    missing, _unexpected = rm.load_state_dict(causal_lm.state_dict(), strict=False)
    new = [k for k in missing if not k.startswith("score")]
    if new:
        raise InvalidRequest(
            f"base model backbone does not fit the reward model: missing {new[:3]}"
        )
    return rm


def train_reward_model(
    causal_lm: Any,
    tokenizer: Any,
    pairs: Sequence[Any],
    *,
    output_dir: str,
    steps: int = 30,
    learning_rate: float = 1e-3,
    batch_size: int = 8,
    seed: int = 0,
) -> Any:
    """Train a reward model with TRL ``RewardTrainer`` on preference pairs
    (objects with ``prompt``/``chosen``/``rejected``); returns the model in eval mode."""
    from datasets import Dataset
    from trl import RewardConfig, RewardTrainer

    if not pairs:
        raise InvalidRequest("reward model training needs at least one preference pair")
    import torch

    torch.manual_seed(seed)  # the score head is freshly initialised
    model = reward_model_from_causal_lm(causal_lm)
    model.config.pad_token_id = tokenizer.pad_token_id
    data = Dataset.from_list(
        [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in pairs]
    )
    args = RewardConfig(
        output_dir=output_dir,
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        logging_steps=max(1, steps // 5),
        save_strategy="no",
        seed=seed,
        **device_args(),
    )
    trainer = RewardTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer)
    trainer.train()
    logger.info("reward model trained on %d pairs for %d steps", len(pairs), steps)
    return trainer.model.eval()


def train_reward_lora(
    model: Any,
    tokenizer: Any,
    pairs: Sequence[Any],
    *,
    output_dir: str,
    steps: int = 30,
    batch_size: int = 8,
    learning_rate: float = 1e-3,
    run: Any = None,
) -> Any:
    """Train a reward model as a LoRA adapter plus its score head (PEFT ``modules_to_save``)
    on a 1-label sequence-classification ``model``, with TRL ``RewardTrainer``.

    The adapter directory is small and loads on the base model again
    (:func:`load_reward_lora`); ``run`` is a ``RunOptions`` (schedule, LoRA shape, hooks).
    Returns ``(trainer, train output)``.
    """
    from datasets import Dataset
    from peft import LoraConfig
    from trl import RewardConfig, RewardTrainer

    from qlp_ray.train._rlhf_common import RunOptions

    run = run or RunOptions()
    if not pairs:
        raise InvalidRequest("reward model training needs at least one preference pair")
    model.config.pad_token_id = tokenizer.pad_token_id
    data = Dataset.from_list(
        [{"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected} for p in pairs]
    )
    args = RewardConfig(
        **run.trl_args(
            output_dir=output_dir, steps=steps, batch_size=batch_size, learning_rate=learning_rate
        )
    )
    peft_config = None
    if run.new_adapter:
        peft_config = LoraConfig(
            r=run.rank,
            lora_alpha=run.alpha,
            target_modules=list(run.target_modules),
            task_type="SEQ_CLS",
            modules_to_save=["score"],
        )
    trainer = RewardTrainer(
        model=model,
        args=args,
        train_dataset=data,
        processing_class=tokenizer,
        peft_config=peft_config,
        callbacks=list(run.callbacks),
    )
    trainer, out = run.fit(trainer)
    logger.info("reward LoRA: %d pairs, %d steps, loss %.4f", len(pairs), steps, out.training_loss)
    return trainer, out


def load_reward_lora(base_path: str, adapter_dir: str) -> tuple[Any, Any]:
    """A reward model (base + LoRA + score head from :func:`train_reward_lora`) in eval
    mode, and its tokenizer. Verify ``adapter_dir`` with the registry before calling."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    base = AutoModelForSequenceClassification.from_pretrained(
        base_path, num_labels=1, dtype=torch.float32
    )
    base.config.pad_token_id = tokenizer.pad_token_id
    return PeftModel.from_pretrained(base, adapter_dir).eval(), tokenizer


def pair_accuracy(model: Any, tokenizer: Any, pairs: Sequence[Any]) -> tuple[float, float]:
    """(share of pairs whose chosen text scores above the rejected one, mean score gap)."""
    if not pairs:
        raise InvalidRequest("no preference pairs to score")
    was_training = model.training
    model.eval()
    try:
        chosen = score_with_reward_model(model, tokenizer, [p.prompt + p.chosen for p in pairs])
        rejected = score_with_reward_model(model, tokenizer, [p.prompt + p.rejected for p in pairs])
    finally:
        model.train(was_training)
    wins = sum(c > r for c, r in zip(chosen, rejected, strict=True))
    gap = sum(c - r for c, r in zip(chosen, rejected, strict=True)) / len(pairs)
    return wins / len(pairs), gap


def score_with_reward_model(model: Any, tokenizer: Any, texts: Sequence[str]) -> list[float]:
    """Scalar reward of each full text (prompt + completion).

    ``RewardTrainer`` trains on texts ending in the EOS token and the score is
    read at the last token, so EOS is appended here too.
    """
    import torch

    eos = tokenizer.eos_token or ""
    texts = [t if t.endswith(eos) else t + eos for t in texts]
    device = next(model.parameters()).device
    side = tokenizer.padding_side
    tokenizer.padding_side = "right"
    try:
        enc = tokenizer(texts, return_tensors="pt", padding=True).to(device)
    finally:
        tokenizer.padding_side = side
    with torch.no_grad():
        return model(**enc).logits[:, 0].float().tolist()


def reward_model_func(model: Any, tokenizer: Any) -> RewardFunc:
    """A TRL reward function scoring ``prompt + completion`` with a trained reward model."""

    def reward_model(prompts: list[str], completions: list[str], **_: Any) -> list[float]:
        return score_with_reward_model(
            model, tokenizer, [p + c for p, c in zip(prompts, completions, strict=True)]
        )

    return reward_model


__all__ = [
    "DOMAIN_VALIDATORS",
    "FeedbackEvent",
    "domain_reward",
    "feedback_lookup_reward",
    "feedback_reward",
    "feedback_rewards",
    "json_object_reward",
    "keyword_reward",
    "load_reward_lora",
    "pair_accuracy",
    "regex_reward",
    "reward_model_from_causal_lm",
    "reward_model_func",
    "score_with_reward_model",
    "token_share_reward",
    "train_reward_lora",
    "train_reward_model",
]
