"""API keys of the HTTP API: the user key (``serve.api_key``) and the admin key.

Every route but ``/health`` needs ``Authorization: Bearer <api_key>`` when a user key is
configured; admin routes (``/v1/admin/…``, jobs) need the admin key when one is configured.
"""

from __future__ import annotations

import hmac

from fastapi import Request

from qlp_ray.core.errors import AuthenticationError, PermissionDenied

KEY_MESSAGE = "missing or invalid API key: send 'Authorization: Bearer <key>'"
ADMIN_KEY_MESSAGE = "admin routes need 'Authorization: Bearer <admin key>'"
# Routes that take the admin key (their routers also require it when one is configured).
ADMIN_PREFIXES = (
    "/v1/admin/",
    "/v1/fine-tuning/",
    "/v1/evaluations",
    "/v1/optimizations",
    "/v1/datasets/",
    "/v1/files",
)


def key_matches(request: Request, expected: str) -> bool:
    """Whether the request carries ``Authorization: Bearer <expected>``."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    # bytes: compare_digest refuses non-ASCII str (a header may carry any byte)
    return scheme.lower() == "bearer" and hmac.compare_digest(
        token.strip().encode("utf-8", "surrogateescape"), expected.encode()
    )


def check_api_key(request: Request, api_key: str | None) -> None:
    """401 unless the request carries the user key (when one is configured)."""
    if api_key and not key_matches(request, api_key):
        raise AuthenticationError(KEY_MESSAGE)


async def require_admin(request: Request) -> None:
    """401 without a key, 403 with a valid non-admin key, when ``serve.admin_key`` is set."""
    serve_cfg = request.app.state.gateway.cfg.serve
    if not serve_cfg.admin_key or key_matches(request, serve_cfg.admin_key):
        return
    if serve_cfg.api_key and key_matches(request, serve_cfg.api_key):
        raise PermissionDenied("this API key may not use admin routes; send the admin key")
    raise AuthenticationError(ADMIN_KEY_MESSAGE)


__all__ = ["ADMIN_PREFIXES", "check_api_key", "key_matches", "require_admin"]
