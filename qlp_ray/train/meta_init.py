"""Reptile meta-learning of a LoRA initialisation over several domains (Nichol et al. 2018).

Each round adapts a copy of the meta LoRA weights to one domain with a few Adam steps on
its texts, then moves the meta weights a step toward the adapted ones:
``meta += meta_lr * (adapted - meta)``. A new domain then starts its LoRA from ``meta``
instead of PEFT's default init (A random, B zero: the base model's function).

In-process (plain PyTorch + PEFT); ``benchmarks/meta_init.py`` compares the two inits on a
held-out domain with 16 examples. ``qlp train --init meta`` computes (or reuses) one over the
registry's domains and registers it signed (:mod:`qlp_ray.train.meta_entry`); every SFT
worker then loads it with :func:`apply_init` (safetensors, SHA-256 checked: no pickle).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qlp_ray.core.errors import InvalidRequest, TrainingError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReptileOptions:
    rounds: int = 24
    inner_steps: int = 5
    inner_lr: float = 5e-3
    meta_lr: float = 0.5  # annealed linearly to 0 over the rounds
    batch_size: int = 8
    max_length: int = 128
    seed: int = 0


def lora_model(base: Any, *, rank: int = 8, alpha: int = 16, seed: int = 0) -> Any:
    """``base`` with a fresh LoRA adapter on the attention projections (seeded init)."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    cfg = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=0.0, task_type="CAUSAL_LM",
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])  # fmt: skip
    return get_peft_model(base, cfg)


def lm_loss(model: Any, tokenizer: Any, texts: Sequence[str], max_length: int = 128) -> Any:
    """Mean next-token loss of ``texts`` (padding masked)."""
    batch = tokenizer(list(texts), return_tensors="pt", padding=True, truncation=True,
                      max_length=max_length)  # fmt: skip
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    return model(**batch, labels=labels).loss


def heldout_loss(model: Any, tokenizer: Any, texts: Sequence[str], batch_size: int = 8) -> float:
    import torch

    model.eval()
    total, n = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(texts), batch_size):
            chunk = texts[i : i + batch_size]
            total += float(lm_loss(model, tokenizer, chunk)) * len(chunk)
            n += len(chunk)
    model.train()
    return total / n


def trainable_state(model: Any) -> dict[str, Any]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def load_state(model: Any, state: dict[str, Any]) -> None:
    import torch

    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in state:
                p.copy_(state[n])


def adapt(model: Any, tokenizer: Any, texts: Sequence[str], *, steps: int, lr: float,
          batch_size: int, max_length: int, rng: random.Random) -> None:  # fmt: skip
    """``steps`` Adam steps of LM loss on random batches of ``texts`` (trainable params)."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        batch = rng.sample(list(texts), min(batch_size, len(texts)))
        loss = lm_loss(model, tokenizer, batch, max_length)
        loss.backward()
        opt.step()
        opt.zero_grad()


def reptile_init(
    model: Any, tokenizer: Any, domains: dict[str, Sequence[str]], opts: ReptileOptions
) -> dict[str, Any]:
    """Meta-learn the trainable (LoRA) weights of ``model`` over ``domains``; returns them
    (and leaves them loaded in ``model``)."""
    if len(domains) < 2:
        raise InvalidRequest("Reptile needs at least two domains")
    rng = random.Random(opts.seed)
    names = sorted(domains)
    meta = trainable_state(model)
    for r in range(opts.rounds):
        domain = names[r % len(names)]
        load_state(model, meta)
        adapt(model, tokenizer, domains[domain], steps=opts.inner_steps, lr=opts.inner_lr,
              batch_size=opts.batch_size, max_length=opts.max_length, rng=rng)  # fmt: skip
        step = opts.meta_lr * (1 - r / opts.rounds)
        adapted = trainable_state(model)
        meta = {n: meta[n] + step * (adapted[n] - meta[n]) for n in meta}
        logger.info("reptile round %d/%d on %s (meta step %.3f)", r + 1, opts.rounds, domain, step)
    load_state(model, meta)
    return meta


def state_digest(state: dict[str, Any]) -> str:
    """SHA-256 over the names, shapes and fp32 bytes of a LoRA state dict (sorted by name)."""
    import hashlib

    import torch

    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().to("cpu", torch.float32).contiguous()
        h.update(f"{name}:{tuple(t.shape)}\n".encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def read_init_state(weights_path: str | Path, sha256: str) -> dict[str, Any]:
    """The tensors of a meta-init's ``adapter_model.safetensors``, if its SHA-256 is the one
    the driver verified in the registry (``TrainingError`` otherwise)."""
    import hashlib

    from safetensors.torch import load

    data = Path(weights_path).read_bytes()
    found = hashlib.sha256(data).hexdigest()
    if found != sha256:
        raise TrainingError(
            f"meta-init weights {weights_path} changed after verification "
            f"(SHA-256 {found[:12]}, expected {sha256[:12]})"
        )
    return load(data)


def apply_init(model: Any, weights_path: str | Path, sha256: str) -> str:
    """Load a meta-init into the LoRA / AdaLoRA weights of ``model`` (a PeftModel, maybe
    wrapped); every adapter tensor must be in the file with the same shape. Returns the
    :func:`state_digest` of the model's adapter weights after loading, which equals the
    file's."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict

    from qlp_ray.train.peft_setup import unwrap_peft_model

    peft_model = unwrap_peft_model(model)
    state = read_init_state(weights_path, sha256)
    own = get_peft_model_state_dict(peft_model)
    missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    wrong = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or extra or wrong:
        raise TrainingError(
            "the meta-init does not fit this run's adapter (rank, target modules or PEFT "
            f"method differ): missing {missing[:3]}, unexpected {extra[:3]}, shape {wrong[:3]}"
        )
    set_peft_model_state_dict(peft_model, state)
    loaded = state_digest(get_peft_model_state_dict(peft_model))
    if loaded != state_digest(state):
        raise TrainingError("the meta-init weights did not load into the adapter")
    logger.info("adapter initialised from meta-init %s (state %s)", weights_path, loaded[:12])
    return loaded


__all__ = [
    "ReptileOptions",
    "adapt",
    "apply_init",
    "heldout_loss",
    "lm_loss",
    "load_state",
    "lora_model",
    "read_init_state",
    "reptile_init",
    "state_digest",
    "trainable_state",
]
