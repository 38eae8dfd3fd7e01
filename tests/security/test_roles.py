"""Issue 22, finding 1: admin routes answered 200 with no key (label queue, analytics:
other users' prompts). Roles per route, closed by default, the loopback opt-out."""

from __future__ import annotations

import os

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from qlp_ray.core.api_keys import hash_key, key_file, load_keys
from qlp_ray.core.errors import ConfigError
from tests.security.conftest import bearer, build_app, make_cfg

ADMIN_ROUTES = [
    ("GET", "/v1/admin/label-queue"),
    ("GET", "/v1/admin/analytics"),
    ("GET", "/v1/admin/adapters"),
    ("GET", "/v1/admin/experiments"),
    ("GET", "/v1/admin/corrections"),
    ("GET", "/v1/admin/analytics/timeseries"),
    ("GET", "/v1/admin/improve/decisions"),
    ("GET", "/v1/admin/devices"),
]
TRAINER_ROUTES = [
    ("GET", "/v1/fine-tuning/jobs"),
    ("POST", "/v1/datasets/validate"),
    ("POST", "/v1/files"),
    ("GET", "/v1/evaluations/leaderboard"),
    ("GET", "/v1/fine-tuning/methods"),
]


@pytest.fixture()
def default_app(tmp_path):
    """The default configuration: no keys at all."""
    app = build_app(make_cfg(tmp_path))
    with TestClient(app) as client:
        yield client
    app.state.gateway.recorder.close()


@pytest.mark.parametrize(("method", "path"), ADMIN_ROUTES + TRAINER_ROUTES)
def test_admin_and_trainer_routes_are_closed_with_the_default_config(default_app, method, path):
    r = default_app.request(method, path, json={})
    assert r.status_code == 403, (path, r.status_code, r.text)
    err = r.json()["error"]
    assert "closed" in err["message"] and "qlp keys api create --role" in err["message"]
    assert err["type"] == "permission_error"


def test_each_role_reaches_its_routes_only(keyed):
    client, keys, _ = keyed
    allowed = {
        "user": set(),
        "trainer": {p for _, p in TRAINER_ROUTES},
        "reviewer": {"/v1/admin/corrections"},
        "admin": {p for _, p in ADMIN_ROUTES + TRAINER_ROUTES},
    }
    for role, key in keys.items():
        for method, path in ADMIN_ROUTES + TRAINER_ROUTES:
            r = client.request(method, path, headers=bearer(key), json={"rows": []})
            if path in allowed[role]:
                assert r.status_code not in (401, 403), (role, path, r.text)
            else:
                assert r.status_code == 403, (role, path, r.status_code)
                assert "may not use" in r.json()["error"]["message"]
    for method, path in ADMIN_ROUTES + TRAINER_ROUTES:  # no key, or a wrong one: 401
        for headers in ({}, bearer("qlp-akdeadbeef-nope"), {"authorization": b"Bearer \xff\xfe"}):
            assert client.request(method, path, headers=headers).status_code == 401


def test_keys_are_hashed_at_rest_and_revocation_takes_effect_at_once(keyed):
    client, keys, cfg = keyed
    path = key_file(cfg.paths.keys)
    text = path.read_text()
    assert all(key not in text for key in keys.values())
    assert {k.sha256 for k in load_keys(path)} == {hash_key(k) for k in keys.values()}
    assert oct(path.stat().st_mode & 0o777) == "0o600"
    admin = bearer(keys["admin"])
    assert client.get("/v1/admin/analytics", headers=admin).status_code == 200
    from qlp_ray.cli.app import app as cli

    os.environ["QLP_HOME"] = str(cfg.paths.root)
    try:
        runner = CliRunner()
        listed = runner.invoke(cli, ["keys", "api", "list"])
        assert listed.exit_code == 0 and keys["admin"] not in listed.output
        admin_id = next(k.key_id for k in load_keys(path) if k.role == "admin")
        assert runner.invoke(cli, ["keys", "api", "revoke", admin_id]).exit_code == 0
        bad = runner.invoke(cli, ["keys", "api", "create", "--role", "root"])
        assert bad.exit_code != 0 and "unknown API key role 'root'" in bad.output
    finally:
        del os.environ["QLP_HOME"]
    r = client.get("/v1/admin/analytics", headers=admin)
    assert r.status_code == 401  # the running app re-read the key file


def test_a_writable_key_file_is_refused_and_admin_stays_closed(keyed):
    client, keys, cfg = keyed
    path = key_file(cfg.paths.keys)
    path.chmod(0o666)
    with pytest.raises(ConfigError, match="group/world-writable"):
        load_keys(path)
    assert client.get("/v1/admin/analytics", headers=bearer(keys["admin"])).status_code == 403


def test_config_keys_keep_working_as_user_and_admin_keys(tmp_path):
    app = build_app(make_cfg(tmp_path, {"api_key": "u-key", "admin_key": "a-key"}))
    with TestClient(app) as client:
        assert client.get("/v1/admin/analytics", headers=bearer("a-key")).status_code == 200
        assert client.get("/v1/fine-tuning/jobs", headers=bearer("a-key")).status_code not in (
            401,
            403,
        )  # 503 here: no Ray Jobs API to list
        assert client.get("/v1/admin/analytics", headers=bearer("u-key")).status_code == 403
        assert client.get("/v1/fine-tuning/jobs", headers=bearer("u-key")).status_code == 403
    app.state.gateway.recorder.close()


def test_open_admin_is_loopback_only_and_explicit(tmp_path):
    with pytest.raises(ConfigError, match="insecure_open_admin"):
        make_cfg(tmp_path, {"insecure_open_admin": True, "host": "0.0.0.0"})
    app = build_app(make_cfg(tmp_path, {"insecure_open_admin": True}))
    with TestClient(app) as client:
        assert client.get("/v1/admin/analytics").status_code == 200
    app.state.gateway.recorder.close()


@pytest.mark.parametrize("name", ["API_KEY", "ADMIN_KEY"])
def test_empty_secrets_are_refused_at_config_load(name):
    from qlp_ray.core.config import load_config

    with pytest.raises(ConfigError, match="is empty"):
        load_config(environ={f"QLP_SERVE__{name}": ""})
