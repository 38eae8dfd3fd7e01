"""The model table: every form of a request's ``model`` resolves in one place (no Ray)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest

from qlp_ray.core.errors import AdapterNotFound, InvalidRequest
from qlp_ray.serve.model_table import ModelTable, Target

BASE = "builtin:tiny-llama"


@dataclass
class _Record:
    adapter_id: str
    version: int
    domain: str
    signed: bool = True


class _Registry:
    """The slice of :class:`~qlp_ray.registry.store.Registry` the table uses."""

    def __init__(self) -> None:
        self.cfg = SimpleNamespace(registry=SimpleNamespace(require_signature=True))
        self.current = {"api": 2, "devops": 1}
        self.versions = {("api", 1), ("api", 2), ("devops", 1)}
        self.lists = 0
        self.marker = "g1"

    def generation(self) -> str:
        return self.marker

    def list(self) -> list[_Record]:
        self.lists += 1
        return [_Record(a, v, a) for a, v in self.current.items()]

    def get(self, adapter_id: str, version: int | None = None) -> _Record:
        version = self.current.get(adapter_id) if version is None else version
        if (adapter_id, version) not in self.versions:
            raise AdapterNotFound(f"adapter {adapter_id!r} has no version {version}")
        return _Record(adapter_id, version, adapter_id)

    servable = get  # what a request may be served (retirement etc.: tests/security)


class _Method:
    def __init__(self, fn: Any) -> None:
        self.fn = fn

    async def remote(self, *args: Any) -> Any:
        return self.fn(*args)


class _Router:
    def __init__(self) -> None:
        self.texts: list[str] = []
        self.route = _Method(self._route)

    def _route(self, text: str) -> dict[str, Any]:
        self.texts.append(text)
        return {"target": "devops", "version": 1, "domain": "devops", "confidence": 0.9}


@pytest.fixture
def table() -> ModelTable:
    return ModelTable(_Registry(), BASE, _Router(), max_stack_size=3, poll_s=0.0)


def _resolve(table: ModelTable, model: str, text: str = "") -> Target:
    return asyncio.run(table.resolve(model, text))


def test_auto_asks_the_router_with_the_routing_text(table):
    t = _resolve(table, "auto", "helm upgrade fails")
    assert (t.adapter, t.version, t.domain, t.routed) == ("devops", 1, "devops", True)
    assert t.confidence == 0.9 and t.multiplex_id == "devops@1"
    assert table.router.texts == ["helm upgrade fails"]


def test_base_model_has_no_adapter(table):
    t = _resolve(table, BASE)
    assert t.adapter is None and t.multiplex_id is None and not t.routed


def test_adapter_resolves_to_its_current_version(table):
    t = _resolve(table, "api")
    assert (t.adapter, t.version, t.domain) == ("api", 2, "api")
    assert t.multiplex_id == "api@2"


def test_pinned_version_is_checked_against_the_registry(table):
    assert _resolve(table, "api@1").multiplex_id == "api@1"
    with pytest.raises(AdapterNotFound):
        _resolve(table, "api@7")
    with pytest.raises(InvalidRequest, match="bad adapter version"):
        _resolve(table, "api@latest")


def test_stack_resolves_to_the_canonical_versioned_key(table):
    t = _resolve(table, "api:0.7+devops")
    assert t.adapter == "api@2:0.7+devops@1:1"
    assert (t.version, t.routed) == (None, False)


def test_stack_errors_name_the_problem(table):
    with pytest.raises(AdapterNotFound, match="'nope'"):
        _resolve(table, "api+nope")
    with pytest.raises(InvalidRequest, match="at most 3"):
        _resolve(table, "a+b+c+d")


def test_unknown_model_is_a_404_naming_it(table):
    with pytest.raises(AdapterNotFound, match="'ghost'") as err:
        _resolve(table, "ghost")
    assert err.value.param == "model"


def test_a_new_adapter_is_found_without_waiting_for_the_cache(table):
    assert _resolve(table, "api").version == 2
    table.registry.current["ml"] = 1
    table.registry.versions.add(("ml", 1))
    assert _resolve(table, "ml").multiplex_id == "ml@1"  # unknown id: listed again at once


def test_switch_changes_what_the_table_serves(table):
    asyncio.run(table.adapters(fresh=True))
    lists = table.registry.lists
    table.switch("api", _Record("api", 1, "api"))
    assert _resolve(table, "api").version == 1
    assert table.registry.lists == lists  # no re-listing: the switch is the table's


def test_versioned_id_for_prefetch_and_experiments(table):
    assert asyncio.run(table.versioned_id("api")) == "api@2"
    assert asyncio.run(table.versioned_id("api@1")) == "api@1"
    assert asyncio.run(table.versioned_id("api+devops")) == "api@2:1+devops@1:1"
    with pytest.raises(AdapterNotFound) as err:
        asyncio.run(table.versioned_id("ghost", param="variants.0.target"))
    assert err.value.param == "variants.0.target"
