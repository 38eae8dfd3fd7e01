"""Who may call what: API keys with roles (:mod:`qlp_ray.core.api_keys`), checked per route.

- user routes (completions, chat, models, feedback) need a key granting ``user`` once
  ``serve.api_key`` is set or a ``user`` key exists (open otherwise, as before);
- trainer routes (fine-tuning jobs, datasets, files, evaluations, optimizations) need a
  ``trainer`` (or ``admin``) key; admin routes (``/v1/admin/…``) an ``admin`` key;
  correction reviews a ``reviewer`` (or ``admin``) key. These are CLOSED when no key of
  the role exists, unless ``serve.insecure_open_admin`` (loopback only) opens them.

``serve.api_key`` is a ``user`` key, ``serve.admin_key`` an ``admin`` key.
"""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import Request

from qlp_ray.core.api_keys import Caller, KeyRing, key_file
from qlp_ray.core.errors import AuthenticationError, PermissionDenied

KEY_MESSAGE = "missing or invalid API key: send 'Authorization: Bearer <key>'"
ROUTE_KIND = {
    "admin": ("admin", "an admin key"),
    "trainer": ("training", "a trainer or admin key"),
    "reviewer": ("review", "a reviewer or admin key"),
}
# Routes that need more than the user role (for clients that want to know in advance).
ADMIN_PREFIXES = (
    "/v1/admin/",
    "/v1/fine-tuning/",
    "/v1/evaluations",
    "/v1/optimizations",
    "/v1/datasets/",
    "/v1/files",
)


def bearer_token(request: Request) -> bytes | None:
    """The raw bytes of ``Authorization: Bearer <token>`` (any byte may arrive), or None."""
    raw = request.headers.get("authorization", "").encode("latin-1")  # the bytes as sent
    scheme, _, token = raw.partition(b" ")
    token = token.strip()
    return token if scheme.lower() == b"bearer" and token else None


def keyring_of(request: Request) -> KeyRing:
    """The app's key ring, built from the gateway's config on first use."""
    state = request.app.state
    ring = getattr(state, "keyring", None)
    if ring is None:
        serve_cfg = state.gateway.cfg.serve
        ring = KeyRing(
            key_file(state.gateway.cfg.paths.keys), serve_cfg.api_key, serve_cfg.admin_key
        )
        state.keyring = ring
    return ring


def _open_admin(request: Request) -> bool:
    gateway = getattr(request.app.state, "gateway", None)
    return bool(gateway is not None and gateway.cfg.serve.insecure_open_admin)


def caller_of(request: Request) -> Caller:
    """The request's caller (cached on ``request.state``); 401 when user routes are closed
    and the request carries no valid key."""
    cached = getattr(request.state, "caller", None)
    if cached is not None:
        return cached
    ring = keyring_of(request)
    token = bearer_token(request)
    caller = ring.match(token) if token is not None else None
    if caller is None:
        if ring.inference_closed():
            raise AuthenticationError(KEY_MESSAGE)
        caller = Caller(None, frozenset({"user"}))  # open inference: anonymous
    request.state.caller = caller
    return caller


def require_role(request: Request, role: str) -> Caller:
    """The caller, if it may act as ``role``; else 401 (no valid key) or 403."""
    kind, needs = ROUTE_KIND.get(role, (role, f"a {role} key"))
    try:
        caller = caller_of(request)
    except AuthenticationError:
        if role == "user":
            raise
        raise AuthenticationError(_needs(kind, needs)) from None
    if role in caller.roles or _open_admin(request):
        return caller
    if caller.key_id is None:
        if not keyring_of(request).has_role(role):
            raise PermissionDenied(
                f"{kind} routes are closed: no API key with role {role!r} exists. Create one "
                f"with `qlp keys api create --role {role}` (or set serve.admin_key)"
            )
        raise AuthenticationError(_needs(kind, needs))
    raise PermissionDenied(f"this API key may not use {kind} routes; send {needs}")


def _needs(kind: str, needs: str) -> str:
    return f"{kind} routes need {needs}: send 'Authorization: Bearer <key>'"


def check_api_key(request: Request, api_key: str | None = None) -> Caller:
    """401 unless the request may use user routes (``api_key`` is kept for old callers)."""
    return require_role(request, "user")


async def require_user(request: Request) -> None:
    require_role(request, "user")


async def require_trainer(request: Request) -> None:
    require_role(request, "trainer")


async def require_reviewer(request: Request) -> None:
    require_role(request, "reviewer")


async def require_admin(request: Request) -> None:
    require_role(request, "admin")


def key_matches(request: Request, expected: str) -> bool:
    """Whether the request carries ``Authorization: Bearer <expected>``."""
    token = bearer_token(request)
    return token is not None and hmac.compare_digest(token, expected.encode())


def caller_id(request: Request) -> Any:
    """The key id of the request's caller (None: no key), for stored rows and audit."""
    return caller_of(request).key_id


__all__ = [
    "ADMIN_PREFIXES",
    "bearer_token",
    "caller_id",
    "caller_of",
    "check_api_key",
    "key_matches",
    "keyring_of",
    "require_admin",
    "require_reviewer",
    "require_role",
    "require_trainer",
    "require_user",
]
