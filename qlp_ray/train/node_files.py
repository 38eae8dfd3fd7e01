"""What a Ray Train worker reads from disk, resolved on the worker's node, not the driver's.

A worker may run on another node than the driver, with a home of its own
(``paths.node_home``: each node's ``QLP_HOME``); the driver's absolute paths mean nothing
there. So the driver puts *references* and *bytes* in the loop config, never a path under its
home, and every worker resolves them where it runs:

- the base model (:func:`base_model_ref`, resolved by :func:`resolve_base_on_node`): the
  builtin tiny model is built, or found cached, in the node's own home from its config (the
  fingerprint covers config and corpus, so every node builds the same weights); a Hugging
  Face id resolves through the node's HF cache; a local directory must exist on the node,
  else a :class:`~qlp_ray.core.errors.ConfigError` names the path and the node;
- small files (a meta-init, a parent adapter, a reward model's or a teacher's adapter):
  their bytes travel in the config (:func:`ship_dir`, :func:`ship_file`) and the worker
  writes them into its own temp directory (:func:`materialize`);
- training data: records in the config, never a file path;
- metrics: rank 0 keeps ``metrics.jsonl`` in its temp directory and in every checkpoint it
  reports (:func:`save_metrics_to`, :func:`restore_metrics_from`); the driver writes its run
  directory from the final checkpoint (and live from the reports, on its own node:
  :mod:`qlp_ray.train.ray_metrics`).

Pure logic: no Ray here (the node's name comes in as an argument, or from
:func:`node_label`).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any

from qlp_ray.core.config import BUILTIN_TINY, QLPConfig
from qlp_ray.core.errors import ConfigError
from qlp_ray.train.run_metrics import METRICS_FILE, drop_metrics_after

logger = logging.getLogger(__name__)

BaseModelRef = dict[str, Any]  # {"kind": "builtin" | "path" | "hub", "name": ..., ...}
MAX_SHIPPED_BYTES = 256 * 1024 * 1024  # adapters and meta-inits, not base models


def looks_like_path(name: str) -> bool:
    """Whether ``model.base_model`` names a local directory rather than a Hugging Face id:
    absolute, ``~``, ``./`` or ``../`` (a hub id is ``name`` or ``org/name``)."""
    return name.startswith(("/", "~", "./", "../")) or name in (".", "..")


def base_model_ref(cfg: QLPConfig, *, cwd: Path | None = None) -> BaseModelRef:
    """What a worker needs to find ``cfg``'s base model on its own node (no building here).

    A relative local path is made absolute against the driver's ``cwd`` (a worker's working
    directory is Ray's, not the driver's); it need not exist on the driver, only on the nodes
    that train. An unknown ``builtin:`` name fails here with a :class:`ConfigError`.
    """
    from qlp_ray.models.base import base_model_id

    name = cfg.model.base_model
    base_model_id(cfg)  # validates builtin: names
    if name == BUILTIN_TINY:
        # the home as configured: a worker's own QLP_HOME replaces it under paths.node_home
        config = {"paths": cfg.paths.model_dump(mode="json"),
                  "model": cfg.model.model_dump(mode="json")}  # fmt: skip
        return {"kind": "builtin", "name": name, "config": config}
    local = Path(name).expanduser()
    relative_here = not local.is_absolute() and (Path(cwd or Path.cwd()) / local).exists()
    if looks_like_path(name) or relative_here:
        if not local.is_absolute():
            local = Path(cwd or Path.cwd()) / local
        return {"kind": "path", "name": name, "path": os.path.normpath(local)}
    return {"kind": "hub", "name": name}


def node_label() -> str:
    """This process's node, for error messages: host name and Ray node id when in Ray."""
    label = socket.gethostname()
    try:
        import ray

        if ray.is_initialized():
            label += f" (Ray node {ray.get_runtime_context().get_node_id()[:12]})"
    except ImportError:  # pragma: no cover - ray is a dependency
        pass
    return label


def resolve_base_on_node(ref: BaseModelRef | str, *, node: str | None = None) -> str:
    """A path or hub id that ``from_pretrained`` accepts on *this* node.

    ``ref``: from :func:`base_model_ref`, or a plain string (a directory, or a hub id), as
    callers that resolved the model themselves pass it. The builtin model is built into the
    node's home if missing (a file lock serialises the workers of one node).
    """
    if isinstance(ref, str):
        ref = (
            {"kind": "path", "name": ref, "path": ref}
            if looks_like_path(ref)
            else {"kind": "hub", "name": ref}
        )
    kind = ref.get("kind")
    if kind == "builtin":
        from qlp_ray.models.tiny import build_tiny_model

        cfg = QLPConfig.model_validate(ref["config"])
        path = build_tiny_model(cfg)
        logger.info("base model %s on node %s: %s", ref["name"], node or node_label(), path)
        return str(path)
    if kind == "path":
        path = Path(ref["path"]).expanduser()
        if not (path / "config.json").is_file():
            what = "holds no config.json" if path.is_dir() else "does not exist"
            raise ConfigError(
                f"`model.base_model` {ref['name']!r}: directory {path} {what} on node "
                f"{node or node_label()}. A local base model must be present at that path on "
                "every node that trains (copy it there or put it on a shared mount), or name "
                "a Hugging Face id."
            )
        logger.info("base model %s on node %s: %s", ref["name"], node or node_label(), path)
        return str(path)
    if kind == "hub":
        return str(ref["name"])
    raise ConfigError(f"unknown base model reference {ref!r}")


