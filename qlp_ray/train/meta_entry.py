"""``qlp train --init meta``: the registry's meta-learned LoRA init, one signed entry per inputs.

The *sources* are the registry's current adapters of other domains that were trained by
SFT on capsule files still found in the job data directories (``jobs.data_dirs``, default
``<home>/data`` and the bundled samples), matched by the SHA-256 their lineage records.
The *inputs* are the base model, the adapter's shape (PEFT method, rank, alpha, target
modules), the Reptile options (``train.meta_init``) and the sources' (domain, data hash)
pairs; their SHA-256 (``inputs_hash``) names a meta-init.

:func:`ensure_meta_init` reuses the registered ``meta-init`` version whose lineage has that
hash (verified: signature, files, base model), else runs Reptile in this process
(:func:`qlp_ray.train.meta_init.reptile_init`, a few seconds on the tiny model) and
registers the result, signed, as the next version of ``meta-init`` (kind ``meta_init``, no
routing centroid, so never routed to). :func:`resolve_meta_init` checks a named
``meta-init@N`` instead. Either way the run gets an :class:`InitRef`: the verified
directory and the SHA-256 of its safetensors, which every Ray Train worker checks again
before it loads the weights (:func:`qlp_ray.train.meta_init.apply_init`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from qlp_ray.core.config import QLPConfig, TrainConfig
from qlp_ray.core.errors import InvalidRequest, QLPError, TrainingError
from qlp_ray.data.capsules import SAMPLES_DIR, file_sha256, load_capsules
from qlp_ray.models.base import base_model_id, resolve_base_path
from qlp_ray.registry import Registry
from qlp_ray.train.meta_init import ReptileOptions
from qlp_ray.train.methods import ALIASES, METHODS, parse_init

logger = logging.getLogger(__name__)

META_INIT_ID = "meta-init"
META_DOMAIN = "meta"
KIND = "meta_init"
WEIGHTS = "adapter_model.safetensors"
# lineage methods of the SFT family (trained on capsules), from the one method table
SFT_LINEAGE = frozenset(
    [n for n, m in METHODS.items() if m.peft is not None]
    + [alias for alias, n in ALIASES.items() if METHODS[n].peft is not None]
)
MAX_FILE_BYTES = 256 * 2**20


@dataclass(frozen=True)
class Source:
    """One source domain's training file, found by the data hash of a registered adapter."""

    domain: str
    adapter_id: str
    version: int
    data_hash: str
    path: Path

    def lineage(self) -> dict[str, Any]:
        return {"domain": self.domain, "adapter_id": self.adapter_id, "version": self.version,
                "data_hash": self.data_hash}  # fmt: skip


@dataclass(frozen=True)
class InitRef:
    """A verified meta-init: registry id, version, directory and its weights' SHA-256."""

    adapter_id: str
    version: int
    path: str
    weights_sha256: str
    created: bool = False

    def worker_config(self) -> dict[str, str]:
        """What a Ray Train worker needs to load it (and check it again)."""
        return {"weights": str(Path(self.path) / WEIGHTS), "sha256": self.weights_sha256}

    def lineage(self) -> dict[str, Any]:
        return {"adapter_id": self.adapter_id, "version": self.version,
                "weights_sha256": self.weights_sha256}  # fmt: skip


def adapter_shape(train_cfg: TrainConfig) -> dict[str, Any]:
    """What decides the meta-init's tensors: PEFT method, rank, alpha, target modules."""
    shape: dict[str, Any] = {"method": train_cfg.method, "alpha": train_cfg.alpha,
                             "target_modules": sorted(train_cfg.target_modules)}  # fmt: skip
    if train_cfg.method == "adalora":
        shape["init_r"] = train_cfg.adalora.init_r
    else:
        shape["rank"] = train_cfg.rank
    return shape


def reptile_options(train_cfg: TrainConfig) -> ReptileOptions:
    m = train_cfg.meta_init
    return ReptileOptions(rounds=m.rounds, inner_steps=m.inner_steps, inner_lr=m.inner_lr,
                          meta_lr=m.meta_lr, batch_size=m.batch_size,
                          max_length=128, seed=train_cfg.seed)  # fmt: skip


