"""Typed configuration: one pydantic section per concern, nested in ``QLPConfig``.

Values come from, in order of precedence (last wins):

1. the field defaults of the section models (``configs/default.yaml`` is generated from
   them by ``qlp config dump`` and a test keeps the two equal; it is not read at run time,
   so an install from a wheel has the same defaults),
2. a user YAML file (``qlp --config FILE``, ``QLP_CONFIG`` or ``load_config(path)``),
3. environment variables ``QLP_<SECTION>__<FIELD>`` (e.g. ``QLP_SERVE__PORT=8001``)
   and the shortcut ``QLP_HOME``,
4. ``overrides`` passed to :func:`load_config`.

Unknown keys are errors, and every error names the option and the bad value.

Why the sections sit here, in ``qlp_ray.core``, and not beside the code that reads them:
the lower layers (models, registry, route, store...) take the whole ``QLPConfig``, so it
lives in the bottom layer, and core may not import upward (the import-linter layers
contract). Each module of this package therefore holds the sections of one package and
is named after it (``router.py`` for ``qlp_ray.route`` and the Serve router, ``serve.py``
for ``qlp_ray.serve``, ...); its docstring names the reader. Everything public is
re-exported here: ``from qlp_ray.core.config import X`` is the import to use.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, ValidationError, model_validator

from qlp_ray.core.config.base import Section
from qlp_ray.core.config.core import ClusterConfig, JobsConfig, PathsConfig
from qlp_ray.core.config.demo import DOMAINS, DemoConfig
from qlp_ray.core.config.dump import (
    DEFAULTS_HEADER,
    EFFECTIVE_HEADER,
    dump_yaml,
    secret_env_vars,
)
from qlp_ray.core.config.evaluate import GRADES, EvaluationConfig
from qlp_ray.core.config.hardware import HW_DEVICE_CLASSES, WORKLOADS, HardwareConfig
from qlp_ray.core.config.improve import ActiveLearningConfig, ImproveConfig
from qlp_ray.core.config.model import BUILTIN_TINY, ModelConfig, TinyModelConfig
from qlp_ray.core.config.router import ExternalEndpointConfig, RouterConfig
from qlp_ray.core.config.secrets import portable_config, resolve_config, without_secrets
from qlp_ray.core.config.serve import ExperimentsConfig, ServeConfig
from qlp_ray.core.config.store import RegistryConfig, S3Config, StoreConfig
from qlp_ray.core.config.tracking import TrackingConfig
from qlp_ray.core.config.train import AdaLoraConfigSection, MetaInitSection, TrainConfig
from qlp_ray.core.config.tune import OptimizeConfig, TuneConfig
from qlp_ray.core.errors import ConfigError
from qlp_ray.core.paths import REPO_ROOT, configs_dir

# The generated defaults file (source checkout or package data); documentation, not an input.
DEFAULT_CONFIG_FILE = configs_dir() / "default.yaml"


class QLPConfig(Section):
    paths: PathsConfig = Field(
        default_factory=PathsConfig, description="Where qlp_ray writes (read by every package)."
    )
    model: ModelConfig = Field(
        default_factory=ModelConfig, description="The base model (qlp_ray.models)."
    )
    train: TrainConfig = Field(
        default_factory=TrainConfig, description="LoRA / AdaLoRA training (qlp_ray.train)."
    )
    registry: RegistryConfig = Field(
        default_factory=RegistryConfig, description="Signed adapter store (qlp_ray.registry)."
    )
    router: RouterConfig = Field(
        default_factory=RouterConfig,
        description="Domain routing and its fallback (qlp_ray.route, the Serve router).",
    )
    serve: ServeConfig = Field(
        default_factory=ServeConfig, description="Ray Serve app and HTTP API (qlp_ray.serve)."
    )
    experiments: ExperimentsConfig = Field(
        default_factory=ExperimentsConfig,
        description="A/B experiments applied when serving (qlp_ray.experiments).",
    )
    demo: DemoConfig = Field(default_factory=DemoConfig, description="`qlp demo`.")
    store: StoreConfig = Field(
        default_factory=StoreConfig, description="Feedback / request database (qlp_ray.store)."
    )
    s3: S3Config = Field(
        default_factory=S3Config, description="S3-compatible endpoint of s3:// URIs."
    )
    improve: ImproveConfig = Field(
        default_factory=ImproveConfig,
        description="Continual-learning orchestrator (qlp_ray.improve).",
    )
    active_learning: ActiveLearningConfig = Field(
        default_factory=ActiveLearningConfig,
        description="Label queue selection (qlp_ray.data.active_learning).",
    )
    hardware: HardwareConfig = Field(
        default_factory=HardwareConfig,
        description="Capability table of the scheduler actor; see configs/hardware.yaml.",
    )
    evaluation: EvaluationConfig = Field(
        default_factory=EvaluationConfig,
        description="Grades and pass/fail limits (qlp_ray.evaluate).",
    )
    optimize: OptimizeConfig = Field(
        default_factory=OptimizeConfig, description="`qlp optimize` (qlp_ray.optimize)."
    )
    tune: TuneConfig = Field(
        default_factory=TuneConfig, description="`qlp tune` search (qlp_ray.tune)."
    )
    tracking: TrackingConfig = Field(
        default_factory=TrackingConfig,
        description="MLflow logging of training runs and Tune trials (qlp_ray.train.tracking).",
    )
    jobs: JobsConfig = Field(
        default_factory=JobsConfig, description="Ray Jobs API of long operations."
    )
    cluster: ClusterConfig = Field(
        default_factory=ClusterConfig,
        description="The local Ray cluster `qlp serve` starts when none is running.",
    )

    @model_validator(mode="after")
    def _stack_fits(self) -> QLPConfig:
        if self.router.top_k > self.serve.max_stack_size:
            raise ValueError(
                f"`router.top_k` ({self.router.top_k}) exceeds `serve.max_stack_size` "
                f"({self.serve.max_stack_size})."
            )
        return self

    @property
    def registry_uri(self) -> str:
        """The adapter store location, defaulting to ``<home>/registry``."""
        return self.registry.uri or str(self.paths.root / "registry")


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with errors that name the file."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {p} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p} must hold a mapping, got {type(data).__name__}")
    return data


def _env_overrides(environ: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if environ.get("QLP_HOME"):
        out["paths"] = {"home": environ["QLP_HOME"]}
    for key, raw in environ.items():
        if not key.startswith("QLP_") or "__" not in key:
            continue
        parts = key[4:].lower().split("__")
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = yaml.safe_load(raw) if raw else raw
    return out


def _format_validation(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"])
        bad = err.get("input")
        lines.append(f"`{loc}`: {err['msg']} (got {bad!r})")
    return f"invalid configuration ({source}): " + "; ".join(lines)


def load_config(
    path: str | Path | None = None,
    *,
    overrides: dict[str, Any] | None = None,
    environ: dict[str, str] | None = None,
    defaults_file: Path | None = None,
) -> QLPConfig:
    """Build the effective config: model defaults ← ``defaults_file`` (optional extra base
    layer) ← ``path`` (or ``QLP_CONFIG``) ← ``QLP_*`` env ← ``overrides``."""
    data: dict[str, Any] = {}
    sources = []
    if defaults_file is not None:
        data = read_yaml(defaults_file)
        sources.append(str(defaults_file))
    if path is None:
        path = (environ if environ is not None else os.environ).get("QLP_CONFIG") or None
    if path is not None:
        data = _deep_merge(data, read_yaml(path))
        sources.append(str(path))
    env = _env_overrides(dict(os.environ if environ is None else environ))
    if env:
        data = _deep_merge(data, env)
        sources.append("QLP_* environment")
    if overrides:
        data = _deep_merge(data, overrides)
        sources.append("overrides")
    try:
        return QLPConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation(exc, ", ".join(sources) or "defaults")) from exc


def dump_defaults() -> str:
    """The text of ``configs/default.yaml``: every default with its description."""
    return dump_yaml(QLPConfig(), header=DEFAULTS_HEADER)


def secret_variables() -> set[str]:
    """Environment variables that carry secrets: every ``QLP_*`` one that sets a field
    marked secret (API/admin keys, S3 keys, the store URL), and ``QLP_DB_URL``."""
    return secret_env_vars(QLPConfig) | {"QLP_DB_URL"}


def dump_effective(cfg: QLPConfig) -> str:
    """``cfg`` (e.g. :func:`load_config`'s result) as commented YAML, secrets redacted."""
    return dump_yaml(cfg, header=EFFECTIVE_HEADER, redact=True)


__all__ = [
    "BUILTIN_TINY",
    "DEFAULT_CONFIG_FILE",
    "DOMAINS",
    "GRADES",
    "HW_DEVICE_CLASSES",
    "REPO_ROOT",
    "WORKLOADS",
    "secret_variables",
    "ActiveLearningConfig",
    "AdaLoraConfigSection",
    "DemoConfig",
    "EvaluationConfig",
    "ExperimentsConfig",
    "ExternalEndpointConfig",
    "HardwareConfig",
    "ImproveConfig",
    "ClusterConfig",
    "JobsConfig",
    "MetaInitSection",
    "ModelConfig",
    "OptimizeConfig",
    "PathsConfig",
    "QLPConfig",
    "RegistryConfig",
    "RouterConfig",
    "S3Config",
    "Section",
    "ServeConfig",
    "StoreConfig",
    "TinyModelConfig",
    "TrackingConfig",
    "TrainConfig",
    "TuneConfig",
    "dump_defaults",
    "dump_effective",
    "dump_yaml",
    "load_config",
    "portable_config",
    "resolve_config",
    "without_secrets",
    "read_yaml",
]
