"""Secrets never travel through Ray: the config a process sends to another one (Serve
deployments' init args, actor constructor args) carries a *marker* in place of every
secret field's value, and the receiving process resolves it from its own environment.

Why: whatever Ray is handed at deploy time is kept by Ray. A Serve deployment's init args
are pickled into the controller's checkpoint (the GCS, Redis with KubeRay's GCS fault
tolerance) and an actor's constructor args into the GCS actor table, so an S3 key or a
database password put there outlives the process and is readable by anyone with access
to the cluster's state.

The rule, for every field marked ``json_schema_extra={"secret": True}`` that is set:

- :func:`portable_config` replaces the value by
  ``{"qlp_secret": {"field": "s3.secret_access_key", "env": ["QLP_S3__SECRET_ACCESS_KEY"],
  "file": "<home>/secrets/<name>.json"}}``; it names where to look, never the value.
- :func:`resolve_config` (in the replica / actor) takes the value from, in order:
  1. the receiving process's environment: the field's ``QLP_<SECTION>__<FIELD>`` variable
     (``store.url`` also ``QLP_DB_URL``), set on every node of a cluster from a Kubernetes
     Secret (``envFrom``) or the cluster launcher's secrets file; a Ray cluster started
     from a shell (``qlp serve``, ``ray start``) passes that shell's environment to its
     workers;
  2. the deploying process's secrets file, ``<home>/secrets/<name>.json`` (mode 0600,
     written by :func:`portable_config`): it carries the secrets that came from a YAML
     file or overrides, and reaches processes on the same machine or on nodes that share
     the home; a file path, like a Kubernetes Secret mounted as a file;
  3. neither: :class:`~qlp_ray.core.errors.ConfigError` naming the field and the variable
     to set on that node.

A marker left unresolved is not a string, so ``QLPConfig.model_validate`` refuses it:
a process that skips :func:`resolve_config` fails instead of using a marker as a key.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from qlp_ray.core.errors import ConfigError

MARKER = "qlp_secret"
SECRETS_DIR = "secrets"
# store.url: the QLP_DB_URL variable names the database too (and wins, qlp_ray/store)
EXTRA_ENV = {"store.url": ("QLP_DB_URL",)}


def _secret_fields(model: BaseModel, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """``(dotted field path, value)`` of every secret field of ``model``, nested too."""
    for name, info in type(model).model_fields.items():
        value = getattr(model, name)
        path = f"{prefix}{name}"
        if isinstance(value, BaseModel):
            yield from _secret_fields(value, f"{path}.")
        elif isinstance(info.json_schema_extra, dict) and info.json_schema_extra.get("secret"):
            yield path, value


def env_names(field: str) -> list[str]:
    """The variables that set ``field`` (``s3.access_key_id`` -> ``QLP_S3__ACCESS_KEY_ID``)."""
    return ["QLP_" + "__".join(field.upper().split(".")), *EXTRA_ENV.get(field, ())]


def secret_values(cfg: BaseModel) -> dict[str, str]:
    """Every secret field of ``cfg`` that is set, by dotted path."""
    return {path: value for path, value in _secret_fields(cfg) if value not in (None, "")}


def secrets_file(home: Path, name: str) -> Path:
    """Where a deploying process keeps the secrets of ``name`` (an app, an actor)."""
    return home / SECRETS_DIR / f"{name}.json"


def _write_private(path: Path, data: dict[str, str]) -> None:
    """``data`` as JSON in ``path``, owner-only, replaced atomically."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".secrets-")  # mode 0600
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _set(data: dict[str, Any], field: str, value: Any) -> None:
    *parents, leaf = field.split(".")
    for part in parents:
        data = data[part]
    data[leaf] = value


def portable_config(
    cfg: BaseModel, name: str | None = None, *, section: str | None = None
) -> dict[str, Any]:
    """``cfg`` as a plain dict to hand to Ray, every set secret replaced by a marker.

    ``name`` (e.g. ``serve-qlp``): also write the secrets to the owner-only file
    ``<home>/secrets/<name>.json`` and name it in the markers, for receivers that do not
    have them in their environment (see the module docstring). Without ``name`` the
    receivers must find them in their environment. ``section`` (e.g. ``s3``): only that
    top-level section (its dict is returned, with its secrets only in the file).
    """
    data = cfg.model_dump(mode="json")
    values = secret_values(cfg)
    if section is not None:
        values = {k: v for k, v in values.items() if k.startswith(f"{section}.")}
    path: Path | None = None
    if name is not None and values:
        path = secrets_file(cfg.paths.root, name)  # type: ignore[attr-defined]
        _write_private(path, values)
    for field in values:
        marker = {"field": field, "env": env_names(field), "file": str(path) if path else None}
        _set(data, field, {MARKER: marker})
    return data if section is None else {section: data[section]}


def without_secrets(cfg: BaseModel) -> BaseModel:
    """A copy of ``cfg`` with every secret field unset, for work that needs none of them
    (a Tune trial: its train/tune/tracking settings)."""
    data = cfg.model_dump(mode="json")
    for field in secret_values(cfg):
        _set(data, field, None if field != "store.url" else "")
    return type(cfg).model_validate(data)


def _markers(data: Any) -> Iterator[dict[str, Any]]:
    if isinstance(data, dict):
        if set(data) == {MARKER}:
            yield data[MARKER]
            return
        for value in data.values():
            yield from _markers(value)


def _env_value(raw: str) -> str:
    """A variable's value as :func:`~qlp_ray.core.config.load_config` reads it (YAML), kept
    as the raw text when that is not a string (a numeric key)."""
    try:
        parsed = yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw
    return parsed if isinstance(parsed, str) else raw


def _from_file(path: str | None, field: str) -> str | None:
    if not path:
        return None
    try:
        return json.loads(Path(path).read_text()).get(field)
    except (OSError, ValueError):
        return None


def resolve_secrets(data: dict[str, Any], environ: Mapping[str, str] | None = None) -> dict:
    """``data`` (from :func:`portable_config`) with its markers replaced by the values of
    this process's environment, else of the secrets file; ``ConfigError`` naming the field
    and its variable when neither has one."""
    env = os.environ if environ is None else environ
    out = json.loads(json.dumps(data))  # a copy: the caller's dict may be Ray's
    for marker in list(_markers(out)):
        field = marker["field"]
        names = marker.get("env") or env_names(field)
        value = next((_env_value(env[n]) for n in names if env.get(n)), None)
        if value is None:
            value = _from_file(marker.get("file"), field)
        if value is None:
            where = f" and {marker['file']} is not readable here" if marker.get("file") else ""
            raise ConfigError(
                f"secret `{field}` was set where this config was deployed but is not available "
                f"in this process: set {' or '.join(names)} in this node's environment "
                f"(a Kubernetes Secret, the cluster's secrets env file){where}"
            )
        _set(out, field, value)
    return out


def resolve_config(data: dict[str, Any], environ: Mapping[str, str] | None = None) -> Any:
    """The ``QLPConfig`` a receiving process builds from :func:`portable_config`'s dict."""
    from qlp_ray.core.config import QLPConfig  # the package imports this module

    return QLPConfig.model_validate(resolve_secrets(data, environ))


__all__ = [
    "MARKER",
    "env_names",
    "portable_config",
    "resolve_config",
    "resolve_secrets",
    "secret_values",
    "secrets_file",
    "without_secrets",
]
