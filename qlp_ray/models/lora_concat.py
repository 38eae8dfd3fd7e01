"""A weighted adapter stack materialised as one LoRA: ranks concatenated (no Ray, no vLLM).

A stack ``Σ w_i · s_i · B_i A_i`` (``s_i`` = the member's scaling, ``alpha/r`` or
``alpha/sqrt(r)`` with rsLoRA) is exactly one LoRA of rank ``Σ r_i``::

    A = [w_1 s_1 A_1; …; w_n s_n A_n]   (rows stacked)
    B = [B_1 … B_n]                      (columns side by side),  scaling 1

the same delta as PEFT's ``add_weighted_adapter(..., combination_type="cat")``. A module
only some members adapt gets zero rows/columns for the others. Engines that take adapters
as directories (vLLM) load the result like any adapter.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from qlp_ray.core.errors import InvalidRequest
from qlp_ray.models.hf_backend import ADAPTER_CONFIG, ADAPTER_WEIGHTS, check_adapter_dir

_A, _B = ".lora_A.weight", ".lora_B.weight"
# adapter features a plain concatenation cannot carry over
_UNSUPPORTED = ("rank_pattern", "alpha_pattern", "modules_to_save", "use_dora", "layer_replication")


def _member(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    adapter_dir = check_adapter_dir(path)
    config = json.loads((adapter_dir / ADAPTER_CONFIG).read_text())
    for key in _UNSUPPORTED:
        if config.get(key):
            raise InvalidRequest(
                f"adapter {adapter_dir.name!r} sets {key!r}: it cannot be stacked by rank "
                "concatenation (serve it alone)",
                param="model",
            )
    if config.get("bias", "none") != "none":
        raise InvalidRequest(f"adapter {adapter_dir.name!r} trains biases: cannot be stacked")
    return config, load_file(str(adapter_dir / ADAPTER_WEIGHTS), device="cpu")


def _scaling(config: dict[str, Any]) -> float:
    r, alpha = int(config["r"]), float(config.get("lora_alpha", config["r"]))
    return alpha / math.sqrt(r) if config.get("use_rslora") else alpha / r


def concat_stack(paths: Sequence[str | Path], weights: Sequence[float], out: Path) -> int:
    """Write the stack of adapter directories ``paths`` with ``weights`` to ``out`` as one
    LoRA; returns its rank (the sum of the members')."""
    if len(paths) != len(weights) or not paths:
        raise InvalidRequest("a stack needs one weight per member and at least one member")
    members = [_member(Path(p)) for p in paths]
    ranks = [int(c["r"]) for c, _ in members]
    modules = sorted({k[: -len(_A)] for _, w in members for k in w if k.endswith(_A)})
    tensors: dict[str, torch.Tensor] = {}
    for module in modules:
        a_rows, b_cols = [], []
        shape = next((w[module + _A].shape[1], w[module + _B].shape[0]) for _, w in members
                      if module + _A in w)  # fmt: skip
        for (config, w), r, weight in zip(members, ranks, weights, strict=True):
            if module + _A in w:
                a, b = w[module + _A].float(), w[module + _B].float()
                a_rows.append(a * (weight * _scaling(config)))
                b_cols.append(b)
            else:
                a_rows.append(torch.zeros(r, shape[0]))
                b_cols.append(torch.zeros(shape[1], r))
        tensors[module + _A] = torch.cat(a_rows, 0).contiguous()
        tensors[module + _B] = torch.cat(b_cols, 1).contiguous()
    rank = sum(ranks)
    config = dict(members[0][0])
    targets = sorted({t for c, _ in members for t in _targets(c)})
    config.update(r=rank, lora_alpha=rank, use_rslora=False, target_modules=targets,
                  rank_pattern={}, alpha_pattern={})  # fmt: skip
    out.mkdir(parents=True, exist_ok=True, mode=0o700)
    save_file(tensors, str(out / ADAPTER_WEIGHTS))
    (out / ADAPTER_CONFIG).write_text(json.dumps(config, indent=2))
    return rank


def _targets(config: dict[str, Any]) -> list[str]:
    targets = config.get("target_modules") or []
    if isinstance(targets, str):  # a regex in PEFT; vLLM wants names
        raise InvalidRequest("an adapter with a regex target_modules cannot be stacked")
    return list(targets)


__all__ = ["concat_stack"]
