"""OpenAI-shaped error bodies for the HTTP API and the FastAPI handlers that produce them.

``{"error": {"message", "type", "param", "code"}}`` with the status from the error
class. Validation problems become 400s naming the field; anything unexpected becomes a
500 with a generic message (the traceback is logged server-side, never sent).
"""

from __future__ import annotations

import logging
import math
import uuid
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from ray.serve.exceptions import BackPressureError
from starlette.exceptions import HTTPException as StarletteHTTPException

from qlp_ray.core.errors import Overloaded, QLPError, RateLimited
from qlp_ray.serve.telemetry import metrics

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"
QLP_REQUEST_ID_HEADER = "x-qlp-request-id"  # the server-chosen id of the request
DEFAULT_RETRY_AFTER_S = 1.0  # when a back-pressure rejection carries no Retry-After
_STATUS_TYPES = {
    400: ("invalid_request_error", "invalid_request"),
    401: ("authentication_error", "invalid_api_key"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    415: ("invalid_request_error", "unsupported_media_type"),
}


def error_body(
    message: str, type_: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def unwrap(exc: BaseException) -> BaseException:
    """The original error behind a Ray task/actor error (Serve handles wrap them).

    Serve's back-pressure rejection (a deployment's ``max_queued_requests`` reached) becomes
    :class:`Overloaded` here, where the handle call is awaited: Serve registers its own
    plain-text handler for ``BackPressureError`` on ingress apps, overriding ours.
    """
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BaseException):
        return unwrap(cause)
    if isinstance(exc, BackPressureError):
        return overload_error(exc)
    return exc


def overload_error(exc: BackPressureError) -> QLPError:
    """The OpenAI-shaped error for a Serve back-pressure rejection (503, or 429 if so set)."""
    retry = exc.retry_after_s if exc.retry_after_s is not None else DEFAULT_RETRY_AFTER_S
    cls = RateLimited if exc.status_code == 429 else Overloaded
    return cls(f"server overloaded, retry after {retry:g} s: {exc.message}", retry_after_s=retry)


def retry_after_header(seconds: float) -> dict[str, str]:
    """``Retry-After`` in whole seconds, rounded up (RFC 9110 delay-seconds)."""
    return {"retry-after": str(max(0, math.ceil(seconds)))}


def qlp_error_response(exc: QLPError) -> JSONResponse:
    body = error_body(exc.message, exc.error_type, exc.param, exc.code)
    headers = retry_after_header(exc.retry_after_s) if exc.retry_after_s is not None else None
    return JSONResponse(body, status_code=exc.http_status, headers=headers)


def internal_error_response(request_id: str) -> JSONResponse:
    body = error_body(
        f"internal server error (request {request_id}); see the server log",
        "server_error",
        None,
        "internal_error",
    )
    return JSONResponse(body, status_code=500)


def describe_validation_error(exc: RequestValidationError) -> tuple[str, str | None]:
    """A one-line message and the offending parameter of a request validation error."""
    errors = exc.errors()
    if not errors:
        return "invalid request", None
    first = errors[0]
    if first.get("type") == "json_invalid":
        return "request body is not valid JSON: " + str(first.get("ctx", {}).get("error", "")), None
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    param = ".".join(loc) or None
    if first.get("type") == "missing":
        return f"missing required field `{param}`", param
    if first.get("type") == "extra_forbidden":
        return (
            f"unknown field `{param}`: this server refuses fields it does not implement "
            "(see GET /openapi.json)",
            param,
        )
    msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
    bad = first.get("input")
    shown = repr(bad) if not isinstance(bad, dict | list) else type(bad).__name__
    if len(shown) > 80:
        shown = shown[:77] + "..."
    where = f"`{param}`: " if param else ""
    more = f" (+{len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{where}{msg} (got {shown}){more}", param


def install_error_handlers(app: FastAPI) -> None:
    """Render every error of ``app`` in the OpenAI error shape."""

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, param = describe_validation_error(exc)
        body = error_body(message, "invalid_request_error", param, "invalid_request")
        return JSONResponse(body, status_code=400)

    @app.exception_handler(QLPError)
    async def _qlp(request: Request, exc: QLPError) -> JSONResponse:
        original = unwrap(exc)  # a Ray-wrapped QLPError is also an instance of QLPError
        err = original if isinstance(original, QLPError) else exc
        if err.http_status in (429, 503):
            metrics.record_rejection(err.code or err.error_type)
        return qlp_error_response(err)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_, code = _STATUS_TYPES.get(exc.status_code, ("server_error", None))
        message = exc.detail if isinstance(exc.detail, str) else "request failed"
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route {request.method} {request.url.path}"
        return JSONResponse(error_body(message, type_, None, code), status_code=exc.status_code)

    @app.middleware("http")
    async def _request_id_and_crash_guard(request: Request, call_next: Any) -> Any:
        # The request's id (the key of its stored row and of the feedback on it) is always
        # the server's: a client's x-request-id (Serve's proxy passes it on, or sets its
        # own) is kept for log correlation only, so two clients sending the same value
        # never share a row. The proxy echoes x-request-id on the response itself; only a
        # request without one gets that header from here. x-qlp-request-id is ours.
        incoming = request.headers.get(REQUEST_ID_HEADER)
        request.state.request_id = f"req-{uuid.uuid4().hex}"
        request.state.client_request_id = incoming[:128] if incoming else None
        try:
            response = await call_next(request)
        except Exception as exc:  # the last line of defence: log it, send no details
            original = unwrap(exc)
            if isinstance(original, QLPError):
                response = qlp_error_response(original)
            else:
                logger.exception("unhandled error in %s %s", request.method, request.url.path)
                response = internal_error_response(request.state.request_id)
        if incoming is None:
            response.headers[REQUEST_ID_HEADER] = request.state.request_id
        response.headers[QLP_REQUEST_ID_HEADER] = request.state.request_id
        return response


async def await_remote(ref: Any) -> Any:
    """Await a deployment-handle call, re-raising the original ``QLPError``."""
    try:
        return await ref
    except Exception as exc:
        original = unwrap(exc)
        if isinstance(original, QLPError):
            raise original from None
        raise
