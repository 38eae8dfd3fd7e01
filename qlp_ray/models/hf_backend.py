"""Transformers + PEFT inference backend: one shared base model, many LoRA adapters by name.

All adapters live on one ``PeftModel`` wrapping the base model (vLLM-style: the base
weights are held once). ``generate(..., adapter=None)`` runs the bare base model with
adapters disabled. A lock serialises "select adapter + generate" and load/unload, so a
request never runs under another request's adapter.

``generate_batch`` runs many requests as one left-padded ``generate`` even when each
uses a different adapter (or the base model): plain LoRA rows are gathered into per-row
``bmm`` hooks (``batched_lora``); rows whose adapter is not plain LoRA run as one batch
per adapter. Every row gets what ``generate`` alone would give it.

Adapter weights are read only from ``adapter_model.safetensors`` (never pickle) and put
into the model with ``set_peft_model_state_dict``; a key or shape mismatch (an adapter
trained for another base model) raises ``AdapterLoadError``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from peft import PeftConfig, PeftModel, get_peft_model, set_peft_model_state_dict
from peft.tuners.tuners_utils import BaseTunerLayer
from safetensors.torch import load_file
from transformers import DynamicCache, StoppingCriteria, StoppingCriteriaList

from qlp_ray.core.errors import AdapterLoadError, InvalidRequest
from qlp_ray.models.backend import AdapterNotLoaded, Generation, GenerationRequest, InferenceBackend
from qlp_ray.models.batched_lora import LoRATables
from qlp_ray.models.continuous import ContinuousDecoder
from qlp_ray.models.lean_llama import KVCache, LeanLlama
from qlp_ray.models.logprobs import step_entries
from qlp_ray.models.stream_text import cut_at_stop

logger = logging.getLogger(__name__)

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")


class _RowStops(StoppingCriteria):
    """Per-row end of a batch (or of one request): the row's ``max_new_tokens`` or a stop
    string in its text.

    ``ended[i]`` is the number of new tokens row ``i`` had when it ended (the unbatched
    run would have stopped there too); rows ending on EOS are cut by ``_finish``.
    """

    def __init__(self, tokenizer: Any, prompt_len: int, requests: list[GenerationRequest]) -> None:
        self.tokenizer = tokenizer
        self.prompt_len = prompt_len
        self.limits = [r.max_new_tokens for r in requests]
        self.stops = [r.stop for r in requests]
        self.ended: list[int | None] = [None] * len(requests)

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.Tensor:
        new = int(input_ids.shape[1]) - self.prompt_len
        for row, ended in enumerate(self.ended):
            if ended is not None:
                continue
            if new >= self.limits[row]:
                self.ended[row] = new
            elif self.stops[row]:
                text = self.tokenizer.decode(
                    input_ids[row, self.prompt_len :], skip_special_tokens=True
                )
                if any(s in text for s in self.stops[row]):
                    self.ended[row] = new
        done = [ended is not None for ended in self.ended]
        return torch.tensor(done, dtype=torch.bool, device=input_ids.device)


def _of_adapter(key: str, name: str) -> bool:
    """Whether PEFT parameter ``key`` (``...lora_A.<name>.weight``, ``...lora_embedding_A.
    <name>``) belongs to adapter ``name`` — not to a module of that name (``...mlp...``)."""
    return name in key.split(".")[-2:]


def check_adapter_dir(path: str | Path) -> Path:
    """The adapter directory if it holds safetensors weights + config and no pickle files."""
    p = Path(path)
    if not (p / ADAPTER_CONFIG).is_file() or not (p / ADAPTER_WEIGHTS).is_file():
        raise AdapterLoadError(
            f"adapter directory {p.name!r} needs {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}"
        )
    pickled = sorted(f.name for f in p.iterdir() if f.suffix in _PICKLE_SUFFIXES)
    if pickled:
        raise AdapterLoadError(f"adapter {p.name!r} contains pickle files {pickled}; refused")
    return p


@dataclass(frozen=True)
class AdapterFiles:
    """An adapter directory read into memory (config + safetensors weights)."""

    path: Path
    config: PeftConfig
    weights: dict[str, torch.Tensor]


def read_adapter(path: str | Path) -> AdapterFiles:
    """Read a verified adapter directory (safetensors only) without touching any model."""
    adapter_dir = check_adapter_dir(path)
    config = PeftConfig.from_pretrained(str(adapter_dir))
    config.inference_mode = True
    weights = load_file(str(adapter_dir / ADAPTER_WEIGHTS), device="cpu")
    return AdapterFiles(adapter_dir, config, weights)


def lora_rank(path: str | Path) -> int:
    """The LoRA rank of an adapter directory (the largest, with a rank pattern)."""
    config = json.loads((check_adapter_dir(path) / ADAPTER_CONFIG).read_text())
    ranks = [int(config.get("r", 0)), *map(int, (config.get("rank_pattern") or {}).values())]
    return max(ranks)


class TransformersBackend(InferenceBackend):
    """A causal LM from transformers with LoRA adapters hot-loaded through PEFT."""

    name = "transformers"
    batches_across_adapters = True

    def __init__(self, model: Any, tokenizer: Any, *, lean_forward: bool = True) -> None:
        self.tokenizer = tokenizer
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        self._base = model.eval()
        self._peft: PeftModel | None = None
        self._adapters: dict[str, str] = {}
        self._lock = threading.Lock()
        self._active: str | None = None  # adapter the LoRA layers are switched to
        self._lora_layers: list[BaseTunerLayer] | None = None
        self._tables: LoRATables | None = None  # stacked adapter weights for mixed batches
        self._full_switch = False  # an adapter with modules_to_save needs PEFT's set_adapter
        self.max_positions = int(getattr(model.config, "max_position_embeddings", 0) or 0)
        # continuous decoding's forward on plain tensors (plain Llama only; see lean_llama)
        self._lean = LeanLlama.build(self._base) if lean_forward else None
        self._lean_tables: LoRATables | None = None  # the tables the lean stacks were built of

    # -- adapters -------------------------------------------------------------------
    @property
    def loaded_adapters(self) -> list[str]:
        return sorted(self._adapters)

    @property
    def peft_model(self) -> PeftModel | None:
        """The shared ``PeftModel`` (``None`` until the first adapter is loaded).

        For inspection: switch adapters through ``generate``, not ``set_adapter`` on it.
        """
        return self._peft

    def load_adapter(self, name: str, path: str) -> None:
        """Load a verified adapter directory under ``name`` (replacing one of that name)."""
        files = read_adapter(path)
        t0 = time.perf_counter()
        with self._lock:
            self._add_locked(name, files)
        logger.info("loaded adapter %s in %.1f ms", name, (time.perf_counter() - t0) * 1000)

    def _add_locked(self, name: str, files: AdapterFiles) -> None:
        if name in self._adapters:
            self._delete_locked(name)
        try:
            if self._peft is None:
                self._peft = get_peft_model(self._base, files.config, adapter_name=name)
                self._peft.eval()
            else:
                self._peft.add_adapter(name, files.config)
            result = set_peft_model_state_dict(self._peft, files.weights, adapter_name=name)
            missing = [k for k in result.missing_keys if _of_adapter(k, name)]
            unexpected = list(result.unexpected_keys)
            if missing or unexpected:
                raise AdapterLoadError(
                    f"adapter {name!r} does not fit the base model "
                    f"({len(missing)} missing, {len(unexpected)} unexpected weights)"
                )
        except (RuntimeError, ValueError, KeyError) as exc:
            self._discard_partial_locked(name)
            if isinstance(exc, AdapterLoadError):
                raise
            raise AdapterLoadError(f"adapter {name!r} could not be loaded: {exc}") from exc
        self._adapters[name] = str(files.path)
        self._full_switch = self._full_switch or bool(
            getattr(files.config, "modules_to_save", None)
        )
        self._layers_changed_locked()

    def unload_adapter(self, name: str) -> None:
        """Free an adapter's weights; unknown names are ignored."""
        with self._lock:
            if name in self._adapters:
                self._delete_locked(name)
                logger.info("unloaded adapter %s", name)

    def _delete_locked(self, name: str) -> None:
        assert self._peft is not None
        self._peft.delete_adapter(name)
        del self._adapters[name]
        self._layers_changed_locked()

    def _discard_partial_locked(self, name: str) -> None:
        if self._peft is not None and name in self._peft.peft_config:
            self._peft.delete_adapter(name)
        self._adapters.pop(name, None)
        self._layers_changed_locked()

    def _layers_changed_locked(self) -> None:
        """Adapters were added/removed: PEFT may have changed layers and active adapters."""
        self._active = None
        self._lora_layers = None
        self._tables = None

    def _activate_locked(self, name: str) -> None:
        """Switch every LoRA layer to adapter ``name``.

        PEFT's ``set_adapter`` also toggles ``requires_grad`` of every adapter in every
        layer — O(layers x adapters), ~20 ms with 50 adapters on the tiny model. Served
        adapters are frozen (inference), so only the active-adapter switch is needed:
        O(layers), and nothing when ``name`` is already active.
        """
        assert self._peft is not None
        if self._active == name:
            return
        if self._full_switch:  # modules_to_save etc.: let PEFT switch those wrappers too
            self._peft.set_adapter(name)
            self._active = name
            return
        for layer in self._layers_locked():
            layer._active_adapter = [name]  # what BaseTunerLayer.set_adapter sets
        self._peft.active_adapter = name  # what PeftModel.set_adapter sets ...
        self._peft.base_model.active_adapter = name  # ... and LoraModel.set_adapter
        self._active = name

    def _deactivate_locked(self) -> None:
        """Every LoRA layer computes the base output only (no active adapter).

        What ``PeftModel.disable_adapter`` achieves, without its ``get_model_status`` scan
        (~0.1 s with 16 adapters loaded on the tiny model); needs ``not _full_switch``.
        """
        if self._active == "":
            return
        for layer in self._layers_locked():
            layer._active_adapter = []
        self._active = ""  # no adapter name is "" (lease names are never empty)

    def compose_adapters(
        self,
        name: str,
        sources: list[str],
        weights: list[float],
        combination_type: str,
        *,
        density: float | None = None,
    ) -> None:
        """Add adapter ``name`` = PEFT ``add_weighted_adapter`` of loaded ``sources``.

        The new adapter holds its own weights: the sources may be unloaded afterwards.
        PEFT's refusals (e.g. unequal ranks for ``linear``) become ``InvalidRequest``.
        """
        t0 = time.perf_counter()
        with self._lock:
            self._compose_locked(name, sources, weights, combination_type, density)
        logger.info(
            "composed %s from %d adapters (%s) in %.1f ms",
            name, len(sources), combination_type, (time.perf_counter() - t0) * 1000,
        )  # fmt: skip

    def compose_from_dirs(
        self,
        name: str,
        paths: list[str],
        weights: list[float],
        combination_type: str,
        *,
        density: float | None = None,
    ) -> None:
        """Compose adapter ``name`` from verified adapter directories in one locked step.

        The files are read before taking the lock; the members are added under temporary
        names, combined and removed again while it is held, so requests wait for the
        lock once instead of once per member.
        """
        files = [read_adapter(p) for p in paths]
        temps = [f"{name}-m{i}" for i in range(len(files))]
        t0 = time.perf_counter()
        with self._lock:
            try:
                for temp, member in zip(temps, files, strict=True):
                    self._add_locked(temp, member)
                self._compose_locked(name, temps, weights, combination_type, density)
            finally:
                for temp in temps:
                    if temp in self._adapters:
                        self._delete_locked(temp)
        logger.info(
            "composed %s from %d adapter directories (%s) in %.1f ms",
            name, len(paths), combination_type, (time.perf_counter() - t0) * 1000,
        )  # fmt: skip

    def _compose_locked(
        self,
        name: str,
        sources: list[str],
        weights: list[float],
        combination_type: str,
        density: float | None,
    ) -> None:
        missing = [s for s in sources if s not in self._adapters]
        if missing or self._peft is None:
            raise AdapterNotLoaded(", ".join(missing or sources))
        if name in self._adapters:
            self._delete_locked(name)
        try:
            self._peft.add_weighted_adapter(
                adapters=list(sources),
                weights=list(weights),
                adapter_name=name,
                combination_type=combination_type,
                density=density,
            )
        except (ValueError, TypeError, RuntimeError) as exc:
            self._discard_partial_locked(name)
            raise InvalidRequest(
                f"cannot compose {'+'.join(sources)} with {combination_type!r}: {exc}",
                param="model",
            ) from exc
        self._adapters[name] = "composed:" + "+".join(sources)
        self._layers_changed_locked()

    def adapter_parameter_names(self, name: str) -> list[str]:
        """Names of the parameters that belong to adapter ``name`` (empty when unloaded)."""
        if self._peft is None:
            return []
        return [n for n, _ in self._peft.named_parameters() if _of_adapter(n, name)]

    # -- generation -----------------------------------------------------------------
    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=True)["input_ids"])

    def _check_context(self, prompt_len: int, request: GenerationRequest) -> None:
        if self.max_positions and prompt_len + request.max_new_tokens > self.max_positions:
            raise InvalidRequest(
                f"prompt ({prompt_len} tokens) + max_tokens ({request.max_new_tokens}) exceeds "
                f"the model's context length of {self.max_positions} tokens",
                param="prompt",
            )

    def _sampling_kwargs(self, request: GenerationRequest) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "pad_token_id": self.tokenizer.pad_token_id,
            "eos_token_id": self.tokenizer.eos_token_id,
        }
        if request.temperature > 0:
            kwargs.update(do_sample=True, temperature=request.temperature, top_p=request.top_p)
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kwargs

    def _logprobs_of(
        self, out: Any, row: int, new_ids: list[int], request: GenerationRequest
    ) -> Callable[[int], list[dict]] | None:
        """How ``_finish`` gets the entries of a row's first ``n`` tokens from a
        ``generate`` output run with ``output_logits`` (None: the row did not ask)."""
        if request.logprobs is None:
            return None
        top_n = request.logprobs
        return lambda n: step_entries(self.tokenizer, out.logits, row, new_ids[:n], top_n)

    def generate(self, request: GenerationRequest, adapter: str | None = None) -> Generation:
        """Generate one completion with ``adapter`` (``None`` = base model, adapters off)."""
        tokens = self.tokenizer(request.prompt, return_tensors="pt", add_special_tokens=True)
        enc = {"input_ids": tokens["input_ids"], "attention_mask": tokens["attention_mask"]}
        prompt_len = int(enc["input_ids"].shape[1])
        self._check_context(prompt_len, request)
        kwargs = self._sampling_kwargs(request)
        kwargs["max_new_tokens"] = request.max_new_tokens
        if request.stop:
            kwargs["stopping_criteria"] = StoppingCriteriaList(
                [_RowStops(self.tokenizer, prompt_len, [request])]
            )
        if request.logprobs is not None:  # raw logits of every step; otherwise none kept
            kwargs.update(output_logits=True, return_dict_in_generate=True)
        t0 = time.perf_counter()
        with self._lock:
            model, ctx = self._select_locked(adapter)
            if request.seed is not None:
                torch.manual_seed(request.seed)
            with ctx, torch.inference_mode():
                out = model.generate(**enc, **kwargs)
        sequences = out.sequences if request.logprobs is not None else out
        new_ids = sequences[0, prompt_len:].tolist()
        return self._finish(
            new_ids, request, adapter, (time.perf_counter() - t0) * 1000, prompt_len,
            logprobs=self._logprobs_of(out, 0, new_ids, request),
        )  # fmt: skip

    # -- batched generation -----------------------------------------------------------
    def generate_batch(
        self, items: Sequence[tuple[GenerationRequest, str | None]]
    ) -> list[Generation | Exception]:
        """Generate many completions, each with its own adapter (``None`` = base model).

        Greedy rows run as one batch whatever their adapters (see ``batched_lora``), sampled
        rows as one batch per (temperature, top_p); a seeded request runs alone, so its
        sample is the one ``generate`` gives. Each row gets what ``generate`` would give it
        (tokens, counts, finish reason); a row's error is returned in its place, so it
        fails only that row.
        """
        groups: dict[tuple[Any, ...], list[int]] = {}
        for i, (request, _) in enumerate(items):
            if request.seed is not None:
                key: tuple[Any, ...] = ("alone", i)
            elif request.temperature > 0:
                key = ("sample", request.temperature, request.top_p)
            else:
                key = ("greedy",)
            groups.setdefault(key, []).append(i)
        results: list[Generation | Exception | None] = [None] * len(items)
        for rows in groups.values():
            if len(rows) == 1:
                try:
                    results[rows[0]] = self.generate(*items[rows[0]])
                except Exception as exc:  # returned to that row's caller
                    results[rows[0]] = exc
                continue
            for i, result in zip(rows, self._generate_rows([items[i] for i in rows]), strict=True):
                results[i] = result
        return [r for r in results if r is not None]

    def _generate_rows(
        self, items: list[tuple[GenerationRequest, str | None]]
    ) -> list[Generation | Exception]:
        """Rows sharing sampling settings: one left-padded ``model.generate`` (or one per
        adapter when an adapter cannot share a batch). Rows are checked under the lock, so
        an adapter unloaded meanwhile fails only its own rows."""
        results: list[Generation | Exception | None] = [None] * len(items)
        tokens: dict[int, list[int]] = {}
        for i, (request, _) in enumerate(items):
            try:
                tokens[i] = self.tokenizer(request.prompt, add_special_tokens=True)["input_ids"]
                self._check_context(len(tokens[i]), request)
            except Exception as exc:
                results[i] = exc
        with self._lock:
            live = []
            for i in tokens:
                adapter = items[i][1]
                if results[i] is None and adapter is not None and adapter not in self._adapters:
                    results[i] = AdapterNotLoaded(adapter)
                elif results[i] is None:
                    live.append(i)
            for group in self._row_groups_locked([items[i][1] for i in live]):
                rows = [live[g] for g in group]
                try:
                    gens = self._run_rows_locked(
                        [items[i] for i in rows], [tokens[i] for i in rows]
                    )
                except Exception as exc:  # the batch as a whole failed: each of its rows fails
                    gens = [exc] * len(rows)
                for i, gen in zip(rows, gens, strict=True):
                    results[i] = gen
        return [r for r in results if r is not None]

    def _run_rows_locked(
        self, items: list[tuple[GenerationRequest, str | None]], token_rows: list[list[int]]
    ) -> list[Generation]:
        width = max(len(ids) for ids in token_rows)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for ids in token_rows])
        mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in token_rows])
        requests = [request for request, _ in items]
        stops = _RowStops(self.tokenizer, width, requests)
        kwargs = self._sampling_kwargs(requests[0])
        kwargs["max_new_tokens"] = max(r.max_new_tokens for r in requests)
        kwargs["stopping_criteria"] = StoppingCriteriaList([stops])
        scored = any(r.logprobs is not None for r in requests)
        if scored:  # raw logits of every step, only when a row asked for logprobs
            kwargs.update(output_logits=True, return_dict_in_generate=True)
        t0 = time.perf_counter()
        model, ctx = self._select_rows_locked([adapter for _, adapter in items])
        with ctx, torch.inference_mode():
            out = model.generate(input_ids=input_ids, attention_mask=mask, **kwargs)
        ms = (time.perf_counter() - t0) * 1000
        sequences = out.sequences if scored else out
        gens = []
        for row, (request, adapter) in enumerate(items):
            new_ids = sequences[row, width:].tolist()[: stops.ended[row]]
            gen = self._finish(
                new_ids, request, adapter, ms, len(token_rows[row]),
                logprobs=self._logprobs_of(out, row, new_ids, request),
            )  # fmt: skip
            gen.extra["batch_size"] = len(items)
            gens.append(gen)
        return gens

    # -- step-level access for continuous batching (models/continuous.py) -------------
    def continuous_ok(self, request: GenerationRequest, adapter: str | None) -> bool:
        """Whether the row can join a :class:`~qlp_ray.models.continuous.ContinuousDecoder`:
        greedy or sampled, with the base model or a loaded plain-LoRA adapter."""
        with self._lock:
            if adapter is None:
                return True
            if adapter not in self._adapters or self._full_switch:
                return False
            # the lean forward's unsupported adapters include the tables' own
            return (self._lean_locked() or self._tables_locked()).supports([adapter])

    def forward_rows(
        self,
        adapters: Sequence[str | None],
        input_ids: torch.Tensor,
        mask: torch.Tensor,
        positions: torch.Tensor,
        cache: Any,
    ) -> torch.Tensor:
        """One forward of rows with their own adapters over ``cache`` (from
        :meth:`new_cache`, updated in place); the last position's logits, ``[rows, vocab]``.
        """
        with self._lock:
            missing = [a for a in adapters if a is not None and a not in self._adapters]
            if missing:
                raise AdapterNotLoaded(missing[0])
            if isinstance(cache, KVCache):
                lean = self._lean_locked()
                assert lean is not None  # a KVCache comes from new_cache on a lean backend
                if not lean.supports(adapters):
                    raise InvalidRequest(
                        f"adapters {sorted(lean.unsupported & set(adapters))} cannot run in a "
                        "continuous batch",
                        param="model",
                    )
                return lean.forward(lean.rows(adapters), input_ids, mask, positions, cache)
            ctx: Any = contextlib.nullcontext()
            if self._peft is not None:
                if self._full_switch:
                    stack = contextlib.ExitStack()
                    stack.enter_context(self._peft.disable_adapter())
                    stack.enter_context(self._tables_locked().rows(list(adapters)))
                    ctx = stack
                else:
                    self._deactivate_locked()
                    ctx = self._tables_locked().rows(list(adapters))
            with ctx, torch.inference_mode():
                out = self._base(
                    input_ids=input_ids,
                    attention_mask=mask,
                    position_ids=positions,
                    past_key_values=cache,
                    use_cache=True,
                    logits_to_keep=1,
                )
        return out.logits[:, -1, :]

    def new_cache(self) -> Any:
        """An empty KV cache for :meth:`forward_rows` (the lean forward's own when the
        model has one, else transformers' ``DynamicCache``)."""
        return KVCache() if self._lean is not None else DynamicCache()

    def _lean_locked(self) -> LeanLlama | None:
        """The lean forward with the loaded adapters stacked (restacked after a change)."""
        lean = self._lean
        if lean is not None and self._peft is not None:
            tables = self._tables_locked()
            if tables is not self._lean_tables:
                lean.load_tables(tables)
                self._lean_tables = tables
        return lean

    def continuous_decoder(self) -> Any:
        """A new :class:`~qlp_ray.models.continuous.ContinuousDecoder` on this backend."""

        return ContinuousDecoder(self)

    def _select_rows_locked(self, adapters: list[str | None]) -> tuple[Any, Any]:
        """The model and context that run row ``i`` with ``adapters[i]`` (all loaded and
        able to share a batch: see ``_row_groups_locked``)."""
        if len(set(adapters)) == 1:  # one adapter (or the base model): the plain path
            return self._select_locked(adapters[0])
        self._deactivate_locked()
        return self._peft, self._tables_locked().rows(adapters)

    def _layers_locked(self) -> list[BaseTunerLayer]:
        assert self._peft is not None
        if self._lora_layers is None:
            self._lora_layers = [m for m in self._peft.modules() if isinstance(m, BaseTunerLayer)]
        return self._lora_layers

    def _tables_locked(self) -> LoRATables:
        if self._tables is None:
            self._tables = LoRATables(self._layers_locked())
        return self._tables

    def _gather_ok_locked(self, adapters: set[str | None]) -> bool:
        """Whether rows of ``adapters`` can share one forward (gathered plain LoRA)."""
        if len(adapters) <= 1:
            return True
        names = {a for a in adapters if a is not None}
        return not self._full_switch and self._tables_locked().supports(names)

    def _row_groups_locked(self, adapters: list[str | None]) -> list[list[int]]:
        """Rows that run as one batch: all, unless an adapter is not plain LoRA (DoRA,
        ``modules_to_save``, ...) — then one batch per adapter."""
        if not adapters:
            return []
        if self._gather_ok_locked(set(adapters)):
            return [list(range(len(adapters)))]
        groups: dict[str | None, list[int]] = {}
        for i, adapter in enumerate(adapters):
            groups.setdefault(adapter, []).append(i)
        return list(groups.values())

    def _select_locked(self, adapter: str | None) -> tuple[Any, Any]:
        if adapter is None:
            if self._peft is None:
                return self._base, contextlib.nullcontext()
            if self._full_switch:  # modules_to_save wrappers too: PEFT's own switch
                return self._peft, self._peft.disable_adapter()
            self._deactivate_locked()
            return self._peft, contextlib.nullcontext()
        if adapter not in self._adapters:
            raise AdapterNotLoaded(adapter)
        self._activate_locked(adapter)
        return self._peft, contextlib.nullcontext()

    def _finish(
        self,
        new_ids: list[int],
        request: GenerationRequest,
        adapter: str | None,
        ms: float,
        prompt_len: int,
        logprobs: Callable[[int], list[dict]] | None = None,
    ) -> Generation:
        """The row's Generation; ``logprobs(n)`` gives the entries of its first ``n``
        tokens (None: the request did not ask for them)."""
        eos = self.tokenizer.eos_token_id
        finish = "length"
        if eos is not None and eos in new_ids:
            new_ids = new_ids[: new_ids.index(eos) + 1]
            finish = "stop"
        text, stopped = cut_at_stop(
            self.tokenizer.decode(new_ids, skip_special_tokens=True), request.stop
        )
        if stopped:
            finish = "stop"
        return Generation(
            text=text,
            prompt_tokens=prompt_len,
            completion_tokens=len(new_ids),
            finish_reason=finish,
            extra={"adapter": adapter, "generate_ms": round(ms, 2)},
            logprobs=logprobs(len(new_ids)) if logprobs is not None else None,
        )
