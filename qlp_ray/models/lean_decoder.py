"""The decoder forward of :class:`~qlp_ray.models.lean_llama.LeanLlama`, for TorchScript.

Plain functions over tensors and lists, compiled once per process by :func:`scripted`
(:func:`compile_all` at backend start). The KV-cache helpers serve the continuous decoder
with the lean :class:`~qlp_ray.models.lean_llama.KVCache` and with transformers'
``DynamicCache`` alike. The annotations are ``typing`` generics evaluated at import (no
``from __future__ import annotations``) because TorchScript reads them.
"""

# ruff: noqa: UP006, UP007, UP035, UP045 - TorchScript reads these typing annotations

from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import rotate_half

LoRA = Optional[Tuple[torch.Tensor, List[Tuple[int, int, int, torch.Tensor]]]]


def _norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """LlamaRMSNorm."""
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def _project(x: torch.Tensor, weight: torch.Tensor, lora: LoRA) -> torch.Tensor:
    """The fused base matmul plus each row's LoRA delta (in the adapters' dtype, which
    PEFT may keep at float32 over a half-precision base)."""
    out = F.linear(x, weight)
    if lora is not None:
        a, bs = lora
        t = torch.bmm(x.to(a.dtype), a)
        for lo, hi, out_lo, b in bs:
            delta = torch.bmm(t[:, :, lo:hi], b).to(out.dtype)
            out[:, :, out_lo : out_lo + b.shape[2]] += delta
    return out


def _decoder_forward(
    input_ids: torch.Tensor,
    mask: torch.Tensor,
    positions: torch.Tensor,
    embed: torch.Tensor,
    inv_freq: torch.Tensor,
    rope_scale: float,
    norms: List[torch.Tensor],
    eps: List[float],
    mats: List[torch.Tensor],
    loras: List[LoRA],
    keys: List[torch.Tensor],
    values: List[torch.Tensor],
    heads: int,
    kv_heads: int,
    head_dim: int,
    final_norm: torch.Tensor,
    final_eps: float,
    lm_head: torch.Tensor,
) -> Tuple[torch.Tensor, List[torch.Tensor], List[torch.Tensor]]:
    """The whole decoder: per layer ``norms``/``eps`` [2 per layer], ``mats`` and
    ``loras`` [q/k/v, o, gate/up, down per layer], cache ``keys``/``values`` (empty
    tensors before the first forward); the last position's logits and the new cache."""
    rows, s = input_ids.shape[0], input_ids.shape[1]
    h = F.embedding(input_ids, embed)
    # rotary embeddings as LlamaRotaryEmbedding computes them (default rope)
    freqs = positions[:, :, None].float() * inv_freq.float()
    emb = torch.cat((freqs, freqs), dim=-1)
    cos = (emb.cos() * rope_scale).to(h.dtype).unsqueeze(1)
    sin = (emb.sin() * rope_scale).to(h.dtype).unsqueeze(1)
    # query i (absolute column total - s + i) sees valid columns up to itself, and
    # always itself, so padding queries stay finite
    total = mask.shape[1]
    cols = torch.arange(total)
    qcols = cols[total - s :].view(s, 1)
    allowed = (mask.to(torch.bool).view(rows, 1, 1, total) & (cols <= qcols)) | (cols == qcols)
    q_size, kv_size = heads * head_dim, kv_heads * head_dim
    new_keys: List[torch.Tensor] = []
    new_values: List[torch.Tensor] = []
    for i in range(len(keys)):
        x = _norm(h, norms[2 * i], eps[2 * i])
        qkv = _project(x, mats[4 * i], loras[4 * i])
        # rotary embeddings of q and k in one pass over their heads
        qk = qkv[:, :, : q_size + kv_size].reshape(rows, s, heads + kv_heads, head_dim)
        qk = qk.transpose(1, 2)
        qk = qk * cos + rotate_half(qk) * sin
        q, k = qk[:, :heads], qk[:, heads:]
        v = qkv[:, :, q_size + kv_size :].reshape(rows, s, kv_heads, head_dim).transpose(1, 2)
        if keys[i].numel() > 0:
            k = torch.cat([keys[i], k], dim=2)
            v = torch.cat([values[i], v], dim=2)
        new_keys.append(k)
        new_values.append(v)
        attn = F.scaled_dot_product_attention(
            q, k, v, attn_mask=allowed, enable_gqa=kv_heads != heads
        )
        attn = attn.transpose(1, 2).reshape(rows, s, q_size)
        h = h + _project(attn, mats[4 * i + 1], loras[4 * i + 1])
        x = _norm(h, norms[2 * i + 1], eps[2 * i + 1])
        gu = _project(x, mats[4 * i + 2], loras[4 * i + 2])
        inter = gu.shape[-1] // 2
        act = F.silu(gu[:, :, :inter]) * gu[:, :, inter:]
        h = h + _project(act, mats[4 * i + 3], loras[4 * i + 3])
    last = _norm(h[:, -1, :], final_norm, final_eps)
    return F.linear(last, lm_head), new_keys, new_values


def _pick_rows(stacks: List[LoRA], idx: torch.Tensor, any_adapter: bool) -> List[LoRA]:
    """Each row's slice (slot ``idx[row]``) of every group's stacked LoRA weights."""
    picked: List[LoRA] = []
    for stack in stacks:
        entry: LoRA = None
        if stack is not None and any_adapter:  # else every row is the base model here
            a, bs = stack
            rows_b: List[Tuple[int, int, int, torch.Tensor]] = []
            for lo, hi, out_lo, b in bs:
                rows_b.append((lo, hi, out_lo, b.index_select(0, idx)))
            entry = (a.index_select(0, idx), rows_b)
        picked.append(entry)
    return picked


def left_pad(t: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """``t`` with zeros prepended along ``dim`` up to ``width``."""
    missing = width - t.shape[dim]
    if missing <= 0:
        return t
    shape = list(t.shape)
    shape[dim] = missing
    return torch.cat([t.new_zeros(shape), t], dim=dim)


def merge_cache(old: List[torch.Tensor], new: List[torch.Tensor], width: int) -> List[torch.Tensor]:
    """Rows of ``new`` appended to ``old`` (per-layer keys or values), both left-padded
    to ``width`` columns."""
    out: List[torch.Tensor] = []
    for i in range(len(old)):
        out.append(torch.cat([left_pad(old[i], width, 2), left_pad(new[i], width, 2)]))
    return out


def select_cache(cache: List[torch.Tensor], idx: torch.Tensor, first: int) -> List[torch.Tensor]:
    """Rows ``idx`` of each layer's keys or values, from column ``first`` on."""
    out: List[torch.Tensor] = []
    for t in cache:
        out.append(t.index_select(0, idx)[:, :, first:])
    return out


_SCRIPTED: Dict[str, Any] = {}


def scripted(name: str) -> Any:
    """The TorchScript compilation of this module's function ``name``, once per process.

    Not for speed of the ops themselves: a scripted call releases the GIL once for all
    its ops, where eager mode releases and re-takes it around each op (~300 in a
    decoding step of the built-in model). In a Serve replica the event loop threads take
    the GIL at each of those points, which made an eager decoding step several times
    slower than the same step alone.
    """
    if name not in _SCRIPTED:
        _SCRIPTED[name] = torch.jit.script(globals()[name])
    return _SCRIPTED[name]


def compile_all() -> None:
    """Compile every function the lean decoder calls (at backend start, not on a request)."""
    for name in ("_decoder_forward", "_pick_rows", "merge_cache", "select_cache"):
        scripted(name)


__all__ = ["compile_all", "left_pad", "merge_cache", "scripted", "select_cache"]
