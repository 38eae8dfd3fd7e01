"""Iteration-level ("continuous") batching of rows with mixed adapters.

Request-level batching runs a batch to its end before the next one starts, so under a
closed loop the load splits into cohorts that never merge: rows arriving while a batch
generates wait for all of it, and the next batch is small. Here rows join the running
batch at the next decoding step and leave it as soon as they are done (as in Orca and
vLLM's schedulers):

* :meth:`ContinuousDecoder.admit` prefills the new rows (left-padded, each with its own
  adapter through :class:`~qlp_ray.models.batched_lora.RowLoRA`) and merges their KV cache
  into the running one (both left-padded to the longer length);
* :meth:`ContinuousDecoder.step` decodes one token for every running row and returns the
  rows that ended (EOS, their ``max_new_tokens``, or a stop string);
* :meth:`ContinuousDecoder.cancel` drops rows whose caller is gone (a disconnected client),
  freeing their slot and cache columns at once.

Every token a call decodes is also listed in :attr:`ContinuousDecoder.emitted` (``(key,
token)`` in order), for callers that stream tokens as they come.

A greedy row gets the tokens, counts and finish reason that
``TransformersBackend.generate`` gives it alone: positions come from the row's own tokens,
padding is masked out. A sampled row (``temperature > 0``) draws each token from its own
``torch.Generator`` (seeded with the request's ``seed``, else at random) after the
temperature, top-k (the model's ``generation_config``) and top-p warpers of transformers'
``generate``: the same distribution, and with a seed the same sample whatever the rows
beside it (not the same draw as ``generate``, whose generator is global). Only rows of
plain-LoRA adapters (or the base model) run here; the backend decides which
(``TransformersBackend.continuous_ok``). Not thread-safe: one caller drives it.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from transformers.generation.logits_process import (
    LogitsProcessorList,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from qlp_ray.models.backend import AdapterNotLoaded, Generation, GenerationRequest
from qlp_ray.models.lean_decoder import left_pad, scripted
from qlp_ray.models.logprobs import token_entry

if TYPE_CHECKING:
    from qlp_ray.models.hf_backend import TransformersBackend


class RowSampler:
    """One sampled row's warpers (as ``generate`` applies them) and random generator."""

    def __init__(self, request: GenerationRequest, top_k: int | None) -> None:
        warpers: list[Any] = [TemperatureLogitsWarper(request.temperature)]
        if top_k:
            warpers.append(TopKLogitsWarper(top_k))
        if request.top_p < 1.0:
            warpers.append(TopPLogitsWarper(request.top_p))
        self.warpers = LogitsProcessorList(warpers)
        seed = request.seed if request.seed is not None else random.getrandbits(63)
        self.generator = torch.Generator().manual_seed(seed)

    def draw(self, logits: torch.Tensor) -> int:
        """A token drawn from one row's last-position ``logits`` ``[vocab]``."""
        scores = self.warpers(_NO_IDS, logits.float().view(1, -1))
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self.generator))


_NO_IDS = torch.zeros((1, 0), dtype=torch.long)  # the warpers above do not read input ids


@dataclass
class _Row:
    request: GenerationRequest
    adapter: str | None
    prompt_len: int
    key: Any  # the caller's handle for this row
    sampler: RowSampler | None = None  # None: greedy
    new_ids: list[int] = field(default_factory=list)
    logprobs: list[dict] = field(default_factory=list)  # filled only when the request asks
    started: float = field(default_factory=time.perf_counter)


