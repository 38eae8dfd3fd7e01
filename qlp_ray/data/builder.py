"""Capsule dataset builder: finished agent tasks and feedback -> per-domain training sets.

Pipeline: raw capsules (prompt, context, output, validation score, tech stack,
complexity) -> domain by the router's centroid classifier with keyword hints as a
prior -> exact-duplicate removal -> quality filter (score > threshold) -> per-domain
SFT sets in capsule shape (``instruction, input, output, domain, validation_score``)
with a deterministic held-out split. From the feedback store: DPO preference pairs
(comparisons, corrections) and reward-labelled prompts. A domain is *ready* for an
adapter only past ``min_examples`` training examples; the report says which.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError

from qlp_ray.core.errors import InvalidRequest
from qlp_ray.data.quality import fingerprint
from qlp_ray.route.domains import DomainClassifier

if TYPE_CHECKING:
    from qlp_ray.store.database import FeedbackStore

logger = logging.getLogger(__name__)


class RawCapsule(BaseModel):
    """A finished agent task. Accepts capsule-shape aliases (instruction/input)."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    id: str | None = None
    prompt: str = Field(min_length=1, validation_alias=AliasChoices("prompt", "instruction"))
    context: str = Field("", validation_alias=AliasChoices("context", "input"))
    output: str = Field(min_length=1)
    validation_score: float = Field(ge=0.0, le=1.0)
    tech_stack: list[str] = Field(default_factory=list)
    complexity: str | int | float | None = None
    domain: str | None = None

    def text(self) -> str:
        """What the classifier reads: the task, its context and stack."""
        return " ".join(p for p in (self.prompt, self.context, " ".join(self.tech_stack)) if p)


def load_raw_capsules(path: str | Path) -> list[RawCapsule]:
    """Read capsules from JSONL; errors name the file and 1-based line."""
    path = Path(path)
    if not path.is_file():
        raise InvalidRequest(f"capsule file not found: {path}")
    out = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if isinstance(record.get("tech_stack"), str):
                record["tech_stack"] = [s.strip() for s in record["tech_stack"].split(",")]
            out.append(RawCapsule.model_validate(record))
        except (json.JSONDecodeError, AttributeError) as exc:
            raise InvalidRequest(f"{path}:{lineno}: not a JSON object ({exc})") from exc
        except ValidationError as exc:
            bad = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'record'}: {e['msg']}" for e in exc.errors()
            )
            raise InvalidRequest(f"{path}:{lineno}: {bad}") from exc
    return out


@dataclass
class DomainReport:
    """Counts for one domain after a build."""

    domain: str
    capsules: int = 0
    kept: int = 0
    below_quality: int = 0
    duplicates: int = 0
    train: int = 0
    heldout: int = 0
    preference_pairs: int = 0
    reward_prompts: int = 0
    mean_score: float | None = None
    ready: bool = False


@dataclass
class BuildReport:
    out_dir: str
    min_score: float
    min_examples: int
    domains: dict[str, DomainReport] = field(default_factory=dict)
    label_agreement: float | None = None
    files: list[str] = field(default_factory=list)

    def ready_domains(self) -> list[str]:
        return sorted(d for d, r in self.domains.items() if r.ready)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ready_domains": self.ready_domains()}


