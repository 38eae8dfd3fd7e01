"""Mixed-adapter batches: every row of one forward pass runs through its own LoRA adapter.

PEFT's own mixed batch (``generate(adapter_names=[...])``) loops over the distinct
adapters of the batch in every LoRA layer at every decoding step — with 16 adapters in a
batch of 16 it was ~3x slower here than the same batch on one adapter — and refuses DoRA.
This does what S-LoRA / Punica do instead: :class:`LoRATables` stacks, per LoRA layer,
the ``A`` and ``B`` of every loaded adapter (ranks zero-padded to the largest, slot 0 all
zeros for base-model rows and adapters that skip the layer); :meth:`LoRATables.rows`
picks each row's slot with one ``index_select`` per batch, and each step adds
``bmm(bmm(x, A), B) * scale`` to the base layer's output — two ``bmm`` per layer whatever
the number of adapters. The LoRA layers themselves run with no active adapter meanwhile.

Only plain LoRA on ``nn.Linear`` is stacked; adapters with a variant (DoRA, ...), a LoRA
bias or embedding LoRA are listed in ``unsupported`` and run one adapter per batch.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from peft.tuners.lora.layer import Linear as LoraLinear
from peft.tuners.lora.layer import LoraLayer


class _Table:
    """One layer's stacked adapters: ``a [n+1, in, r]``, ``b [n+1, r, out]``, ``scale``."""

    def __init__(self, layer: LoraLinear, names: list[str]) -> None:
        self.layer = layer
        self.slots = {name: k for k, name in enumerate(names, start=1)}
        first = layer.lora_A[names[0]].weight
        rank = max(layer.lora_A[n].weight.shape[0] for n in names)
        out_features = layer.lora_B[names[0]].weight.shape[0]
        self.a = first.new_zeros(len(names) + 1, first.shape[1], rank)
        self.b = first.new_zeros(len(names) + 1, rank, out_features)
        self.scale = first.new_zeros(len(names) + 1)
        with torch.no_grad():
            for name, k in self.slots.items():
                a, b = layer.lora_A[name].weight, layer.lora_B[name].weight
                self.a[k, :, : a.shape[0]] = a.T
                self.b[k, : b.shape[1], :] = b.T
                self.scale[k] = float(layer.scaling[name])


class LoRATables:
    """Stacked weights of every loaded plain-LoRA adapter, per layer (rebuild on change)."""

    def __init__(self, layers: Iterable[Any]) -> None:
        self.tables: list[_Table] = []
        self.unsupported: set[str] = set()
        for layer in layers:
            if not isinstance(layer, LoraLayer):
                continue
            self.unsupported |= set(layer.lora_embedding_A)
            plain = []
            for name in layer.lora_A:
                ok = isinstance(layer, LoraLinear) and name not in layer.lora_variant
                if ok and layer.lora_B[name].bias is None:
                    plain.append(name)
                else:
                    self.unsupported.add(name)
            if plain and isinstance(layer, LoraLinear):
                self.tables.append(_Table(layer, plain))

    def supports(self, names: Iterable[str]) -> bool:
        """Whether rows of adapters ``names`` can share a batch."""
        return not (set(names) & self.unsupported)

    def rows(self, adapters: Sequence[str | None]) -> RowLoRA:
        """Hooks running row ``i`` with ``adapters[i]`` (``None`` = base model)."""
        plan = []
        for table in self.tables:
            slots = [table.slots.get(a, 0) if a is not None else 0 for a in adapters]
            if not any(slots):
                continue
            idx = torch.tensor(slots, device=table.a.device)
            weights = (
                table.a.index_select(0, idx),
                table.b.index_select(0, idx),
                table.scale.index_select(0, idx).view(-1, 1, 1),
            )
            plan.append((table.layer, weights))
        return RowLoRA(plan, len(adapters))


class RowLoRA:
    """Context manager: forward hooks adding row ``i``'s adapter delta to row ``i``.

    The layers must have no active adapter meanwhile (they compute the base output).
    """

    def __init__(self, plan: list[tuple[Any, tuple[torch.Tensor, ...]]], rows: int) -> None:
        self._plan = plan
        self.rows = rows
        self._handles: list[Any] = []

    def _hook(self, weights: tuple[torch.Tensor, ...]) -> Any:
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


__all__ = ["LoRATables", "RowLoRA"]