class ContinuousDecoder:
    """Running rows of one backend; rows join (:meth:`admit`) and leave at steps."""

    def __init__(self, backend: TransformersBackend) -> None:
        self.backend = backend
        self.rows: list[_Row] = []
        self._cache: Any = None  # the backend's new_cache(): per-layer keys and values
        self._mask = torch.zeros((0, 0), dtype=torch.long)  # [rows, cached length]
        self._next = torch.zeros((0,), dtype=torch.long)  # each row's next input token
        self._pos = torch.zeros((0,), dtype=torch.long)  # ... and its position
        self.steps = 0  # forwards run (prefills + decoding steps)
        config = getattr(getattr(backend, "_base", None), "generation_config", None)
        self._top_k: int | None = getattr(config, "top_k", None)  # as generate() samples
        self.emitted: list[tuple[Any, int]] = []  # (key, token) decoded by the last call
        for helper in ("merge_cache", "select_cache"):  # compiled now, not on a request
            scripted(helper)

    def __len__(self) -> int:
        return len(self.rows)

    # -- joining --------------------------------------------------------------------
    @torch.inference_mode()
    def admit(
        self, items: list[tuple[GenerationRequest, str | None, Any]]
    ) -> list[tuple[Any, Generation | Exception]]:
        """Prefill ``(request, adapter, key)`` rows and add them to the running batch.

        Returns ``(key, result)`` for rows already finished (an error, or done after their
        first token); the others are returned by later :meth:`step` calls.
        """
        b = self.backend
        self.emitted = []
        done: list[tuple[Any, Generation | Exception]] = []
        joining: list[_Row] = []
        tokens: list[list[int]] = []
        for request, adapter, key in items:
            try:
                if adapter is not None and adapter not in b.loaded_adapters:
                    raise AdapterNotLoaded(adapter)
                ids = b.tokenizer(request.prompt, add_special_tokens=True)["input_ids"]
                b._check_context(len(ids), request)
            except Exception as exc:  # returned to that row's caller
                done.append((key, exc))
                continue
            sampler = RowSampler(request, self._top_k) if request.temperature > 0 else None
            joining.append(_Row(request, adapter, len(ids), key, sampler))
            tokens.append(ids)
        if not joining:
            return done
        width = max(len(ids) for ids in tokens)
        pad = b.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in tokens])
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in tokens])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = b.new_cache()
        try:
            logits = b.forward_rows([r.adapter for r in joining], input_ids, mask, positions, cache)
        except Exception as exc:  # e.g. an adapter unloaded meanwhile: these rows fail
            return done + [(r.key, exc) for r in joining]
        first_new = len(self.rows)
        self._merge(cache, mask)
        self.rows += joining
        self._next = torch.cat([self._next, _pick(logits, joining, b.tokenizer)])
        self._pos = torch.cat([self._pos, torch.tensor([r.prompt_len for r in joining])])
        return done + self._collect(first_new)

    def _merge(self, cache: Any, mask: torch.Tensor) -> None:
        """Append the prefilled rows' cache and mask to the running ones (left-padded)."""
        if self._cache is None or not self.rows:
            self._cache, self._mask = cache, mask
            return
        width = max(self._mask.shape[1], mask.shape[1])
        merge = scripted("merge_cache")  # one call for all layers, not one op per layer
        old, new = self._cache.layers, cache.layers
        _assign(
            old,
            merge([kv.keys for kv in old], [kv.keys for kv in new], width),
            merge([kv.values for kv in old], [kv.values for kv in new], width),
        )
        self._mask = torch.cat([left_pad(self._mask, width, 1), left_pad(mask, width, 1)])

    # -- decoding -------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> list[tuple[Any, Generation | Exception]]:
        """Decode one token for every running row; ``(key, result)`` of rows that ended."""
        self.emitted = []
        if not self.rows:
            return []
        mask = torch.cat([self._mask, torch.ones((len(self.rows), 1), dtype=torch.long)], 1)
        try:
            logits = self.backend.forward_rows(
                [r.adapter for r in self.rows],
                self._next.view(-1, 1),
                mask,
                self._pos.view(-1, 1),
                self._cache,
            )
        except Exception as exc:  # the step as a whole failed: every running row fails
            failed = [(r.key, exc) for r in self.rows]
            self._keep([])
            return failed
        self._mask = mask
        self._pos = self._pos + 1
        self._next = _pick(logits, self.rows, self.backend.tokenizer)
        return self._collect()

    def _collect(self, first: int = 0) -> list[tuple[Any, Generation | Exception]]:
        """Record the newest token (``_next``) of rows ``first:``; remove and return the
        rows that ended."""
        b = self.backend
        eos = b.tokenizer.eos_token_id
        finished: list[tuple[Any, Generation | Exception]] = []
        keep = list(range(first))
        tokens = self._next[first:].tolist()
        for i, (row, token) in enumerate(zip(self.rows[first:], tokens, strict=True), first):
            row.new_ids.append(token)
            self.emitted.append((row.key, token))
            ended = token == eos or len(row.new_ids) >= row.request.max_new_tokens
            if not ended and row.request.stop:
                text = b.tokenizer.decode(row.new_ids, skip_special_tokens=True)
                ended = any(s in text for s in row.request.stop)
            if not ended:
                keep.append(i)
                continue
            ms = (time.perf_counter() - row.started) * 1000
            scored = row.logprobs if row.request.logprobs is not None else None
            gen = b._finish(
                row.new_ids, row.request, row.adapter, ms, row.prompt_len,
                logprobs=None if scored is None else lambda n, s=scored: s[:n],
            )  # fmt: skip
            gen.extra["batch_size"] = len(self.rows)
            finished.append((row.key, gen))
        if len(keep) < len(self.rows):
            self._keep(keep)
        return finished

    def cancel(self, keys: list[Any]) -> int:
        """Drop the running rows of ``keys`` (their callers are gone); how many were dropped."""
        gone = {id(k) for k in keys}
        keep = [i for i, row in enumerate(self.rows) if id(row.key) not in gone]
        dropped = len(self.rows) - len(keep)
        if dropped:
            self._keep(keep)
        return dropped

    def _keep(self, keep: list[int]) -> None:
        """Drop every row not in ``keep`` and the cache columns no remaining row uses."""
        self.rows = [self.rows[i] for i in keep]
        if not keep:
            self._cache = None
            self._mask = torch.zeros((0, 0), dtype=torch.long)
            self._next = self._next[:0]
            self._pos = self._pos[:0]
            return
        idx = torch.tensor(keep)
        mask = self._mask.index_select(0, idx)
        first = int((mask.sum(0) > 0).nonzero()[0])  # leading columns that are padding for all
        self._mask = mask[:, first:]
        assert self._cache is not None
        select = scripted("select_cache")
        layers = self._cache.layers
        _assign(
            layers,
            select([kv.keys for kv in layers], idx, first),
            select([kv.values for kv in layers], idx, first),
        )
        self._next = self._next.index_select(0, idx)
        self._pos = self._pos.index_select(0, idx)


def _pick(logits: torch.Tensor, rows: list[_Row], tokenizer: Any) -> torch.Tensor:
    """Each row's next token: the argmax, or a draw for sampled rows; a row that asked
    for ``logprobs`` records the token's entry from these (raw) logits."""
    tokens = logits.argmax(-1)
    for i, row in enumerate(rows):
        if row.sampler is not None:
            tokens[i] = row.sampler.draw(logits[i])
        if row.request.logprobs is not None:
            row.logprobs.append(
                token_entry(tokenizer, logits[i], int(tokens[i]), row.request.logprobs)
            )
    return tokens


def _assign(layers: list[Any], keys: list[torch.Tensor], values: list[torch.Tensor]) -> None:
    """Set each cache layer's keys and values (lean ``KVCache`` or ``DynamicCache`` alike)."""
    for layer, k, v in zip(layers, keys, values, strict=True):
        layer.keys, layer.values = k, v


__all__ = ["ContinuousDecoder", "RowSampler"]
