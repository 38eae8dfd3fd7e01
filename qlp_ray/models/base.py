"""Loading the base model and tokenizer named by ``model.base_model``.

``builtin:tiny-llama`` builds (or reuses) the cached tiny model; anything else is a
Hugging Face id or a local directory loaded with ``AutoModelForCausalLM``. The
*base model id* recorded in every adapter manifest pins the exact weights an
adapter was trained on, so an adapter can never be applied to another base.
"""

from __future__ import annotations

import logging
from pathlib import Path

from qlp_ray.core.config import BUILTIN_TINY, QLPConfig
from qlp_ray.core.errors import ConfigError
from qlp_ray.models.tiny import build_tiny_model, fingerprint

logger = logging.getLogger(__name__)


def base_model_id(cfg: QLPConfig) -> str:
    """Stable id of the configured base model (the builtin one includes its fingerprint)."""
    name = cfg.model.base_model
    if name == BUILTIN_TINY:
        return f"{BUILTIN_TINY}@{fingerprint(cfg.model.tiny)}"
    if name.startswith("builtin:"):
        raise ConfigError(
            f"`model.base_model`: unknown builtin model {name!r} (have {BUILTIN_TINY!r})"
        )
    return name


def resolve_base_path(cfg: QLPConfig) -> str:
    """A path or hub id that ``from_pretrained`` accepts (building the builtin model if needed)."""
    name = cfg.model.base_model
    if name == BUILTIN_TINY:
        return str(build_tiny_model(cfg))
    base_model_id(cfg)  # validates builtin: names
    local = Path(name).expanduser()
    if local.exists():
        if not (local / "config.json").is_file():
            raise ConfigError(f"`model.base_model` {name!r} is a path but holds no config.json")
        return str(local.resolve())
    return name


def load_tokenizer(cfg: QLPConfig):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_base_path(cfg))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_base(cfg: QLPConfig, *, device: str = "cpu", dtype=None):
    """Return ``(model, tokenizer)`` for the configured base model, in eval mode."""
    import torch
    from transformers import AutoModelForCausalLM

    path = resolve_base_path(cfg)
    tokenizer = load_tokenizer(cfg)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype or torch.float32)
    model.to(device)
    model.eval()
    logger.info("loaded base model %s (%s)", base_model_id(cfg), path)
    return model, tokenizer
