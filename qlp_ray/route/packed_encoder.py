"""Packed (unpadded) batches for the router's OpenVINO encoder.

A padded batch pays for its longest text in every row: issue titles run from 5 to 31
tokens (13 at the median), so a batch of 18 padded per chunk computes about 1.6x the
tokens it holds. A *packed* batch concatenates the texts into one sequence: position ids
restart at every text and a block-diagonal attention mask built from segment ids keeps
each text to its own tokens, so every token is computed once. The texts' mean-pooled,
L2-normalised embeddings are taken from the token states here in NumPy
(:func:`segment_means`).

Only a sentence-transformers model made of a Transformer, *mean* pooling and Normalize
(as MiniLM) can be packed; for any other layout :func:`cached_packed_ir` returns ``None``
and the encoder keeps its padded path. The packed graph is exported once per model
fingerprint next to the padded one, and the encoder checks its vectors against the padded
graph on probe texts before it uses it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from qlp_ray.route.openvino_ir import export_into_place, run_in_waves

logger = logging.getLogger(__name__)

PACKED_DIR = "packed-1"  # beside the padded IR; bump the number when the packed graph changes
PACKED_IR_FILE = "packed.xml"
PACKED_META_FILE = "packed.json"
PACK_MULTIPLE = 16  # pack widths are rounded up to this: a few shapes, kernels stay planned
PACK_CAP = 256  # tokens per pack: attention grows with the square of a pack's width
_INPUTS = ("input_ids", "position_ids", "segment_ids")
_PAD_SEGMENT = -1  # padding at a pack's end attends only to itself; its states are dropped
# the packed graph must reproduce the padded one on these before batches use it
PROBE_TEXTS = (
    "Add pagination to the list endpoint",
    "CI pipeline fails after upgrading the container base image",
    "ok",
    "Training loss becomes NaN with mixed precision on the second epoch of fine-tuning",
    "Slow join in the nightly warehouse load",
    "Button focus ring missing",
)
PACKED_MIN_COSINE = 0.999


def plan_packs(lengths: Sequence[int], streams: int, cap: int = PACK_CAP) -> list[list[int]]:
    """Split texts (token ``lengths``) into packs of about equal tokens: enough packs for
    ``cap`` tokens each on average, a whole number of waves of ``streams`` packs (one per
    inference stream), no more packs than texts. Longest text first into the lightest pack,
    so no pack exceeds the mean by more than one text. Returns text indices per pack."""
    n = len(lengths)
    if n == 0:
        return []
    total = sum(lengths)
    packs = max(-(-total // max(cap, 1)), max(streams, 1))
    packs = min(-(-packs // max(streams, 1)) * max(streams, 1), n)  # whole waves of streams
    loads = [0] * packs
    members: list[list[int]] = [[] for _ in range(packs)]
    for i in sorted(range(n), key=lambda i: -lengths[i]):  # longest first, into the lightest
        k = min(range(packs), key=loads.__getitem__)
        loads[k] += lengths[i]
        members[k].append(i)
    return [m for m in members if m]


def pack_feed(seqs: Sequence[Sequence[int]]) -> dict[str, np.ndarray]:
    """The packed graph's inputs for token id sequences: ``(1, width)`` int64 arrays."""
    total = sum(len(s) for s in seqs)
    width = -(-total // PACK_MULTIPLE) * PACK_MULTIPLE
    ids = np.zeros((1, width), dtype=np.int64)
    pos = np.zeros((1, width), dtype=np.int64)
    seg = np.full((1, width), _PAD_SEGMENT, dtype=np.int64)
    at = 0
    for k, s in enumerate(seqs):
        ids[0, at : at + len(s)] = s
        pos[0, at : at + len(s)] = np.arange(len(s))
        seg[0, at : at + len(s)] = k
        at += len(s)
    return {"input_ids": ids, "position_ids": pos, "segment_ids": seg}


def segment_means(states: np.ndarray, lengths: Sequence[int]) -> np.ndarray:
    """Mean of each text's token states (texts back to back from row 0), L2-normalised."""
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    sums = np.add.reduceat(states[: int(sum(lengths))], starts, axis=0)
    means = sums / np.asarray(lengths, dtype=np.float32)[:, None]
    norms = np.linalg.norm(means, axis=1, keepdims=True)
    return (means / np.maximum(norms, 1e-12)).astype(np.float32)


def unsupported_reason(st: Any) -> str | None:
    """Why the sentence-transformers model ``st`` cannot be packed (``None`` if it can)."""
    kinds = [type(m).__name__ for m in st]
    if kinds != ["Transformer", "Pooling", "Normalize"]:
        return f"modules {kinds}, packing needs Transformer, Pooling, Normalize"
    cfg = st[1].get_config_dict()
    if "pooling_mode" in cfg:  # sentence-transformers >= 5: one mode by name
        modes = {cfg["pooling_mode"]} if isinstance(cfg["pooling_mode"], str) else {"?"}
    else:  # older configs: one flag per mode
        on = [k for k, v in cfg.items() if k.startswith("pooling_mode_") and v]
        modes = {"mean" if k == "pooling_mode_mean_tokens" else k for k in on}
    if modes != {"mean"}:
        return f"pooling {sorted(modes)}, packing needs mean pooling alone"
    return None


def export_packed_ir(model_dir: Path, out_dir: Path) -> bool:
    """Export the packed graph of ``model_dir`` to ``out_dir``; ``False`` (and a meta file
    naming the reason) when the model's layout cannot be packed."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import openvino as ov
    import torch
    from sentence_transformers import SentenceTransformer

    t0 = time.perf_counter()
    st = SentenceTransformer(str(model_dir), device="cpu").eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    reason = unsupported_reason(st)
    if reason is not None:
        (out_dir / PACKED_META_FILE).write_text(json.dumps({"packed": False, "reason": reason}))
        return False
    transformer = st[0].auto_model
    uses_token_types = "token_type_ids" in st.tokenizer.model_input_names

    class _Packed(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.transformer = transformer

        def forward(
            self, input_ids: torch.Tensor, position_ids: torch.Tensor, segment_ids: torch.Tensor
        ) -> torch.Tensor:
            mask = (segment_ids[:, :, None] == segment_ids[:, None, :])[:, None]  # block diagonal
            extra = {"token_type_ids": torch.zeros_like(input_ids)} if uses_token_types else {}
            out = self.transformer(
                input_ids=input_ids, attention_mask=mask, position_ids=position_ids, **extra
            )
            return out.last_hidden_state

    example = pack_feed([[101, 2023, 102], [101, 2060, 2742, 102]])
    with torch.no_grad():
        ov_model = ov.convert_model(
            _Packed(),
            example_input={k: torch.from_numpy(v) for k, v in example.items()},
            input=[(n, ov.PartialShape([1, -1]), ov.Type.i64) for n in _INPUTS],
        )
    ov.save_model(ov_model, str(out_dir / PACKED_IR_FILE), compress_to_fp16=False)
    (out_dir / PACKED_META_FILE).write_text(json.dumps({"packed": True}))
    logger.info("exported packed %s in %.1f s", model_dir.name, time.perf_counter() - t0)
    return True


def cached_packed_ir(model_dir: Path, ir_dir: Path) -> Path | None:
    """The packed IR in ``ir_dir/<PACKED_DIR>`` (exported on first use), or ``None`` when
    the model cannot be packed. The export goes to a temporary directory renamed into
    place, so concurrent processes never read half an export or mix two."""

    target = export_into_place(
        ir_dir / PACKED_DIR, PACKED_META_FILE, lambda out: export_packed_ir(model_dir, out)
    )
    info = json.loads((target / PACKED_META_FILE).read_text())
    if not info.get("packed"):
        logger.info("router encoder %s is not packed: %s", model_dir.name, info.get("reason"))
        return None
    return target / PACKED_IR_FILE


class PackedRunner:
    """Runs packed batches on ``streams`` parallel inference requests of a compiled model."""

    def __init__(self, compiled: Any, streams: int, cap: int = PACK_CAP) -> None:
        self.streams = max(int(streams), 1)
        self.cap = cap
        self._requests = [compiled.create_infer_request() for _ in range(self.streams)]

    def encode(self, seqs: Sequence[Sequence[int]], dim: int) -> np.ndarray:
        """Unit-norm mean embeddings of token id sequences, in their order (caller locks)."""

        lengths = [len(s) for s in seqs]
        out = np.empty((len(seqs), dim), dtype=np.float32)

        def take(members: list[int], states: np.ndarray) -> None:
            out[members] = segment_means(states[0], [lengths[i] for i in members])

        packs = plan_packs(lengths, self.streams, self.cap)
        run_in_waves(self._requests, packs, lambda m: pack_feed([seqs[i] for i in m]), take)
        return out


__all__ = [
    "PACK_CAP",
    "PACKED_DIR",
    "PackedRunner",
    "cached_packed_ir",
    "export_packed_ir",
    "pack_feed",
    "plan_packs",
    "segment_means",
    "unsupported_reason",
]
