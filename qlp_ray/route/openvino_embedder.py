"""Sentence embeddings through an OpenVINO IR of the whole sentence-transformers pipeline.

The router embeds one short text per request, so the encoder's per-call cost is the
router's added latency. :class:`OpenVINOEmbedder` exports the configured
sentence-transformers model once (transformer + its own pooling + normalisation modules,
so any local model directory exports the same way), caches the IR under
``<cache_dir>/<fingerprint>/`` and afterwards loads only the IR and the fast tokenizer.

The fingerprint hashes every file of the model directory plus the OpenVINO version and
this module's export format, so a changed model or toolkit never reuses a stale IR. The
IR keeps fp32 weights. CPU inference runs in bf16 where the CPU has native bf16
(``precision="auto"``, AVX512-BF16 / AMX) and in f32 elsewhere; bf16 keeps cosine >= 0.9999
to the torch embeddings and the same routing decisions on ``dev.jsonl`` (but for a title
whose cosine sits within the rounding of the threshold: 1 of 178 on an AMX CPU) at about
0.6x the f32 latency (see ``tests/route/test_openvino_embedder.py`` and
``benchmarks/router_latency.py``).

Batches are tokenized without padding, sorted by length and run in chunks padded only to
their own longest text, so one long text does not make a whole batch pay for its length.
Widths are rounded up to a multiple of :data:`PAD_MULTIPLE`: the CPU plugin re-plans its
kernels for every new input shape, and a handful of shapes instead of one per title
length keeps the encoder on its fast path (masked padding leaves the embedding unchanged).
Batches of more than a few texts go *packed* instead where the model allows it (no padding
at all, :mod:`qlp_ray.route.packed_encoder`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from qlp_ray.core.errors import ConfigError
from qlp_ray.route.embeddings import resolve_model_dir
from qlp_ray.route.openvino_ir import export_into_place, run_in_waves
from qlp_ray.route.packed_encoder import (
    PACKED_MIN_COSINE,
    PROBE_TEXTS,
    PackedRunner,
    cached_packed_ir,
)

logger = logging.getLogger(__name__)

EXPORT_FORMAT = "qlp-st-ov-1"  # bump when the exported graph changes
IR_FILE = "embedder.xml"
META_FILE = "embedder.json"
PRECISIONS = ("auto", "f32", "bf16")
PAD_MULTIPLE = 8
_GRAPH_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def model_fingerprint(model_dir: Path) -> str:
    """SHA-256 over every file (relative path + bytes) of ``model_dir``, the OpenVINO
    version and :data:`EXPORT_FORMAT`; 16 hex digits."""
    import openvino as ov

    h = hashlib.sha256(f"{EXPORT_FORMAT}|{ov.__version__}".encode())
    for path in sorted(p for p in model_dir.rglob("*") if p.is_file()):
        rel = path.relative_to(model_dir).as_posix()
        if rel.startswith(".") or rel.lower().startswith("readme"):
            continue
        h.update(rel.encode())
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()[:16]


def resolve_precision(precision: str, device: str = "CPU") -> str:
    """``auto`` → ``bf16`` when the OpenVINO CPU plugin reports native BF16, else ``f32``."""
    if precision not in PRECISIONS:
        raise ConfigError(f"embedding precision must be one of {PRECISIONS}, got {precision!r}")
    if precision != "auto" or device != "CPU":
        return precision
    import openvino as ov

    caps = ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    return "bf16" if "BF16" in caps else "f32"


def _max_seq_length(model_dir: Path, tokenizer: Any) -> int:
    cfg = model_dir / "sentence_bert_config.json"
    if cfg.is_file():
        value = json.loads(cfg.read_text()).get("max_seq_length")
        if value:
            return int(value)
    return int(min(tokenizer.model_max_length, 512))


def export_ir(model_dir: Path, out_dir: Path) -> Path:
    """Convert the sentence-transformers model at ``model_dir`` to ``out_dir/embedder.xml``.

    The graph takes the tokenizer's int64 inputs (dynamic batch and length) and returns
    the model's own ``sentence_embedding`` (pooling and normalisation included).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import openvino as ov
    import torch
    from sentence_transformers import SentenceTransformer

    t0 = time.perf_counter()
    st = SentenceTransformer(str(model_dir), device="cpu").eval()
    example = st.preprocess(["an example text", "a second, longer example text"])
    names = [k for k, v in example.items() if isinstance(v, torch.Tensor)]
    extra = {k: v for k, v in example.items() if not isinstance(v, torch.Tensor)}

    unknown = set(names) - set(_GRAPH_INPUTS)
    if unknown:
        raise ConfigError(f"cannot export {model_dir}: unexpected tokenizer outputs {unknown}")

    class _Pipeline(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.st = st

        def forward(
            self,
            input_ids: torch.Tensor,
            attention_mask: torch.Tensor,
            token_type_ids: torch.Tensor | None = None,
        ) -> torch.Tensor:
            features = {"input_ids": input_ids, "attention_mask": attention_mask, **extra}
            if token_type_ids is not None:
                features["token_type_ids"] = token_type_ids
            return self.st(features)["sentence_embedding"]

    dyn = ov.PartialShape([-1, -1])
    with torch.no_grad():
        ov_model = ov.convert_model(
            _Pipeline(),
            example_input={n: example[n] for n in names},
            input=[(n, dyn, ov.Type.i64) for n in names],
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    ov.save_model(ov_model, str(out_dir / IR_FILE), compress_to_fp16=False)
    meta = {
        "inputs": names,
        "dim": int(st.get_embedding_dimension()),
        "max_seq_length": int(st.max_seq_length),
        "model_dir": str(model_dir),
        "export_format": EXPORT_FORMAT,
    }
    (out_dir / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    logger.info("exported %s to OpenVINO IR in %.1f s", model_dir.name, time.perf_counter() - t0)
    return out_dir / IR_FILE


def cached_ir(model_dir: Path, cache_dir: Path) -> Path:
    """The IR directory of ``model_dir`` under ``cache_dir``, exporting it on first use.

    The export goes to a temporary sibling directory renamed into place, so concurrent
    processes never read a half-written IR.
    """
    target = cache_dir / model_fingerprint(model_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    return export_into_place(target, META_FILE, lambda out: export_ir(model_dir, out))


class OpenVINOEmbedder:
    """Encodes texts into L2-normalised float32 vectors with a cached OpenVINO IR.

    Drop-in for :class:`qlp_ray.route.embeddings.Embedder` (``encode``, ``dim``,
    ``model_dir``). The model is compiled with ``streams`` parallel inference streams of
    one thread each (0 = one per CPU core): a batch is split into up to ``streams``
    length-sorted chunks (at most ``chunk`` texts each) that run at the same time. A small
    batch (at most :attr:`small_batch` texts, e.g. the one text of a lone request) runs
    instead as one chunk on a second compilation with one stream over all ``streams``
    threads: measured here, one title takes 1.7 ms that way against 3.2 ms on one stream
    of the multi-stream compilation, and batches of up to 4 are no slower.
    """

    small_batch = 4

    def __init__(
        self,
        name_or_path: str,
        cache_dir: Path,
        *,
        streams: int = 0,
        precision: str = "auto",
        max_tokens: int | None = None,
        chunk: int = 16,
        device: str = "CPU",
        packing: bool = True,
    ) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        import openvino as ov
        from transformers import AutoTokenizer

        self.precision = resolve_precision(precision, device)
        t0 = time.perf_counter()
        self.model_dir = resolve_model_dir(name_or_path)
        self.ir_dir = cached_ir(self.model_dir, Path(cache_dir))
        meta = json.loads((self.ir_dir / META_FILE).read_text())
        self.dim = int(meta["dim"])
        self._inputs: list[str] = list(meta["inputs"])
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.model_dir))
        model_max = int(meta["max_seq_length"]) or _max_seq_length(self.model_dir, self.tokenizer)
        self.max_tokens = min(max_tokens or model_max, model_max)
        self.chunk = max(int(chunk), 1)
        self._max_width = max(model_max, self.max_tokens)  # padding stays within the model
        if device == "CPU":
            self.streams = int(streams) or (os.cpu_count() or 1)
            config = {
                "INFERENCE_PRECISION_HINT": self.precision,
                "NUM_STREAMS": self.streams,
                "INFERENCE_NUM_THREADS": self.streams,
            }
        else:  # NPU / GPU plugins pick their own precision and parallelism
            self.streams, config = 1, {}
        self.device = device
        core = ov.Core()
        model = core.read_model(self.ir_dir / IR_FILE)
        self._compiled = core.compile_model(model, device, config)
        self._requests = [self._compiled.create_infer_request() for _ in range(self.streams)]
        self._latency_request = None  # one stream over every thread, for small batches
        if device == "CPU" and self.streams > 1:
            latency = {**config, "NUM_STREAMS": 1}
            self._latency_request = core.compile_model(
                model, device, latency
            ).create_infer_request()
        self._lock = threading.Lock()  # the infer requests serve one encode call at a time
        self._pad_id = int(self.tokenizer.pad_token_id or 0)
        self._packed = None  # PackedRunner for batches above small_batch, when it checks out
        if packing and device == "CPU":
            self._packed = self._packed_runner(core, config)
        logger.info(
            "OpenVINO embedder %s on %s (%s, %d streams, IR %s) ready in %.1f s",
            self.model_dir.name, device, self.precision, self.streams, self.ir_dir.name,
            time.perf_counter() - t0,
        )  # fmt: skip

    def _packed_runner(self, core: Any, config: dict[str, Any]) -> Any:
        """The packed graph, compiled like the padded one, if it exists for this model and
        gives the padded graph's vectors on the probe texts; else ``None`` (padded)."""

        try:
            path = cached_packed_ir(self.model_dir, self.ir_dir)
            if path is None:
                return None
            runner = PackedRunner(core.compile_model(core.read_model(path), "CPU", config),
                                  self.streams)  # fmt: skip
            ids = self._tokenize(PROBE_TEXTS)["input_ids"]
            cosine = (runner.encode(ids, self.dim) * self._encode_padded(PROBE_TEXTS)).sum(1)
        except Exception:  # packing is an optimisation: never a reason not to route
            logger.exception("packed router encoder unavailable; batches stay padded")
            return None
        if float(cosine.min()) < PACKED_MIN_COSINE:
            logger.warning(
                "packed encoder differs from the padded one (cosine %.5f < %.3f); "
                "batches stay padded", float(cosine.min()), PACKED_MIN_COSINE,
            )  # fmt: skip
            return None
        return runner

    @property
    def packed(self) -> bool:
        """Whether batches above :attr:`small_batch` texts run packed."""
        return self._packed is not None

    def _tokenize(self, texts: list[str]) -> dict[str, list[list[int]]]:
        # sentence-transformers strips surrounding whitespace before tokenizing
        enc = self.tokenizer(
            [t.strip() for t in texts], truncation=True, max_length=self.max_tokens, padding=False
        )
        return {name: enc[name] for name in self._inputs}

    def _feed(self, enc: dict[str, list[list[int]]], rows: list[int]) -> dict[str, np.ndarray]:
        width = max(len(enc["input_ids"][i]) for i in rows)
        width = max(min(-(-width // PAD_MULTIPLE) * PAD_MULTIPLE, self._max_width), width)
        feed = {}
        for name in self._inputs:
            pad = self._pad_id if name == "input_ids" else 0
            arr = np.full((len(rows), width), pad, dtype=np.int64)
            for r, i in enumerate(rows):
                seq = enc[name][i]
                arr[r, : len(seq)] = seq
            feed[name] = arr
        return feed

    def encode(self, texts: list[str] | str, batch_size: int = 64) -> np.ndarray:
        """Return an ``(n, dim)`` float32 array of unit vectors (``(dim,)`` for one string).

        ``batch_size`` is accepted for signature compatibility: batches above
        :attr:`small_batch` run packed (or, without packing, in chunks of ``chunk``).
        """
        single = isinstance(texts, str)
        batch = [texts] if single else list(texts)
        if not batch:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self._packed is not None and len(batch) > self.small_batch:
            ids = self._tokenize(batch)["input_ids"]
            with self._lock:
                return self._packed.encode(ids, self.dim)
        out = self._encode_padded(batch)
        return out[0] if single else out

    def _encode_padded(self, batch: list[str]) -> np.ndarray:
        enc = self._tokenize(batch)
        order = sorted(range(len(batch)), key=lambda i: len(enc["input_ids"][i]))
        if self._latency_request is not None and len(batch) <= self.small_batch:
            out = np.empty((len(batch), self.dim), dtype=np.float32)
            with self._lock:
                self._latency_request.infer(self._feed(enc, order))
                out[order] = self._latency_request.get_output_tensor(0).data
            return out
        size = min(self.chunk, -(-len(batch) // self.streams))  # fill every stream
        chunks = [order[i : i + size] for i in range(0, len(order), size)]
        out = np.empty((len(batch), self.dim), dtype=np.float32)

        def take(rows: list[int], vectors: np.ndarray) -> None:
            out[rows] = vectors

        with self._lock:
            run_in_waves(self._requests, chunks, lambda rows: self._feed(enc, rows), take)
        return out
