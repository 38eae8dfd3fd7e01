"""Issue 22, finding 7: pinned ``adapter@N`` requests bypassed retirement, rollback
protection and key revocation, and a revoked key kept serving what was already listed."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from qlp_ray.core.errors import AdapterNotFound, AdapterRevoked
from qlp_ray.registry.audit import RollbackRefused, audit_for
from qlp_ray.registry.keyring import revoke_key, rotate_keys
from qlp_ray.registry.store import Registry
from qlp_ray.serve.model_table import ModelTable
from tests.registry.test_registry import cfg, register, registry  # noqa: F401 - fixtures

__all__ = ["cfg", "registry"]


def _table(reg: Registry) -> ModelTable:
    return ModelTable(reg, "base", None, max_stack_size=4, poll_s=0.0)


def _resolve(table: ModelTable, model: str):
    return asyncio.run(table.resolve(model, ""))


def test_a_retired_adapter_is_refused_pinned_too(registry: Registry, tmp_path: Path) -> None:
    register(registry, tmp_path, "sql", domain="dataeng")
    table = _table(registry)
    assert _resolve(table, "sql@1").version == 1
    registry.retire("sql", reason="unsafe")
    with pytest.raises(AdapterNotFound, match="retired"):
        _resolve(table, "sql@1")
    registry.set_current("sql", 1)  # a promotion serves it again
    assert _resolve(table, "sql@1").version == 1


def test_pinned_versions_obey_rollback_protection(cfg, tmp_path: Path) -> None:  # noqa: F811
    """A current pointer restored behind the audit log's back refuses the pinned ids too."""
    reg = Registry(cfg, audit=audit_for(cfg))
    register(reg, tmp_path, "sql", domain="dataeng")
    register(reg, tmp_path, "sql", seed=1, domain="dataeng")  # v2 current (audited)
    table = _table(reg)
    assert _resolve(table, "sql@1").version == 1
    reg.storage.write_pointer("sql", 1)  # someone restores the old pointer in the storage
    with pytest.raises(RollbackRefused):
        _resolve(table, "sql@1")
    reg.rollback("sql", 1, reason="explicit")  # an explicit, audited rollback is fine
    assert _resolve(table, "sql@1").version == 1 and _resolve(table, "sql@2").version == 2


def test_a_revoked_key_stops_serving_pinned_and_listed_adapters(cfg, tmp_path: Path) -> None:  # noqa: F811
    reg = Registry(cfg, audit=audit_for(cfg))
    register(reg, tmp_path, "sql", domain="dataeng")  # signed by the first key
    old, _new = rotate_keys(cfg)
    table = _table(reg)
    assert _resolve(table, "sql").version == 1 and _resolve(table, "sql@1").version == 1
    revoke_key(cfg, old)
    reg.storage.bump_generation()  # what `qlp keys revoke` does: gateways re-list
    for model in ("sql@1", "sql"):
        asyncio.run(table.adapters(fresh=True))
        with pytest.raises(AdapterRevoked, match=f"signed by key {old}, which was revoked") as e:
            _resolve(table, model)
        assert e.value.http_status == 403 and e.value.code == "adapter_revoked"
    with pytest.raises(AdapterRevoked):  # loading it (what a compositor does) is refused too
        reg.verified_path("sql", 1)
    audited = len(reg.audit.events(kinds=("verify",)))
    for _ in range(3):  # the listing checks from cached verification: no audit row a call
        reg.list()
    assert len(reg.audit.events(kinds=("verify",))) == audited


def test_the_http_revoke_route_is_admin_only_and_names_bad_keys(keyed) -> None:
    """POST /v1/admin/keys/{id}/revoke (Serve eviction: tests/serve/test_serve_http.py)."""
    from qlp_ray.registry.keyring import revoked_key_ids
    from qlp_ray.registry.signing import init_keys
    from tests.security.conftest import bearer

    client, keys, cfg = keyed
    init_keys(cfg.paths.keys)
    old, new = rotate_keys(cfg)
    path = f"/v1/admin/keys/{old}/revoke"
    assert client.post(path, headers=bearer(keys["user"])).status_code == 403
    r = client.post(f"/v1/admin/keys/{new}/revoke", headers=bearer(keys["admin"]))
    assert r.status_code == 400 and "current signing key" in r.json()["error"]["message"]
    r = client.post("/v1/admin/keys/nope/revoke", headers=bearer(keys["admin"]))
    assert r.status_code == 404 and "nope" in r.json()["error"]["message"]
    r = client.post(path, headers=bearer(keys["admin"]))
    assert r.status_code == 200, r.text
    assert r.json() == {"object": "key.revocation", "key_id": old, "evicted": [],
                        "acknowledged": 0}  # fmt: skip
    assert revoked_key_ids(cfg.paths.keys) == {old}
    assert audit_for(cfg).events(None, ("key_rotate",))[-1].payload == {"revoked_key_id": old}
