"""Adapter stacks: parsing, validation and the PEFT combination rules (no Ray, no torch).

A request's ``model`` may name a *stack* of adapters composed with PEFT
``add_weighted_adapter``::

    dataeng+frontend              weights default to 1.0
    dataeng:0.7+frontend:0.3      explicit weights
    dataeng@2:0.7+frontend        a pinned version (else the registry's current one)

Anything with ``+`` or ``:`` is a stack (``a:0.5`` is a one-member, weighted stack).
The gateway resolves every member to a version, so the compositor sees the canonical
id (``dataeng@2:0.7+frontend@1:1``), which is also the composition-cache key: a new
current version is a new key, never a stale hit.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

from qlp_ray.core.errors import InvalidRequest

STACK_SEPARATOR = "+"
WEIGHT_SEPARATOR = ":"
VERSION_SEPARATOR = "@"
COMBINATION_TYPES = ("linear", "cat", "svd", "ties")
# PEFT requires one common rank for these (its new adapter keeps that rank)
EQUAL_RANK_TYPES = frozenset({"linear", "ties"})

_ID = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")
_MEMBER = re.compile(r"^(?P<id>[^@:]+)(?:@(?P<version>[^:]*))?(?::(?P<weight>.*))?$")


@dataclass(frozen=True)
class StackMember:
    adapter_id: str
    version: int | None = None
    weight: float = 1.0

    @property
    def multiplex_id(self) -> str:
        """``adapter@version`` (the id a single adapter is multiplexed under)."""
        return self.adapter_id if self.version is None else f"{self.adapter_id}@{self.version}"

    def canonical(self) -> str:
        return f"{self.multiplex_id}{WEIGHT_SEPARATOR}{self.weight:g}"


@dataclass(frozen=True)
class AdapterStack:
    """An ordered list of distinct adapters with weights."""

    members: tuple[StackMember, ...]

    @property
    def key(self) -> str:
        """Canonical id: the composition-cache key and the multiplexed model id."""
        return STACK_SEPARATOR.join(m.canonical() for m in self.members)

    @property
    def resolved(self) -> bool:
        """Whether every member names a version."""
        return all(m.version is not None for m in self.members)

    def contains(self, adapter_id: str, version: int | None = None) -> bool:
        """Whether a member is ``adapter_id`` (at ``version``, when given)."""
        return any(
            m.adapter_id == adapter_id and (version is None or m.version == version)
            for m in self.members
        )

    def with_versions(self, versions: Mapping[str, int]) -> AdapterStack:
        """The stack with unversioned members pinned to ``versions[adapter_id]``."""
        return AdapterStack(
            tuple(
                m if m.version is not None else replace(m, version=versions[m.adapter_id])
                for m in self.members
            )
        )

    def replace_version(self, adapter_id: str, old: int, new: int) -> AdapterStack:
        """The stack with ``adapter_id@old`` replaced by ``adapter_id@new``."""
        return AdapterStack(
            tuple(
                replace(m, version=new) if (m.adapter_id, m.version) == (adapter_id, old) else m
                for m in self.members
            )
        )


def is_stack(model: str) -> bool:
    """Whether a request's ``model`` names a stack rather than one adapter."""
    return STACK_SEPARATOR in model or WEIGHT_SEPARATOR in model


def _bad(model: str, why: str) -> InvalidRequest:
    return InvalidRequest(f"invalid adapter stack {model!r}: {why}", param="model")


def _is_number(text: str) -> bool:
    """ASCII digits only (``str.isdigit`` also accepts e.g. '²', which ``int`` refuses), at
    most 9 of them: a version fits every integer column that stores it."""
    return text.isascii() and text.isdigit() and len(text) <= 9


def _parse_member(model: str, text: str) -> StackMember:
    match = _MEMBER.match(text.strip())
    if not match:
        raise _bad(model, f"member {text!r} is not 'adapter[@version][:weight]'")
    adapter_id = match["id"]
    if not _ID.match(adapter_id):
        raise _bad(model, f"member {adapter_id!r} is not a valid adapter id")
    version = None
    if match["version"] is not None:
        if not _is_number(match["version"]) or int(match["version"]) < 1:
            raise _bad(model, f"member {text!r} has a bad version {match['version']!r}")
        version = int(match["version"])
    weight = 1.0
    if match["weight"] is not None:
        try:
            weight = float(match["weight"])
        except ValueError:
            raise _bad(model, f"member {text!r} has a weight that is not a number") from None
        if not math.isfinite(weight):
            raise _bad(model, f"member {text!r} has a non-finite weight")
    return StackMember(adapter_id, version, weight)


def parse_stack(model: str, *, max_members: int = 8) -> AdapterStack:
    """Parse ``a[@v][:w]+b[@v][:w]+...``; ``InvalidRequest`` (400) names the problem."""
    if not isinstance(model, str) or not model.strip():
        raise _bad(str(model), "empty")
    parts = model.split(STACK_SEPARATOR)
    if any(not p.strip() for p in parts):
        raise _bad(model, "empty member (check the '+' separators)")
    members = tuple(_parse_member(model, p) for p in parts)
    if len(members) > max_members:
        raise _bad(model, f"{len(members)} members, at most {max_members} allowed")
    seen: set[str] = set()
    for m in members:
        if m.adapter_id in seen:
            raise _bad(model, f"adapter {m.adapter_id!r} appears twice")
        seen.add(m.adapter_id)
    return AdapterStack(members)


def choose_combination(
    requested: str, ranks: Mapping[str, int], fallback: str | None
) -> tuple[str, str | None]:
    """The PEFT ``combination_type`` to use for adapters of ``ranks`` and why it changed.

    ``linear`` and ``ties`` need equal ranks; with unequal ranks this falls back to
    ``fallback`` (``cat``/``svd``, which accept any ranks) or raises ``InvalidRequest``
    naming the ranks.
    """
    if requested not in COMBINATION_TYPES:
        raise InvalidRequest(
            f"combination type {requested!r} is not one of {', '.join(COMBINATION_TYPES)}"
        )
    if requested not in EQUAL_RANK_TYPES or len(set(ranks.values())) <= 1:
        return requested, None
    shown = ", ".join(f"{name} r={r}" for name, r in ranks.items())
    if fallback is None:
        raise InvalidRequest(
            f"cannot compose with {requested!r}: PEFT needs equal LoRA ranks ({shown}); "
            "use adapters of one rank or set `serve.composition_fallback` to 'cat' or 'svd'",
            param="model",
        )
    return fallback, f"{requested} needs equal ranks ({shown}); used {fallback}"


__all__ = [
    "COMBINATION_TYPES",
    "AdapterStack",
    "StackMember",
    "choose_combination",
    "is_stack",
    "parse_stack",
]


def multiplex_id(adapter_id: str, version: int | None) -> str:
    """The multiplexed model id of an adapter version."""
    return adapter_id if version is None else f"{adapter_id}@{version}"


def parse_multiplex_id(model_id: str) -> tuple[str, int | None]:
    """Inverse of :func:`multiplex_id`."""
    adapter_id, sep, version = model_id.rpartition("@")
    if not sep:
        return model_id, None
    if not _is_number(version):
        raise InvalidRequest(f"bad adapter version in {model_id!r}", param="model")
    return adapter_id, int(version)
