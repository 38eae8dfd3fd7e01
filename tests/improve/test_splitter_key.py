"""The improve loop's key for the Serve app's experiments API (issue 22): improve.api_key
(QLP_IMPROVE__API_KEY), else serve.admin_key; a key without the admin role is refused
with an error naming the role, before any request (a key this host knows) or from the
Serve app's 403 (a key it does not). No Ray: the gateway's real routers under uvicorn."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
import uvicorn

from qlp_ray.core.api_keys import create_key, key_file, revoke_key
from qlp_ray.core.config import load_config
from qlp_ray.core.errors import ConfigError, PermissionDenied
from qlp_ray.improve.splitter import ServeExperimentSplitter, improve_key
from tests.security.conftest import build_app, make_cfg


def _cfg(home, **improve):
    return load_config(overrides={"paths": {"home": str(home)}, "improve": improve}, environ={})


def test_the_configured_key_wins_over_the_admin_key(tmp_path) -> None:
    keys = key_file(_cfg(tmp_path).paths.keys)
    admin, _ = create_key(keys, "admin", "improve")
    cfg = load_config(overrides={"paths": {"home": str(tmp_path)}, "serve": {"admin_key": "adm"}},
                      environ={"QLP_IMPROVE__API_KEY": admin})  # fmt: skip
    assert improve_key(cfg) == (admin, "improve.api_key")
    splitter = ServeExperimentSplitter(cfg)
    assert splitter._client.headers["authorization"] == f"Bearer {admin}"
    splitter.close()
    fallback = load_config(overrides={"paths": {"home": str(tmp_path)},
                                      "serve": {"admin_key": "adm"}}, environ={})  # fmt: skip
    assert improve_key(fallback) == ("adm", "serve.admin_key")
    assert improve_key(_cfg(tmp_path)) == (None, "no key")


def test_an_empty_key_is_rejected_at_config_load(tmp_path) -> None:
    with pytest.raises(ValueError, match="improve.api_key` is empty"):
        load_config(overrides={"paths": {"home": str(tmp_path)}},
                    environ={"QLP_IMPROVE__API_KEY": ""})  # fmt: skip


@pytest.mark.parametrize("role", ["user", "trainer", "reviewer"])
def test_a_known_key_without_the_admin_role_is_refused_naming_it(tmp_path, role) -> None:
    keys = key_file(_cfg(tmp_path).paths.keys)
    key, rec = create_key(keys, role, "improve")
    with pytest.raises(ConfigError) as err:
        ServeExperimentSplitter(_cfg(tmp_path, api_key=key))
    msg = str(err.value)
    assert f"API key {rec.key_id} with role {role!r}" in msg and "'admin' role" in msg
    assert "qlp keys api create --role admin" in msg and key not in msg


def test_a_revoked_key_is_refused(tmp_path) -> None:
    keys = key_file(_cfg(tmp_path).paths.keys)
    key, rec = create_key(keys, "admin", "improve")
    revoke_key(keys, rec.key_id)
    with pytest.raises(ConfigError, match=f"{rec.key_id}, which is revoked"):
        improve_key(_cfg(tmp_path, api_key=key))


@pytest.fixture
def gateway(tmp_path) -> Iterator[tuple[str, dict[str, str]]]:
    """The gateway's routers and auth on 127.0.0.1 (its own home and key file)."""
    cfg = make_cfg(tmp_path / "gateway")
    keys = {r: create_key(key_file(cfg.paths.keys), r, r)[0] for r in ("user", "trainer")}
    app = build_app(cfg)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    yield f"http://127.0.0.1:{port}", keys
    server.should_exit = True
    thread.join(10)
    app.state.gateway.recorder.close()


def test_the_serve_apps_403_names_the_role(tmp_path, gateway) -> None:
    """A key from another host's key file: only the Serve app can tell; its 403 becomes an
    error naming the missing role and where the key came from."""
    url, keys = gateway
    cfg = _cfg(tmp_path / "orchestrator", api_key=keys["trainer"], experiment_url=url)
    splitter = ServeExperimentSplitter(cfg)
    with pytest.raises(PermissionDenied) as err:
        splitter.start("improve-sql-v2", "sql", 1, 2, 0.5)
    msg = str(err.value)
    assert "HTTP 403" in msg and "(improve.api_key)" in msg and "'admin' role" in msg
    assert keys["trainer"] not in msg
    with pytest.raises(PermissionDenied, match="HTTP 401"):
        ServeExperimentSplitter(
            _cfg(tmp_path / "o2", api_key="qlp-nope", experiment_url=url)
        ).stats("improve-sql-v2")
    splitter.close()
