"""Mixed-adapter batches: every row of one forward pass runs through its own LoRA adapter.

PEFT's own mixed batch (``generate(adapter_names=[...])``) loops over the distinct
adapters of the batch in every LoRA layer at every decoding step — with 16 adapters in a
batch of 16 that is ~3-5x slower than the same batch on one adapter. ``RowLoRA`` does what
S-LoRA / Punica do instead: once per batch it gathers each row's ``A`` and ``B`` (zeros for
base-model rows and for layers a row's adapter does not touch; ranks zero-padded to the
largest) into ``[rows, in, r]`` / ``[rows, r, out]`` tensors, and each step adds
``bmm(bmm(x, A), B) * scale`` to the base layer's output — two ``bmm`` per layer whatever
the number of adapters. The LoRA layers themselves run with adapters disabled meanwhile.

Only plain LoRA on ``nn.Linear`` qualifies (``gather_supported``); DoRA and other
variants, LoRA biases, embedding LoRA and ``modules_to_save`` go through PEFT's path.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from peft.tuners.lora.layer import Linear as LoraLinear
from peft.tuners.lora.layer import LoraLayer
from torch.nn import functional as F


def gather_supported(layers: Iterable[Any], names: set[str]) -> bool:
    """Whether adapters ``names`` are plain LoRA on linear layers in every layer."""
    for layer in layers:
        if not isinstance(layer, LoraLayer):
            continue
        if names & set(layer.lora_embedding_A):
            return False
        for name in names & set(layer.lora_A):
            if not isinstance(layer, LoraLinear) or name in layer.lora_variant:
                return False
            if layer.lora_B[name].bias is not None:
                return False
    return True


def _row_weights(
    layer: LoraLinear, adapters: Sequence[str | None]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """``A [rows, in, r]``, ``B [rows, r, out]``, ``scale [rows, 1, 1]``; ``None`` if no row
    uses this layer."""
    present = sorted({a for a in adapters if a is not None and a in layer.lora_A})
    if not present:
        return None
    rank = max(layer.lora_A[a].weight.shape[0] for a in present)
    first_a = layer.lora_A[present[0]].weight
    out_features = layer.lora_B[present[0]].weight.shape[0]
    zero = (first_a.new_zeros(rank, first_a.shape[1]), first_a.new_zeros(out_features, rank), 0.0)
    per_name: dict[str | None, tuple[torch.Tensor, torch.Tensor, float]] = {}
    for name in present:
        a, b = layer.lora_A[name].weight, layer.lora_B[name].weight
        pad = rank - a.shape[0]
        if pad:
            a, b = F.pad(a, (0, 0, 0, pad)), F.pad(b, (0, pad))
        per_name[name] = (a, b, float(layer.scaling[name]))
    rows = [per_name.get(a, zero) for a in adapters]
    a_rows = torch.stack([r[0] for r in rows]).transpose(1, 2).contiguous()
    b_rows = torch.stack([r[1] for r in rows]).transpose(1, 2).contiguous()
    scale = torch.tensor([r[2] for r in rows], dtype=first_a.dtype).view(-1, 1, 1)
    return a_rows, b_rows, scale


class RowLoRA:
    """Context manager: forward hooks adding row ``i``'s adapter delta to row ``i``.

    Use inside ``PeftModel.disable_adapter()`` so the layers compute the base output only.
    """

    def __init__(self, layers: Iterable[Any], adapters: Sequence[str | None]) -> None:
        self.rows = len(adapters)
        self._plan = []
        for layer in layers:
            if isinstance(layer, LoraLinear):
                weights = _row_weights(layer, adapters)
                if weights is not None:
                    self._plan.append((layer, weights))
        self._handles: list[Any] = []

    def _hook(self, weights: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> Any:
        a_rows, b_rows, scale = weights

        def add_delta(module: Any, args: tuple[Any, ...], output: torch.Tensor) -> torch.Tensor:
            x = args[0]
            if x.dim() != 3 or x.shape[0] != self.rows:
                raise RuntimeError(f"batched LoRA expects [{self.rows}, seq, in], got {x.shape}")
            delta = torch.bmm(torch.bmm(x.to(a_rows.dtype), a_rows), b_rows) * scale
            return output + delta.to(output.dtype)

        return add_delta

    def __enter__(self) -> RowLoRA:
        for layer, weights in self._plan:
            self._handles.append(layer.register_forward_hook(self._hook(weights)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()


__all__ = ["RowLoRA", "gather_supported"]
