"""The improve loop's traffic splitter: A/B experiments on the running Serve app, over HTTP.

A candidate that passed the offline gate becomes an experiment of the serving experiments
runtime (:mod:`qlp_ray.experiments.runtime`) through the admin API
(``POST /v1/admin/experiments``, with ``improve.api_key`` or else ``serve.admin_key``: a key
with the admin role): requests naming the adapter are split between the pinned
production version (``control``) and the candidate (``treatment``) by weight, and every
gateway replica records which arm served a request. Success is the latest thumbs/rating
feedback on the answered request (errors fail). :meth:`stats` reads the arms' counts back
from the experiment's analysis (``GET /v1/admin/experiments/{id}``), :meth:`stop` ends it.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import httpx

from qlp_ray.core.api_keys import hash_key, key_file, load_keys
from qlp_ray.core.errors import ConfigError, ExternalEndpointError, InvalidRequest, PermissionDenied
from qlp_ray.improve.decisions import VariantStats

if TYPE_CHECKING:
    from qlp_ray.core.config import QLPConfig

logger = logging.getLogger(__name__)
PATH = "/v1/admin/experiments"
ROLE = "admin"  # what the Serve app's experiments routes require
_CREATE = (
    f"create one with `qlp keys api create --role {ROLE} --name improve` and set "
    "improve.api_key (QLP_IMPROVE__API_KEY)"
)


def improve_key(cfg: QLPConfig) -> tuple[str | None, str]:
    """The key the improve loop sends and where it came from: ``improve.api_key``, else
    ``serve.admin_key``. A key this host's key file knows must grant the admin role
    (``ConfigError`` naming the role otherwise); others are checked by the Serve app."""
    if cfg.improve.api_key:
        key, source = cfg.improve.api_key, "improve.api_key"
    elif cfg.serve.admin_key:
        return cfg.serve.admin_key, "serve.admin_key"  # the admin role by definition
    else:
        return None, "no key"
    digest = hash_key(key)
    for rec in load_keys(key_file(cfg.paths.keys)):
        if rec.sha256 != digest:
            continue
        if rec.revoked_at is not None:
            raise ConfigError(
                f"improve.api_key is API key {rec.key_id}, which is revoked; {_CREATE}"
            )
        if ROLE not in rec.grants:
            raise ConfigError(
                f"improve.api_key is API key {rec.key_id} with role {rec.role!r}, but the "
                f"improve loop's A/B experiments ({PATH}) need the {ROLE!r} role; {_CREATE}"
            )
    return key, source


def experiment_spec(
    name: str, adapter_id: str, control: int, treatment: int, share: float
) -> dict[str, Any]:
    """The experiment definition of one candidate: its adapter's traffic, split by weight."""
    return {
        "id": name,
        "description": f"improve loop: {adapter_id} v{control} (production) vs v{treatment}",
        "applies_to": [adapter_id],
        "strategy": "weighted",
        "success": "feedback",
        "variants": [
            {"name": "control", "target": f"{adapter_id}@{control}", "weight": 1 - share},
            {"name": "treatment", "target": f"{adapter_id}@{treatment}", "weight": share},
        ],
    }


class ServeExperimentSplitter:
    """Starts, reads and stops improve-loop experiments on the Serve app at ``url``."""

    def __init__(self, cfg: QLPConfig, *, timeout_s: float = 30.0) -> None:
        serve = cfg.serve
        self.url = (cfg.improve.experiment_url or f"http://{serve.host}:{serve.port}").rstrip("/")
        key, self.key_source = improve_key(cfg)
        headers = {"authorization": f"Bearer {key}"} if key else {}
        self._client = httpx.Client(base_url=self.url, headers=headers, timeout=timeout_s)

    def _call(self, method: str, path: str, **kw: Any) -> httpx.Response:
        try:
            r = self._client.request(method, path, **kw)
        except httpx.HTTPError as exc:
            raise ExternalEndpointError(
                f"the improve loop's A/B runs on the Serve app at {self.url}, which did not "
                f"answer ({exc}); start it (`qlp serve`), set improve.experiment_url, or set "
                "improve.live_ab: false to promote on the offline gate alone"
            ) from exc
        if r.status_code >= 400 and r.status_code != 409:
            try:
                message = r.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = r.text[:300]
            if r.status_code in (401, 403):
                raise PermissionDenied(
                    f"the Serve app at {self.url} refused the improve loop's key "
                    f"({self.key_source}) on {method} {path}: HTTP {r.status_code}: {message}; "
                    f"the loop needs a key with the {ROLE!r} role: {_CREATE}"
                )
            raise InvalidRequest(f"{method} {self.url}{path}: HTTP {r.status_code}: {message}")
        return r

    def start(self, name: str, adapter_id: str, control: int, treatment: int, share: float):
        """Create the experiment (an existing one of that id, e.g. after a restart, stays)."""
        spec = experiment_spec(name, adapter_id, control, treatment, share)
        r = self._call("POST", PATH, json=spec)
        logger.info("experiment %s %s on %s", name,
                    "exists" if r.status_code == 409 else "started", self.url)  # fmt: skip
        return r.json()

    def stats(self, name: str) -> tuple[VariantStats, VariantStats]:
        """(control, treatment): judged outcomes (successes + failures) and successes."""
        report = self._call("GET", f"{PATH}/{name}").json()
        arms = {v["name"]: v for v in report["variants"]}
        return tuple(  # type: ignore[return-value]
            VariantStats(int(arms[a]["successes"] + arms[a]["failures"]), int(arms[a]["successes"]))
            for a in ("control", "treatment")
        )

    def stop(self, name: str) -> None:
        self._call("POST", f"{PATH}/{name}/stop")
        logger.info("experiment %s stopped on %s", name, self.url)

    def close(self) -> None:
        self._client.close()
