"""Render a config as commented YAML: ``qlp config dump`` and ``configs/default.yaml``.

Every field is written in model order, preceded by its ``description`` as ``#`` comment
lines, so the YAML file is generated from the models and an option is written once.
Scalars, lists and flat mappings are written inline; nested sections and mappings of
lists as blocks.
"""

from __future__ import annotations

import textwrap
from typing import Any

import yaml
from pydantic import BaseModel

WIDTH = 96
INDENT = "  "
REDACTED = "<redacted>"

DEFAULTS_HEADER = """\
qlp_ray configuration defaults, GENERATED from the section models in qlp_ray/core/config/
by `qlp config dump`: do not edit by hand. Change a model, then run
  qlp config dump --output configs/default.yaml
Override any subset with `qlp --config my.yaml` or QLP_<SECTION>__<FIELD> environment
variables (e.g. QLP_SERVE__PORT=8001); QLP_HOME sets paths.home."""

EFFECTIVE_HEADER = """\
Effective qlp_ray configuration of this invocation (defaults <- --config / QLP_CONFIG file
<- QLP_* environment), from `qlp config dump --effective`; secrets are redacted."""


def _scalar(value: Any) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6, sort_keys=False)
    return text.removesuffix("\n...\n").strip()


def _comment(text: str, indent: str) -> list[str]:
    width = max(40, WIDTH - len(indent) - 2)
    wrapped = textwrap.wrap(text, width=width, break_on_hyphens=False, break_long_words=False)
    return [f"{indent}# {line}" for line in wrapped]


def _is_secret(model: BaseModel, name: str) -> bool:
    extra = type(model).model_fields[name].json_schema_extra
    return isinstance(extra, dict) and bool(extra.get("secret"))


def secret_env_vars(model: type[BaseModel], prefix: str = "QLP_") -> set[str]:
    """Names of the ``QLP_<SECTION>__<FIELD>`` variables that set a secret field of
    ``model`` (nested sections included)."""
    names: set[str] = set()
    for name, field in model.model_fields.items():
        var = f"{prefix}{name.upper()}"
        sub = field.annotation
        if isinstance(sub, type) and issubclass(sub, BaseModel):
            names |= secret_env_vars(sub, f"{var}__")
        elif isinstance(field.json_schema_extra, dict) and field.json_schema_extra.get("secret"):
            names.add(var)
    return names


def _value_lines(key: str, value: Any, indent: str) -> list[str]:
    inline = f"{indent}{key}: {_scalar(value)}"
    if (
        isinstance(value, dict)
        and value
        and (len(inline) > WIDTH or any(isinstance(v, dict | list) for v in value.values()))
    ):
        lines = [f"{indent}{key}:"]
        for sub_key, sub_value in value.items():
            lines += _value_lines(str(sub_key), sub_value, indent + INDENT)
        return lines
    return [inline]


def _section_lines(model: BaseModel, indent: str, redact: bool) -> list[str]:
    lines: list[str] = []
    dumped = model.model_dump(mode="json")
    for name, info in type(model).model_fields.items():
        if not indent:
            lines.append("")  # a blank line before each top-level section
        if info.description:
            lines += _comment(info.description, indent)
        value = getattr(model, name)
        if isinstance(value, BaseModel):
            lines.append(f"{indent}{name}:")
            lines += _section_lines(value, indent + INDENT, redact)
            continue
        plain = dumped[name]
        if redact and plain not in (None, "") and _is_secret(model, name):
            plain = REDACTED
        lines += _value_lines(name, plain, indent)
    return lines


def dump_yaml(config: BaseModel, *, header: str = DEFAULTS_HEADER, redact: bool = False) -> str:
    """``config`` as YAML with each field's description as a comment above it.

    Top-level sections are separated by a blank line. ``redact`` replaces the values of
    fields marked ``json_schema_extra={"secret": True}`` (keys, passwords) when set.
    """
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    lines += _section_lines(config, "", redact)
    return "\n".join(lines).lstrip("\n") + "\n"


__all__ = ["DEFAULTS_HEADER", "EFFECTIVE_HEADER", "dump_yaml"]
