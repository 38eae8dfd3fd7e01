"""Issue 22, rollback protection for pinned versions: a version an explicit rollback took
out of service is refused for ``adapter@N`` (410 Gone, OpenAI error shape) until an admin
promotes it again. A plain set_current to an older version (staging) withdraws nothing."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from fastapi import Request

from qlp_ray.core.errors import VersionRolledBack
from qlp_ray.models.base import base_model_id
from qlp_ray.registry.audit import audit_for
from qlp_ray.registry.signing import init_keys
from qlp_ray.registry.store import Registry
from qlp_ray.serve.model_table import ModelTable
from tests.registry.test_registry import cfg, make_adapter_src, meta  # noqa: F401 - fixture
from tests.security.conftest import bearer

__all__ = ["cfg"]


def _register(reg: Registry, tmp_path: Path, adapter_id: str, seed: int) -> int:
    src = make_adapter_src(tmp_path / f"src-{adapter_id}-{seed}", seed)
    rec = reg.register(src, adapter_id=adapter_id, domain="dataeng",
                       base_model=base_model_id(reg.cfg), metadata=meta(seed))  # fmt: skip
    return int(rec.version)


def _resolve(reg: Registry, model: str):
    table = ModelTable(reg, "base", None, max_stack_size=4, poll_s=0.0)
    return asyncio.run(table.resolve(model, ""))


def test_a_rolled_back_version_is_refused_pinned_until_promoted(cfg, tmp_path: Path) -> None:  # noqa: F811
    reg = Registry(cfg, audit=audit_for(cfg))
    _register(reg, tmp_path, "sql", 0)
    _register(reg, tmp_path, "sql", 1)  # v2 current
    assert _resolve(reg, "sql@2").version == 2
    reg.rollback("sql", 1, reason="v2 answers with DROP TABLE")
    with pytest.raises(VersionRolledBack) as err:
        _resolve(reg, "sql@2")
    msg = str(err.value)
    assert "'sql' v2 was rolled back" in msg and "DROP TABLE" in msg
    assert "qlp improve promote sql 2" in msg and err.value.http_status == 410
    assert _resolve(reg, "sql@1").version == 1 and _resolve(reg, "sql").version == 1
    event = reg.audit.last_pointer_event("sql")
    assert event.kind == "rollback" and event.payload["withdrawn"] == [2]

    reg.set_current("sql", 2, reason="fixed after all")  # an admin re-promotes it
    assert _resolve(reg, "sql@2").version == 2 and _resolve(reg, "sql").version == 2


def test_staging_an_older_version_withdraws_nothing(cfg, tmp_path: Path) -> None:  # noqa: F811
    """set_current to an older version (a hot-swap stages v1 while v2 waits) is audited as
    a rollback but leaves v2 pinnable: only Registry.rollback withdraws."""
    reg = Registry(cfg, audit=audit_for(cfg))
    _register(reg, tmp_path, "sql", 0)
    _register(reg, tmp_path, "sql", 1)
    reg.set_current("sql", 1)
    assert _resolve(reg, "sql@2").version == 2


def test_the_improve_loops_losing_candidate_is_withdrawn(cfg, tmp_path: Path) -> None:  # noqa: F811
    """An experiment's candidate was never current; the orchestrator's rollback names it."""
    reg = Registry(cfg, audit=audit_for(cfg))
    _register(reg, tmp_path, "sql", 0)
    reg.register(make_adapter_src(tmp_path / "cand", 3), adapter_id="sql", domain="dataeng",
                 base_model=base_model_id(cfg), metadata=meta(3), make_current=False)  # fmt: skip
    assert _resolve(reg, "sql@2").version == 2  # the experiment's treatment arm
    reg.rollback("sql", 1, reason="improve-sql-v2: no gain", withdraw=[2])
    with pytest.raises(VersionRolledBack, match="no gain"):
        _resolve(reg, "sql@2")


def test_http_410_in_the_openai_shape_and_the_admin_route_re_enables(keyed, tmp_path) -> None:
    """Over the gateway's real admin routes, auth and error handlers (no Ray)."""
    client, keys, cfg = keyed
    init_keys(cfg.paths.keys)
    reg = Registry(cfg, audit=audit_for(cfg))
    _register(reg, tmp_path, "sql", 0)
    _register(reg, tmp_path, "sql", 1)
    table = ModelTable(reg, "base", None, max_stack_size=4, poll_s=0.0)
    client.app.state.gateway.models = table

    @client.app.get("/probe/{model}")  # what completions does with the model id first
    async def probe(model: str, request: Request):
        target = await request.app.state.gateway.models.resolve(model, "")
        return {"adapter": target.adapter, "version": target.version}

    admin = bearer(keys["admin"])
    r = client.post("/v1/admin/adapters/sql/rollback", json={"version": 1, "reason": "bad"},
                    headers=admin)  # fmt: skip
    assert r.status_code == 200, r.text
    user = bearer(keys["user"])
    r = client.get("/probe/sql@2", headers=user)
    assert r.status_code == 410, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["code"] == "adapter_version_rolled_back" and err["param"] == "model"
    assert "v2 was rolled back" in err["message"] and "promote" in err["message"]
    r = client.post("/v1/admin/adapters/sql/promote", json={"version": 2}, headers=admin)
    assert r.status_code == 200, r.text
    assert client.get("/probe/sql@2", headers=user).json() == {"adapter": "sql", "version": 2}
