"""Keys and request fields that once gave a 500 or silently turned a check off (no Ray)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from fastapi import Depends, FastAPI, Request
from fastapi.testclient import TestClient
from pydantic import ValidationError

from qlp_ray.core.config import load_config
from qlp_ray.core.errors import ConfigError, InvalidRequest
from qlp_ray.models.composition import parse_multiplex_id, parse_stack
from qlp_ray.serve.http.auth import check_api_key, require_admin
from qlp_ray.serve.http.errors import install_error_handlers
from qlp_ray.serve.http.protocol import CompletionRequest


@pytest.fixture()
def http(tmp_path):
    cfg = load_config(
        overrides={"paths": {"home": str(tmp_path)},
                   "serve": {"api_key": "user-key", "admin_key": "admin-key"}},
        environ={},
    )  # fmt: skip
    app = FastAPI()
    install_error_handlers(app)
    app.state.gateway = SimpleNamespace(cfg=cfg)

    @app.get("/v1/models")
    async def models(request: Request) -> dict:
        check_api_key(request, cfg.serve.api_key)
        return {"ok": True}

    @app.get("/v1/admin/thing", dependencies=[Depends(require_admin)])
    async def admin() -> dict:
        return {"ok": True}

    return TestClient(app)


@pytest.mark.parametrize("token", ["user-kéy", "ключ", "\u00b2", "user-key\u200b"])
def test_non_ascii_bearer_tokens_get_401_not_500(http, token):
    headers = {"authorization": f"Bearer {token}".encode()}
    for path in ("/v1/models", "/v1/admin/thing"):
        r = http.get(path, headers=headers)
        assert r.status_code == 401, (path, r.status_code, r.text)
        assert r.json()["error"]["code"] == "invalid_api_key"


def test_right_keys_pass_and_the_user_key_is_no_admin_key(http):
    assert http.get("/v1/models", headers={"authorization": "Bearer user-key"}).status_code == 200
    admin = {"authorization": "Bearer admin-key"}
    assert http.get("/v1/admin/thing", headers=admin).status_code == 200
    user = {"authorization": "Bearer user-key"}
    assert http.get("/v1/admin/thing", headers=user).status_code == 403


@pytest.mark.parametrize("name", ["API_KEY", "ADMIN_KEY"])
def test_an_empty_key_is_a_config_error_not_auth_off(name):
    with pytest.raises(ConfigError, match=f"serve.{name.lower()}` is empty"):
        load_config(environ={f"QLP_SERVE__{name}": ""})
    with pytest.raises(ConfigError, match=f"serve.{name.lower()}` is empty"):
        load_config(overrides={"serve": {name.lower(): "  "}}, environ={})
    with pytest.raises(ConfigError, match="must be ASCII"):
        load_config(environ={f"QLP_SERVE__{name}": "clé"})


@pytest.mark.parametrize("model", ["a@\u00b2", "a@\u0663", "a@\uff11"])
def test_non_ascii_digit_versions_are_a_400(model):
    with pytest.raises(InvalidRequest):
        parse_multiplex_id(model)
    with pytest.raises(InvalidRequest):
        parse_stack(f"{model}+b")


@pytest.mark.parametrize("seed", [-1, 2**63, 10**30])
def test_seed_is_bounded(seed):
    with pytest.raises(ValidationError, match="seed"):
        CompletionRequest(model="base", prompt="hi", seed=seed)
    assert CompletionRequest(model="base", prompt="hi", seed=2**63 - 1).seed == 2**63 - 1


@pytest.fixture()
def capped():
    from qlp_ray.serve.http.limits import BodyLimitMiddleware

    app = FastAPI()
    install_error_handlers(app)
    app.add_middleware(BodyLimitMiddleware)
    app.state.max_body_bytes = 1024
    seen = []

    @app.post("/v1/completions")
    async def completions(request: Request) -> dict:
        body = await request.body()
        seen.append(len(body))
        return {"bytes": len(body)}

    return TestClient(app), seen


def test_an_oversized_body_gets_413_unread(capped):
    http, seen = capped
    assert http.post("/v1/completions", content=b"x" * 1024).json() == {"bytes": 1024}
    r = http.post("/v1/completions", content=b"x" * 1025)
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    assert "1024 bytes (serve.max_body_bytes)" in r.json()["error"]["message"]

    def chunks():  # no Content-Length: counted while it streams in
        for _ in range(8):
            yield b"y" * 512

    r = http.post("/v1/completions", content=chunks())
    assert r.status_code == 413
    assert seen == [1024]  # the route never got an oversized body