def inputs_hash(base_model: str, shape: dict[str, Any], options: ReptileOptions,
                sources: list[Source], max_texts: int) -> str:  # fmt: skip
    """SHA-256 of everything the meta-init is computed from."""
    payload = {"base_model": base_model, "shape": shape, "reptile": asdict(options),
               "max_texts_per_domain": max_texts,
               "sources": sorted([s.domain, s.data_hash] for s in sources)}  # fmt: skip
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def _data_files(cfg: QLPConfig) -> dict[str, Path]:
    """SHA-256 -> path of every .jsonl file in the job data directories."""
    dirs = cfg.jobs.data_dirs or [cfg.paths.root / "data", SAMPLES_DIR]
    found: dict[str, Path] = {}
    for d in dirs:
        root = Path(d).expanduser()
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*.jsonl")):
            if path.is_file() and path.stat().st_size <= MAX_FILE_BYTES:
                found.setdefault(file_sha256(path), path)
    return found


def find_sources(cfg: QLPConfig, exclude_domain: str) -> tuple[list[Source], dict[str, str]]:
    """The source domains' training files, and why other adapters were left out."""
    base = base_model_id(cfg)
    files: dict[str, Path] | None = None
    sources: dict[tuple[str, str], Source] = {}
    skipped: dict[str, str] = {}
    for rec in Registry(cfg).list():
        md = rec.metadata or {}
        if md.get("kind", "adapter") != "adapter" or rec.domain == exclude_domain:
            continue
        why = None
        if not rec.signed:
            why = f"does not verify: {rec.problem}"
        elif rec.base_model != base:
            why = f"base model {rec.base_model!r}, not {base!r}"
        elif md.get("method") not in SFT_LINEAGE or not md.get("data_hash"):
            why = "not an SFT adapter with a recorded data hash"
        else:
            files = _data_files(cfg) if files is None else files
            path = files.get(md["data_hash"])
            if path is None:
                why = "its training file is not in the job data directories"
            else:
                key = (rec.domain, md["data_hash"])
                sources.setdefault(key, Source(rec.domain, rec.adapter_id, rec.version,
                                               md["data_hash"], path))  # fmt: skip
        if why:
            skipped[f"{rec.adapter_id}@{rec.version}"] = why
    return sorted(sources.values(), key=lambda s: (s.domain, s.data_hash)), skipped


def domain_texts(sources: list[Source], max_texts: int) -> dict[str, list[str]]:
    """prompt + completion texts per source domain (that domain's capsules, first N)."""
    from qlp_ray.data.format import to_prompt_completion

    out: dict[str, list[str]] = {}
    for s in sources:
        texts = out.setdefault(s.domain, [])
        for c in load_capsules(s.path):
            if c.domain == s.domain and len(texts) < max_texts:
                pc = to_prompt_completion(c)
                texts.append(pc["prompt"] + pc["completion"])
    return {d: t for d, t in out.items() if t}


def _weights_sha(path: Path) -> str:
    return file_sha256(Path(path) / WEIGHTS)


def find_registered(cfg: QLPConfig, digest: str) -> InitRef | None:
    """The newest registered meta-init computed from these inputs, verified."""
    registry = Registry(cfg)
    for version in reversed(registry.storage.versions(META_INIT_ID)):
        record = registry.get(META_INIT_ID, version)
        if (record.metadata or {}).get("inputs_hash") == digest:
            record = registry.verify(META_INIT_ID, version, expected_base_model=base_model_id(cfg))
            return InitRef(META_INIT_ID, version, str(record.path), _weights_sha(record.path))
    return None


