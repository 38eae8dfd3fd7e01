"""Shared setup of the compositor benchmarks: a base model and N real, signed LoRA adapters.

Adapters are real PEFT LoRA adapters (``get_peft_model`` with random, non-zero A and B,
``save_pretrained`` → ``adapter_model.safetensors``), registered and Ed25519-signed in a
real registry under ``QLP_HOME`` (default ``/tmp/qlp_compose3_bench``). The base model
is the built-in tiny Llama at its default size (pre-training shortened: latency does not
depend on how well it was trained).

Importing it puts this process and the Ray cluster it starts in the Serve mode of a cluster
``qlp serve`` starts (``serve.ray_throughput_optimized``: ``RAY_SERVE_THROUGHPUT_OPTIMIZED=1``,
set before ``ray.serve`` is imported): a benchmark driver calls deployments as a gateway
replica of that cluster does, so its handles run on its own event loop (call them inside
one, never with a bare ``.result()``).
"""

from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path
from typing import Any

import torch


def _serve_mode() -> None:
    from qlp_ray.core.config import QLPConfig
    from qlp_ray.core.runtime import serve_env

    for key, value in serve_env(QLPConfig()).items():
        os.environ.setdefault(key, value)


_serve_mode()
BENCH_HOME = Path(os.environ.get("QLP_HOME", "/tmp/qlp_compose3_bench"))
PROMPTS = [
    "Write a SQL query that joins orders and customers and sums revenue per month.",
    "Write a Kubernetes deployment with liveness and readiness probes.",
    "Design a REST endpoint for paginated search with proper status codes.",
    "Write a React component that renders a sortable table with hooks.",
    "Train a logistic regression with scikit-learn and report cross-validated AUC.",
]


def bench_config(home: Path = BENCH_HOME, serve: dict[str, Any] | None = None) -> Any:
    from qlp_ray.core.config import load_config

    os.environ["HF_HUB_OFFLINE"] = "1"
    return load_config(
        overrides={
            "paths": {"home": str(home)},
            "model": {"tiny": {"pretrain_steps": 20}},
            "serve": serve or {},
        },
        environ={},
    )


def save_random_adapter(base: Any, out: Path, seed: int, rank: int = 8) -> Path:
    """A real PEFT LoRA adapter (q/k/v/o, rank ``rank``) with random non-zero weights."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    lora = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        init_lora_weights=False,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
    )
    model = get_peft_model(copy.deepcopy(base), lora)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.2)
    model.save_pretrained(str(out))
    return out


def save_random_adapters(base: Any, outs: list[Path], rank: int = 8) -> list[Path]:
    """Like :func:`save_random_adapter` for many outputs, re-using one PEFT model."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        init_lora_weights=False,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
    )
    model = get_peft_model(copy.deepcopy(base), lora)
    for seed, out in enumerate(outs):
        torch.manual_seed(seed)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_A" in name:
                    p.uniform_(-0.2, 0.2)
                elif "lora_B" in name:
                    p.normal_(0, 0.2)
        model.save_pretrained(str(out))
    return outs


def register_adapters(cfg: Any, base: Any, ids: list[str], *, versions: int = 1) -> Any:
    """Register ``versions`` signed versions of each id (fresh registry); returns it."""
    from qlp_ray.models.base import base_model_id
    from qlp_ray.registry.signing import init_keys
    from qlp_ray.registry.store import Registry

    registry_dir = Path(cfg.registry_uri)
    if registry_dir.exists():
        shutil.rmtree(registry_dir)
    if not (cfg.paths.keys).exists():
        init_keys(cfg.paths.keys)
    registry = Registry(cfg)
    src = cfg.paths.root / "bench_src"
    base_id = base_model_id(cfg)
    outs = [src / f"{adapter_id}-{v}" for v in range(versions) for adapter_id in ids]
    save_random_adapters(base, outs)
    for out in outs:
        adapter_id = out.name.rsplit("-", 1)[0]
        registry.register(out, adapter_id=adapter_id, domain="bench", base_model=base_id)
    shutil.rmtree(src)
    return registry


def percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values), q))
