"""The qlp_ray error hierarchy.

Every error also subclasses the closest built-in, so callers can catch either.
``http_status`` and ``error_type`` let the HTTP layer render an OpenAI-shaped
error body without a table of special cases.
"""

from __future__ import annotations


class QLPError(Exception):
    """Base class of every error qlp_ray raises on purpose."""

    http_status: int = 500
    error_type: str = "server_error"
    code: str | None = None
    retry_after_s: float | None = None  # sent as a Retry-After header when set

    def __init__(
        self, message: str, *, param: str | None = None, retry_after_s: float | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if retry_after_s is not None:
            self.retry_after_s = retry_after_s

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return self.message


class ConfigError(QLPError, ValueError):
    """A config file, option or environment variable has a bad value."""

    http_status = 400
    error_type = "invalid_request_error"
    code = "invalid_config"


class InvalidRequest(QLPError, ValueError):
    """A request (HTTP body, CLI argument) is malformed or out of range."""

    http_status = 400
    error_type = "invalid_request_error"
    code = "invalid_request"


class PayloadTooLarge(QLPError, ValueError):
    """The request body is larger than ``serve.max_body_bytes``."""

    http_status = 413
    error_type = "invalid_request_error"
    code = "body_too_large"


class AuthenticationError(QLPError, PermissionError):
    """Missing or wrong API key."""

    http_status = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(QLPError, PermissionError):
    """The key is valid but may not use this route (e.g. admin routes)."""

    http_status = 403
    error_type = "permission_error"
    code = "forbidden"


class AdapterNotFound(QLPError, KeyError):
    """No adapter (or model) with that id is registered."""

    http_status = 404
    error_type = "invalid_request_error"
    code = "model_not_found"


class NotFound(QLPError, KeyError):
    """Some other named resource (experiment, job, ...) does not exist."""

    http_status = 404
    error_type = "invalid_request_error"
    code = "not_found"


class VersionRolledBack(QLPError, KeyError):
    """A pinned ``adapter@N`` names a version an audited rollback took out of service."""

    http_status = 410
    error_type = "invalid_request_error"
    code = "adapter_version_rolled_back"


class Conflict(QLPError, ValueError):
    """The resource already exists (e.g. an experiment id that is taken)."""

    http_status = 409
    error_type = "invalid_request_error"
    code = "conflict"


class SignatureError(QLPError, PermissionError):
    """An adapter is unsigned, tampered with, mis-labelled or signed by an untrusted key."""

    http_status = 424
    error_type = "adapter_error"
    code = "adapter_verification_failed"


class AdapterRevoked(SignatureError):
    """An adapter version signed by a key that was revoked (``qlp keys revoke``): refused at
    every request, and evicted from the replicas that had loaded it."""

    http_status = 403
    code = "adapter_revoked"


class AdapterLoadError(QLPError, RuntimeError):
    """A verified adapter could not be loaded (corrupt weights, wrong base model)."""

    http_status = 424
    error_type = "adapter_error"
    code = "adapter_load_failed"


class KeyMissing(QLPError, FileNotFoundError):
    """No signing key exists yet (run ``qlp keys init``)."""

    http_status = 500
    error_type = "server_error"
    code = "signing_key_missing"


class Overloaded(QLPError, RuntimeError):
    """The server is at capacity; the client should retry later."""

    http_status = 503
    error_type = "server_error"
    code = "overloaded"


class RateLimited(QLPError, RuntimeError):
    """Too many requests in flight on this replica; the client should retry later."""

    http_status = 429
    error_type = "rate_limit_error"
    code = "rate_limit_exceeded"


class TrainingError(QLPError, RuntimeError):
    """A training run failed or produced no usable adapter."""

    code = "training_failed"


class NoCapableDevice(QLPError, RuntimeError):
    """No present device can run a workload (absent device class, or too little memory)."""

    http_status = 503
    error_type = "server_error"
    code = "no_capable_device"


class Unplaceable(QLPError, RuntimeError):
    """A workload waited its placement timeout and the cluster still has no room for it;
    the message says what it needs, what is free and who holds the rest."""

    http_status = 503
    error_type = "server_error"
    code = "unplaceable"


class WorkloadFailed(QLPError, RuntimeError):
    """A workload could not be completed: every device it was placed on died."""

    http_status = 503
    error_type = "server_error"
    code = "workload_failed"


class ExternalEndpointError(QLPError, ConnectionError):
    """The external fallback endpoint failed or answered something unusable."""

    http_status = 502
    error_type = "upstream_error"
    code = "external_endpoint_error"


class ExternalEndpointTimeout(QLPError, TimeoutError):
    """The external fallback endpoint did not answer within its timeout."""

    http_status = 504
    error_type = "upstream_error"
    code = "external_endpoint_timeout"


__all__ = [
    "QLPError",
    "ConfigError",
    "InvalidRequest",
    "AuthenticationError",
    "PermissionDenied",
    "AdapterNotFound",
    "NotFound",
    "Conflict",
    "VersionRolledBack",
    "ExternalEndpointError",
    "ExternalEndpointTimeout",
    "SignatureError",
    "AdapterRevoked",
    "AdapterLoadError",
    "KeyMissing",
    "Overloaded",
    "RateLimited",
    "TrainingError",
    "NoCapableDevice",
    "WorkloadFailed",
]
