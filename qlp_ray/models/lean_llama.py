"""A lean forward pass of a Llama-family model for mixed-adapter decoding steps.

The continuous decoder runs one forward per decoding step over rows that each have their
own LoRA adapter. Through transformers + PEFT that forward is mostly per-call overhead on
small models: module dispatch, PEFT wrappers, forward hooks, mask and cache helpers
(~5 ms per step of 16 rows on the 4-layer built-in model, where the arithmetic is a few
hundred µs). :class:`LeanLlama` computes the same function on the model's own weights with
plain tensor ops, as vLLM and other servers do with their own model code:

* the base weights of q/k/v and of gate/up are used concatenated (one matmul each; the
  projections' own weights become views of the fused matrices, so memory is not doubled);
* each row's LoRA delta comes from per-layer stacks of every loaded adapter (the S-LoRA
  layout of :mod:`~qlp_ray.models.batched_lora`): one ``bmm`` with the row's ``A`` of all
  projections of a group at once, then one ``bmm`` per projection with its ``B``
  (``scale`` folded in); the rows' selection is kept while the row set does not change;
* rotary embeddings, RMSNorm and SDPA attention are the model's own formulas, with a
  padding + causal mask over a plain per-layer KV cache (:class:`KVCache`);
* the forward, the rows' selection and the cache merges run as TorchScript functions
  (:mod:`~qlp_ray.models.lean_decoder`), so a decoding step takes the GIL a few times
  instead of around each of its ~300 ops: in a Serve replica, whose event loops want the
  GIL for every request, that was most of an eager step's time.

Only plain Llama is taken (``model_type`` llama, SiLU MLP, no attention or MLP bias,
``pretraining_tp`` 1); anything else returns ``None`` from :meth:`LeanLlama.build` and keeps
the transformers forward. Adapters with a LoRA on any other module (embeddings,
``lm_head``) are listed in :attr:`LeanLlama.unsupported`. Results match the transformers
forward to float rounding (tests/models/test_lean_llama.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from qlp_ray.models.lean_decoder import compile_all, scripted

# Fused groups of one decoder layer: (attribute path of the parent, member projections).
_GROUPS = (
    ("self_attn", ("q_proj", "k_proj", "v_proj")),
    ("self_attn", ("o_proj",)),
    ("mlp", ("gate_proj", "up_proj")),
    ("mlp", ("down_proj",)),
)


@dataclass
class _KV:
    keys: torch.Tensor
    values: torch.Tensor


@dataclass
class KVCache:
    """Per-layer keys and values ``[rows, kv_heads, length, head_dim]`` (the ``layers``
    / ``keys`` / ``values`` shape of transformers' cache, which the continuous decoder
    merges and trims either way)."""

    layers: list[_KV] = field(default_factory=list)


def _base_weight(module: Any) -> torch.Tensor:
    return getattr(module, "base_layer", module).weight


class _Group:
    """One fused projection group of one layer: base weight, output splits, LoRA stacks."""

    def __init__(self, modules: list[Any]) -> None:
        weights = [_base_weight(m) for m in modules]
        self.sizes = [int(w.shape[0]) for w in weights]
        with torch.no_grad():
            self.weight = torch.cat([w.detach() for w in weights])
            if len(weights) > 1:  # the modules' own weights become views of the fused one:
                lo = 0  # no second copy (same values, same row-major layout)
                for w, size in zip(weights, self.sizes, strict=True):
                    w.data = self.weight[lo : lo + size]
                    lo += size
        # LoRA stacks over the slots of LeanLlama.slots (slot 0: no adapter), set by _stack
        self.a: torch.Tensor | None = None  # [slots, in, sum of ranks]
        self.b: list[tuple[int, int, int, torch.Tensor]] = []  # (rank lo, hi, out lo, B*s)


@dataclass
class RowWeights:
    """The rows' adapter weights picked for one row set, per group of every layer in
    order: ``(a [rows, in, R], [(rank lo, rank hi, out lo, b [rows, r, out])])``, or
    ``None`` where no row has a LoRA."""

    adapters: tuple[str | None, ...]
    groups: list[Any]


class LeanLlama:
    """The forward of a (PEFT-wrapped) ``LlamaForCausalLM`` over plain tensors."""

    def __init__(self, model: Any) -> None:
        inner, cfg = model.model, model.config
        self.embed = _base_weight(inner.embed_tokens)
        self.final_norm = (inner.norm.weight, float(inner.norm.variance_epsilon))
        self.lm_head = _base_weight(model.lm_head)
        self.inv_freq = inner.rotary_emb.inv_freq
        self.rope_scale = float(inner.rotary_emb.attention_scaling)
        self.heads = int(cfg.num_attention_heads)
        self.kv_heads = int(getattr(cfg, "num_key_value_heads", None) or self.heads)
        self.head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads)
        self._decoder_layers = inner.layers
        # per layer, in order: the _GROUPS, and the two norms' weights and epsilons
        self.groups = [
            _Group([getattr(getattr(layer, parent), n) for n in names])
            for layer in inner.layers
            for parent, names in _GROUPS
        ]
        norms = [
            n
            for layer in inner.layers
            for n in (layer.input_layernorm, layer.post_attention_layernorm)
        ]
        self.norms = [n.weight for n in norms]
        self.eps = [float(n.variance_epsilon) for n in norms]
        self.mats = [g.weight for g in self.groups]
        compile_all()  # now, not on the first request
        self.slots: dict[str, int] = {}
        self.unsupported: set[str] = set()
        self._picked: RowWeights | None = None

    # -- construction ---------------------------------------------------------------
    @classmethod
    def build(cls, model: Any) -> LeanLlama | None:
        """A lean forward of ``model``, or ``None`` when it is not a plain Llama."""
        cfg = getattr(model, "config", None)
        if cfg is None or getattr(cfg, "model_type", None) != "llama":
            return None
        rope = getattr(cfg, "rope_scaling", None) or getattr(cfg, "rope_parameters", None) or {}
        plain = (
            getattr(cfg, "hidden_act", "silu") == "silu"
            and not getattr(cfg, "attention_bias", False)
            and not getattr(cfg, "mlp_bias", False)
            and int(getattr(cfg, "pretraining_tp", 1) or 1) == 1
            and rope.get("rope_type", rope.get("type", "default")) == "default"
        )
        if not plain or not hasattr(getattr(model, "model", None), "rotary_emb"):
            return None
        return cls(model)

    def load_tables(self, tables: Any) -> None:
        """Stack the adapters of a :class:`~qlp_ray.models.batched_lora.LoRATables`
        (call again whenever the loaded adapters change)."""
        self._picked = None
        self.unsupported = set(tables.unsupported)
        where: dict[int, tuple[int, int, int]] = {}  # id(module) -> (layer, group, member)
        for li, layer in enumerate(self._decoder_layers):  # PEFT may have wrapped them since
            for gi, (parent, names) in enumerate(_GROUPS):
                for mi, name in enumerate(names):
                    where[id(getattr(getattr(layer, parent), name))] = (li, gi, mi)
        names: set[str] = set()
        for table in tables.tables:
            if id(table.layer) not in where:  # e.g. a LoRA on lm_head
                self.unsupported |= set(table.slots)
            names |= set(table.slots)
        self.slots = {n: k for k, n in enumerate(sorted(names), start=1)}
        found: dict[int, dict[int, Any]] = {}  # group index -> member -> table
        for table in tables.tables:
            at = where.get(id(table.layer))
            if at is not None:
                found.setdefault(at[0] * len(_GROUPS) + at[1], {})[at[2]] = table
        for gi, group in enumerate(self.groups):
            self._stack(group, found.get(gi, {}))

    def _stack(self, group: _Group, members: dict[int, Any]) -> None:
        group.a, group.b = None, []
        if not members:
            return
        slots = len(self.slots) + 1
        ranks = {mi: t.a.shape[2] for mi, t in members.items()}
        ref = next(iter(members.values())).a
        group.a = ref.new_zeros(slots, ref.shape[1], sum(ranks.values()))
        lo, out_lo = 0, 0
        for mi, size in enumerate(group.sizes):
            table = members.get(mi)
            if table is not None:
                hi = lo + ranks[mi]
                b = ref.new_zeros(slots, ranks[mi], size)
                for name, k in table.slots.items():
                    slot = self.slots[name]
                    group.a[slot, :, lo:hi] = table.a[k]
                    b[slot] = table.b[k] * table.scale[k]
                group.b.append((lo, hi, out_lo, b))
                lo = hi
            out_lo += size

    def supports(self, names: Sequence[str | None]) -> bool:
        return not ({n for n in names if n is not None} & self.unsupported)

    def rows(self, adapters: Sequence[str | None]) -> RowWeights:
        """Each row's adapter weights (the last row set's selection is reused)."""
        key = tuple(adapters)
        if self._picked is not None and self._picked.adapters == key:
            return self._picked
        slots = [self.slots.get(a, 0) if a is not None else 0 for a in key]
        stacks = [(g.a, g.b) if g.a is not None else None for g in self.groups]
        picked = scripted("_pick_rows")(stacks, torch.tensor(slots), any(slots))
        self._picked = RowWeights(key, picked)
        return self._picked

    # -- forward --------------------------------------------------------------------
    @torch.inference_mode()
    def forward(
        self,
        weights: RowWeights,
        input_ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: KVCache,
    ) -> torch.Tensor:
        """Logits ``[rows, vocab]`` at the last position of ``input_ids [rows, S]``.

        ``mask [rows, T]`` covers the cached length plus ``S`` (1 = real token);
        ``positions [rows, S]`` are the rows' own positions; ``cache`` is extended.
        """
        empty = [self.embed.new_zeros(0)] * len(self._decoder_layers)
        keys = [kv.keys for kv in cache.layers] if cache.layers else empty
        values = [kv.values for kv in cache.layers] if cache.layers else empty
        logits, keys, values = scripted("_decoder_forward")(
            input_ids, mask, positions, self.embed, self.inv_freq, self.rope_scale,
            self.norms, self.eps, self.mats, weights.groups,
            keys, values, self.heads, self.kv_heads, self.head_dim, self.final_norm[0],
            self.final_norm[1], self.lm_head,
        )  # fmt: skip
        cache.layers = [_KV(k, v) for k, v in zip(keys, values, strict=True)]
        return logits


__all__ = ["KVCache", "LeanLlama", "RowWeights"]
