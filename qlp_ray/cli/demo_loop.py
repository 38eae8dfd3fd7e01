"""``qlp demo``: the whole loop on the built-in model, end to end, on local Ray.

build (or reuse) the tiny base model → train one adapter per bundled domain on Ray
Train → sign and register → deploy the Serve app → send every domain's held-out
prompts through ``model=auto`` over HTTP → report → shut down (or keep serving).

The pure parts (``RequestResult``, ``summarize``) are unit-tested without Ray.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from qlp_ray.client import Client
from qlp_ray.core.config import QLPConfig
from qlp_ray.core.errors import QLPError
from qlp_ray.data.capsules import load_capsules, sample_path
from qlp_ray.models.prompt import format_prompt
from qlp_ray.train.pipeline import train_and_register

logger = logging.getLogger(__name__)


@dataclass
class RequestResult:
    """One held-out prompt sent through ``model=auto``."""

    prompt: str
    expected_domain: str
    routed_domain: str | None
    adapter: str | None
    confidence: float | None
    latency_ms: float
    ok: bool
    error: str | None = None
    completion: str = ""


@dataclass
class AdapterSummary:
    id: str
    domain: str
    version: int
    signed: bool
    eval_loss_before: float | None
    eval_loss_after: float | None


def summarize(adapters: list[AdapterSummary], results: list[RequestResult]) -> dict:
    """The ``--summary-json`` document: adapters, request counts, routing accuracy, latency."""
    ok = [r for r in results if r.ok]
    latencies = np.array([r.latency_ms for r in ok], dtype=float)
    correct = sum(1 for r in ok if r.routed_domain == r.expected_domain)
    per_domain: dict[str, dict[str, int]] = {}
    for r in results:
        d = per_domain.setdefault(r.expected_domain, {"sent": 0, "ok": 0, "correct": 0})
        d["sent"] += 1
        d["ok"] += int(r.ok)
        d["correct"] += int(r.ok and r.routed_domain == r.expected_domain)
    return {
        "adapters": [asdict(a) for a in adapters],
        "requests": {"sent": len(results), "ok": len(ok)},
        "routing_accuracy": round(correct / len(results), 4) if results else 0.0,
        "fallbacks": sum(1 for r in ok if r.adapter is None),
        "per_domain": per_domain,
        "latency_ms": {
            "p50": round(float(np.percentile(latencies, 50)), 2) if len(latencies) else None,
            "p95": round(float(np.percentile(latencies, 95)), 2) if len(latencies) else None,
        },
    }


def check_summary(summary: dict) -> list[str]:
    """What the demo promises; an empty list means every promise held."""
    problems = []
    for a in summary["adapters"]:
        if not a["signed"]:
            problems.append(f"adapter {a['id']} is not signed")
        before, after = a["eval_loss_before"], a["eval_loss_after"]
        if before is None or after is None or not after < before:
            problems.append(f"adapter {a['id']}: eval loss did not drop ({before} -> {after})")
    if summary["requests"]["ok"] != summary["requests"]["sent"]:
        failed = summary["requests"]["sent"] - summary["requests"]["ok"]
        problems.append(f"{failed} requests failed")
    if summary["routing_accuracy"] < 0.9:
        problems.append(f"routing accuracy {summary['routing_accuracy']:.3f} < 0.9")
    return problems


def train_domain_adapters(
    cfg: QLPConfig, on_done: Callable[[str, object], None] | None = None
) -> list[AdapterSummary]:
    """Train, sign and register one adapter per configured demo domain on Ray Train."""

    out = []
    for domain in cfg.demo.domains:
        record = train_and_register(
            cfg,
            domain=domain,
            data_path=sample_path(domain, "train"),
            heldout_path=sample_path(domain, "heldout"),
            method=cfg.demo.method,
            steps=cfg.demo.steps,
        )
        metrics = record.metadata.get("metrics", {})
        summary = AdapterSummary(
            id=record.adapter_id,
            domain=record.domain,
            version=record.version,
            signed=record.signed,
            eval_loss_before=metrics.get("eval_loss_before"),
            eval_loss_after=metrics.get("eval_loss_after"),
        )
        out.append(summary)
        if on_done is not None:
            on_done(domain, summary)
    return out


def send_heldout_prompts(
    cfg: QLPConfig,
    base_url: str,
    on_result: Callable[[RequestResult], None] | None = None,
) -> list[RequestResult]:
    """Send every demo domain's held-out prompts through ``model=auto`` over HTTP."""

    client = Client(base_url, api_key=cfg.serve.api_key)
    results = []
    for domain in cfg.demo.domains:
        for capsule in load_capsules(sample_path(domain, "heldout")):
            t0 = time.perf_counter()
            try:
                resp = client.complete(
                    format_prompt(capsule.instruction, capsule.input),
                    model="auto",
                    max_tokens=cfg.demo.max_tokens,
                )
                info = resp.qlp
                result = RequestResult(
                    prompt=capsule.instruction,
                    expected_domain=domain,
                    routed_domain=info.domain,
                    adapter=info.adapter,
                    confidence=info.confidence,
                    latency_ms=(time.perf_counter() - t0) * 1000,
                    ok=True,
                    completion=resp.choices[0].text,
                )
            except QLPError as exc:
                result = RequestResult(
                    prompt=capsule.instruction,
                    expected_domain=domain,
                    routed_domain=None,
                    adapter=None,
                    confidence=None,
                    latency_ms=(time.perf_counter() - t0) * 1000,
                    ok=False,
                    error=str(exc),
                )
            results.append(result)
            if on_result is not None:
                on_result(result)
    return results