def compute_meta_init(
    cfg: QLPConfig, train_cfg: TrainConfig, texts: dict[str, list[str]], dest: Path
) -> dict[str, Any]:
    """Reptile over ``texts`` in this process; saves the adapter into ``dest`` and returns
    what it measured (seconds, per-domain text counts)."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qlp_ray.train.meta_init import reptile_init
    from qlp_ray.train.peft_setup import build_peft_config
    from qlp_ray.train.sft import save_adapter_dir

    base_path = resolve_base_path(cfg)
    tok = AutoTokenizer.from_pretrained(base_path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    torch.manual_seed(train_cfg.seed)
    base = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
    model = get_peft_model(base, build_peft_config(train_cfg, train_cfg.steps))
    t0 = time.perf_counter()
    reptile_init(model, tok, texts, reptile_options(train_cfg))
    seconds = round(time.perf_counter() - t0, 2)
    save_adapter_dir(model, dest)
    return {"seconds": seconds, "texts": {d: len(t) for d, t in sorted(texts.items())}}


def ensure_meta_init(
    cfg: QLPConfig,
    train_cfg: TrainConfig,
    domain: str,
    progress: Callable[[str], None] | None = None,
) -> InitRef:
    """The meta-init for a new ``domain`` run with ``train_cfg``: reused when registered
    with the same inputs, else computed and registered (signed)."""
    say = progress or (lambda _m: None)
    sources, skipped = find_sources(cfg, domain)
    for ref, why in skipped.items():
        logger.info("meta-init: %s left out: %s", ref, why)
    texts = domain_texts(sources, train_cfg.meta_init.max_texts_per_domain)
    if len(texts) < 2:
        raise InvalidRequest(
            f"--init meta needs registered SFT adapters of at least two other domains whose "
            f"training files are in the job data directories; found {sorted(texts) or 'none'}"
            + (
                f" ({len(skipped)} adapter(s) left out, e.g. {next(iter(skipped.items()))})"
                if skipped
                else ""
            ),  # fmt: skip
            param="init",
        )
    sources = [s for s in sources if s.domain in texts]
    options = reptile_options(train_cfg)
    shape = adapter_shape(train_cfg)
    base = base_model_id(cfg)
    max_texts = train_cfg.meta_init.max_texts_per_domain
    digest = inputs_hash(base, shape, options, sources, max_texts)
    found = find_registered(cfg, digest)
    if found is not None:
        say(f"reusing meta-init {found.adapter_id} v{found.version} (same inputs)")
        return found
    say(f"meta-learning a LoRA init over {', '.join(sorted(texts))} ({options.rounds} rounds)")
    with tempfile.TemporaryDirectory(prefix="qlp-meta-init-") as tmp:
        measured = compute_meta_init(cfg, train_cfg, texts, Path(tmp) / "adapter")
        metadata = {
            "kind": KIND,
            "method": "reptile",
            "inputs_hash": digest,
            "shape": shape,
            "reptile": asdict(options),
            "max_texts_per_domain": max_texts,
            "sources": [s.lineage() for s in sources],
            "texts": measured["texts"],
            "run": {"seconds": measured["seconds"]},
        }
        record = Registry(cfg).register(Path(tmp) / "adapter", adapter_id=META_INIT_ID,
                                        domain=META_DOMAIN, base_model=base,
                                        metadata=metadata)  # fmt: skip
    say(f"registered meta-init v{record.version} (signed={record.signed})")
    return InitRef(META_INIT_ID, record.version, str(record.path), _weights_sha(record.path),
                   created=True)  # fmt: skip


def resolve_meta_init(cfg: QLPConfig, text: str, train_cfg: TrainConfig) -> InitRef:
    """A named ``id[@version]`` meta-init, verified, whose shape fits ``train_cfg``."""
    _, adapter_id, version = parse_init(text)
    assert adapter_id is not None
    try:
        record = Registry(cfg).verify(adapter_id, version, expected_base_model=base_model_id(cfg))
    except QLPError as exc:
        raise InvalidRequest(f"`init` {text!r}: {exc}", param="init") from exc
    md = record.metadata or {}
    if md.get("kind") != KIND:
        raise InvalidRequest(
            f"`init` {text!r} is a {md.get('kind', 'adapter')}, not a meta-init "
            "(use 'meta', 'base' or a registered meta-init id[@version])",
            param="init",
        )
    want = adapter_shape(train_cfg)
    if md.get("shape") != want:
        raise InvalidRequest(
            f"`init` {text!r} was meta-learned for an adapter {md.get('shape')}, this run "
            f"trains {want}",
            param="init",
        )
    return InitRef(record.adapter_id, int(record.version), str(record.path),
                   _weights_sha(record.path))  # fmt: skip


def init_for_run(
    cfg: QLPConfig,
    init: str | None,
    train_cfg: TrainConfig,
    domain: str,
    progress: Callable[[str], None] | None = None,
) -> InitRef | None:
    """``--init``: None for ``base``, else the verified meta-init the run starts from."""
    kind, _, _ = parse_init(init)
    if kind == "base":
        return None
    if train_cfg.method not in ("lora", "adalora"):
        raise InvalidRequest(
            f"--init {init} needs train.method lora or adalora, got {train_cfg.method!r}",
            param="init",
        )
    try:
        if kind == "meta":
            return ensure_meta_init(cfg, train_cfg, domain, progress)
        return resolve_meta_init(cfg, str(init), train_cfg)
    except InvalidRequest:
        raise
    except (OSError, RuntimeError, QLPError) as exc:
        raise TrainingError(f"meta-init failed: {exc}") from exc


__all__ = [
    "KIND",
    "META_INIT_ID",
    "InitRef",
    "Source",
    "adapter_shape",
    "domain_texts",
    "ensure_meta_init",
    "find_registered",
    "find_sources",
    "init_for_run",
    "inputs_hash",
    "resolve_meta_init",
]
