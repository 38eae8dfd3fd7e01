"""The vLLM tests: they run in the second venv ``.venv-vllm`` (scripts/vllm_venv.sh, `make
test` runs them after the main suite) and skip where vllm is not installed.

One session home holds a tiny built-in model vLLM can run (head size 32: its CPU attention
supports 32 and up) and a signed registry with three adapters; the backend module and the
Serve module share it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("vllm", reason="vllm is not installed here (scripts/vllm_venv.sh)")

# built in ~20 s; head_dim = 64 / 2 = 32
VLLM_TINY = {"hidden_size": 64, "num_heads": 2, "num_layers": 2, "intermediate_size": 128,
             "vocab_size": 1024, "pretrain_steps": 40}  # fmt: skip
# (adapter id, seed, rank): random non-zero LoRAs on q/v, visibly changing greedy text
ADAPTERS = [("dataeng", 1, 4), ("frontend", 2, 4), ("devops", 3, 8)]
PROMPT = "### Instruction:\nWrite a SQL query that joins orders and customers\n\n### Response:\n"


def vllm_cfg(home: Path, serve: dict[str, Any] | None = None):
    from qlp_ray.core.config import load_config

    serve = {"backend": "vllm", "vllm_max_lora_rank": 16, **(serve or {})}
    overrides = {"paths": {"home": str(home)}, "model": {"tiny": VLLM_TINY}, "serve": serve}
    return load_config(overrides=overrides, environ={})


@pytest.fixture(scope="session")
def signed_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A home with the tiny model, signing keys and the :data:`ADAPTERS` registered, signed."""
    from transformers import AutoModelForCausalLM

    from qlp_ray.models.base import base_model_id
    from qlp_ray.models.tiny import build_tiny_model
    from qlp_ray.registry.signing import PRIVATE_KEY_FILE, init_keys
    from qlp_ray.registry.store import Registry
    from tests.helpers.tiny_lm import save_random_lora

    os.environ["HF_HUB_OFFLINE"] = "1"
    pinned = os.environ.get("QLP_VLLM_TEST_HOME")  # reuse a home (its built model) while developing
    home = Path(pinned) if pinned else tmp_path_factory.mktemp("vllm_home")
    home.mkdir(parents=True, exist_ok=True)
    cfg = vllm_cfg(home)
    base = AutoModelForCausalLM.from_pretrained(str(build_tiny_model(cfg)))
    if not (cfg.paths.keys / PRIVATE_KEY_FILE).is_file():
        init_keys(cfg.paths.keys)
    registry = Registry(cfg)
    for adapter_id, seed, rank in ADAPTERS:
        if adapter_id in registry.storage.adapter_ids():  # a reused home
            continue
        src = save_random_lora(base, home / "src" / adapter_id, seed, r=rank, b_std=2.0)
        registry.register(src, adapter_id=adapter_id, domain=adapter_id,
                          base_model=base_model_id(cfg))  # fmt: skip
    return home