# --- small files as bytes ------------------------------------------------------------------


def ship_file(path: str | Path) -> dict[str, Any]:
    """``{"name", "data"}`` of one file, for a loop config (checked against
    :data:`MAX_SHIPPED_BYTES`)."""
    path = Path(path)
    size = path.stat().st_size
    if size > MAX_SHIPPED_BYTES:
        raise ConfigError(f"{path} has {size} bytes: too large to send to the training workers")
    return {"name": path.name, "data": path.read_bytes()}


def ship_dir(path: str | Path) -> dict[str, bytes]:
    """The files of a directory (an adapter: flat, small) as ``{relative path: bytes}``."""
    root = Path(path)
    if not root.is_dir():
        raise ConfigError(f"{root} is not a directory")
    files = {str(p.relative_to(root)): p for p in sorted(root.rglob("*")) if p.is_file()}
    total = sum(p.stat().st_size for p in files.values())
    if total > MAX_SHIPPED_BYTES:
        raise ConfigError(f"{root} has {total} bytes: too large to send to the training workers")
    return {name: p.read_bytes() for name, p in files.items()}


def materialize(files: dict[str, bytes], dest: str | Path) -> Path:
    """Write shipped ``files`` (from :func:`ship_dir`) under ``dest``; return ``dest``."""
    root = Path(dest)
    for name, data in files.items():
        rel = Path(name)
        if rel.is_absolute() or ".." in rel.parts:
            raise ConfigError(f"shipped file name {name!r} leaves its directory")
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def model_ref(base: BaseModelRef | str, adapter_dir: str | Path | None = None) -> dict[str, Any]:
    """A model for the workers: ``base`` (resolved on their node) plus, maybe, the files of
    an adapter the driver verified (shipped as bytes): a distillation teacher, a reward
    model."""
    return {"base": base, "adapter": ship_dir(adapter_dir) if adapter_dir is not None else None}


def adapter_on_node(ref: dict[str, Any] | str, dest: str | Path) -> str | None:
    """The adapter of a :func:`model_ref` written under ``dest`` on this node (None: none)."""
    if isinstance(ref, str) or not ref.get("adapter"):
        return None
    return str(materialize(ref["adapter"], dest))


def load_teacher(ref: dict[str, Any] | str) -> Any:
    """A :func:`model_ref` (or a plain base path / hub id) as one causal LM on this node:
    the base resolved here, the adapter merged into it."""
    import torch
    from transformers import AutoModelForCausalLM

    base_ref = ref if isinstance(ref, str) else ref["base"]
    base = AutoModelForCausalLM.from_pretrained(resolve_base_on_node(base_ref), dtype=torch.float32)
    with tempfile.TemporaryDirectory(prefix="qlp-teacher-") as tmp:
        adapter = adapter_on_node(ref, tmp)
        if adapter is None:
            return base
        from peft import PeftModel

        return PeftModel.from_pretrained(base, adapter).merge_and_unload()


# --- the run's metrics in the worker's temp dir and its checkpoints ---------------------------


def save_metrics_to(local: str | Path | None, checkpoint_dir: str | Path) -> None:
    """Copy rank 0's ``metrics.jsonl`` (``local``) into a checkpoint directory it reports."""
    if local is not None and Path(local).is_file():
        shutil.copyfile(local, Path(checkpoint_dir) / METRICS_FILE)


def restore_metrics_from(checkpoint_dir: str | Path, local: str | Path, step: int) -> None:
    """A resumed rank 0 (maybe on another node) continues the ``metrics.jsonl`` of the
    checkpoint of ``step``; lines after ``step`` are logged again, so they are dropped."""
    src = Path(checkpoint_dir) / METRICS_FILE
    if src.is_file():
        shutil.copyfile(src, local)
        drop_metrics_after(local, step)


__all__ = [
    "MAX_SHIPPED_BYTES",
    "BaseModelRef",
    "adapter_on_node",
    "base_model_ref",
    "load_teacher",
    "looks_like_path",
    "materialize",
    "model_ref",
    "node_label",
    "resolve_base_on_node",
    "restore_metrics_from",
    "save_metrics_to",
    "ship_dir",
    "ship_file",
]