def is_heldout(key: str, fraction: float) -> bool:
    """Deterministic split by content hash (stable across rebuilds and machines)."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF < fraction


def _write_jsonl(path: Path, rows: Iterable[dict[str, Any]]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    n = 0
    with tmp.open("w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    tmp.replace(path)
    return n


def preference_pairs(
    store: FeedbackStore, classify: Callable[[list[str]], list[str]]
) -> list[dict]:
    """DPO pairs ``{prompt, chosen, rejected, domain, source, request_id}`` from feedback.

    comparison +1: the served response beat the alternative (-1: the reverse);
    correction: the user's corrected text beats the served response.
    """
    rows = []
    for req, fb in store.feedback_with_requests(kinds=["comparison", "correction"]):
        payload = fb.payload or {}
        if fb.kind == "comparison":
            alt = payload["alternative"]
            chosen, rejected = (req.response, alt) if fb.value == 1 else (alt, req.response)
        else:
            chosen, rejected = payload["text"], req.response
        if chosen.strip() == rejected.strip():
            continue
        rows.append(dict(prompt=req.prompt, chosen=chosen, rejected=rejected, domain=req.domain,
                         source=fb.kind, request_id=req.id))  # fmt: skip
    _fill_domains(rows, classify)
    return rows


def reward_prompts(store: FeedbackStore, classify: Callable[[list[str]], list[str]]) -> list[dict]:
    """Served (prompt, completion) with a reward in [0, 1]: the mean of its normalised
    signals (thumbs up=1/down=0, rating (v-1)/4, accuracy, explicit rewards clipped)."""
    signals: dict[str, list[float]] = defaultdict(list)
    requests = {}
    for req, fb in store.feedback_with_requests(kinds=["thumbs", "rating", "accuracy"]):
        requests[req.id] = req
        v = float(fb.value or 0.0)
        signals[req.id].append(
            {"thumbs": (v + 1) / 2, "rating": (v - 1) / 4, "accuracy": v}[fb.kind]
        )
    for rw in store.query_rewards():
        if rw.request_id not in requests:
            requests[rw.request_id] = store.get_request(rw.request_id)
        signals[rw.request_id].append(min(1.0, max(0.0, rw.reward)))
    rows = [
        dict(
            prompt=requests[rid].prompt,
            completion=requests[rid].response,
            reward=round(sum(vals) / len(vals), 4),
            n_signals=len(vals),
            domain=requests[rid].domain,
            source="feedback",
            request_id=rid,
        )  # fmt: skip
        for rid, vals in signals.items()
    ]
    _fill_domains(rows, classify)
    return rows


def _fill_domains(rows: list[dict], classify: Callable[[list[str]], list[str]]) -> None:
    missing = [r for r in rows if not r.get("domain")]
    if missing:
        for row, dom in zip(missing, classify([r["prompt"] for r in missing]), strict=True):
            row["domain"] = dom


def build_datasets(
    capsules: Sequence[RawCapsule],
    classifier: DomainClassifier,
    out_dir: str | Path,
    *,
    min_score: float = 0.85,
    min_examples: int = 500,
    heldout_fraction: float = 0.15,
    store: FeedbackStore | None = None,
) -> BuildReport:
    """Write ``sft/<d>.{train,heldout}.jsonl``, ``preference/<d>.jsonl``,
    ``rewards/<d>.jsonl`` and ``report.json`` under ``out_dir``; return the report."""
    if not 0.0 <= min_score <= 1.0:
        raise InvalidRequest(f"min_score must be in [0, 1], got {min_score}")
    out = Path(out_dir)
    report = BuildReport(str(out), min_score, min_examples)
    for d in classifier.domains:
        report.domains[d] = DomainReport(d)

    predicted = classifier.classify([c.text() for c in capsules], [c.tech_stack for c in capsules])
    labelled = [(c.domain, p.domain) for c, p in zip(capsules, predicted, strict=True) if c.domain]
    if labelled:
        report.label_agreement = round(sum(a == b for a, b in labelled) / len(labelled), 4)

    seen: set[str] = set()
    sft: dict[str, list[dict]] = defaultdict(list)
    rewards: dict[str, list[dict]] = defaultdict(list)
    scores: dict[str, list[float]] = defaultdict(list)
    for cap, pred in zip(capsules, predicted, strict=True):
        domain = cap.domain or pred.domain
        rep = report.domains.setdefault(domain, DomainReport(domain))
        rep.capsules += 1
        rewards[domain].append(
            {"prompt": cap.prompt, "context": cap.context, "completion": cap.output,
             "reward": cap.validation_score, "domain": domain, "source": "capsule"}
        )  # fmt: skip
        key = fingerprint(cap.prompt, cap.context, cap.output)
        if key in seen:
            rep.duplicates += 1
            continue
        seen.add(key)
        if cap.validation_score <= min_score:
            rep.below_quality += 1
            continue
        rep.kept += 1
        scores[domain].append(cap.validation_score)
        sft[domain].append(dict(instruction=cap.prompt, input=cap.context, output=cap.output,
                                domain=domain, validation_score=cap.validation_score,
                                tech_stack=cap.tech_stack, complexity=cap.complexity,
                                capsule_id=cap.id, domain_confidence=round(pred.confidence, 4),
                                split_key=key))  # fmt: skip

    def classify_texts(texts: list[str]) -> list[str]:
        return [p.domain for p in classifier.classify(texts)]

    pairs = preference_pairs(store, classify_texts) if store is not None else []
    for row in reward_prompts(store, classify_texts) if store is not None else []:
        rewards[row["domain"]].append(row)
    by_domain_pairs: dict[str, list[dict]] = defaultdict(list)
    for row in pairs:
        by_domain_pairs[row["domain"]].append(row)

    for domain in sorted(set(sft) | set(by_domain_pairs) | set(rewards)):
        rep = report.domains.setdefault(domain, DomainReport(domain))
        rows = sft.get(domain, [])
        train = [r for r in rows if not is_heldout(r["split_key"], heldout_fraction)]
        held = [r for r in rows if is_heldout(r["split_key"], heldout_fraction)]
        for r in rows:
            del r["split_key"]
        if rows:
            rep.train = _write_jsonl(out / "sft" / f"{domain}.train.jsonl", train)
            rep.heldout = _write_jsonl(out / "sft" / f"{domain}.heldout.jsonl", held)
            rep.mean_score = round(sum(scores[domain]) / len(scores[domain]), 4)
        if by_domain_pairs.get(domain):
            rep.preference_pairs = _write_jsonl(
                out / "preference" / f"{domain}.jsonl", by_domain_pairs[domain]
            )
        if rewards.get(domain):
            rep.reward_prompts = _write_jsonl(out / "rewards" / f"{domain}.jsonl", rewards[domain])
        rep.ready = rep.train >= min_examples
    report.files = sorted(str(p.relative_to(out)) for p in out.rglob("*.jsonl"))
    (out / "report.json").write_text(json.dumps(report.to_dict(), indent=2, sort_keys=True))
    counts = Counter({d: r.train for d, r in report.domains.items()})
    logger.info("built datasets in %s: train examples %s; ready %s", out, dict(counts),
                report.ready_domains())  # fmt: skip
    return report
