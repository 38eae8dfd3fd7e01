"""Training and held-out examples mined from production feedback, per domain.

A served response becomes an SFT example when its feedback says it was good
(normalised score above the quality threshold: thumbs up = 1, rating (v-1)/4,
accuracy as is); a correction becomes an example with the corrected text. The
split into train / held-out is by content hash, so it is stable across cycles.

The same feedback also yields DPO preference pairs
(:func:`qlp_ray.train.dpo.pairs_from_feedback`): a correction is preferred over the
response it corrected, and of two responses to the same prompt the one with the better
feedback (thumbs, rating) is preferred. Pair prompts are in the model's prompt format,
as the served request was.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from qlp_ray.data.builder import is_heldout
from qlp_ray.models.prompt import format_prompt, parse_prompt
from qlp_ray.train.dpo import PreferencePair, pairs_from_feedback
from qlp_ray.train.rewards import FeedbackEvent

if TYPE_CHECKING:
    from qlp_ray.store.database import FeedbackStore

_NORMALISE = {"thumbs": lambda v: (v + 1) / 2, "rating": lambda v: (v - 1) / 4, "accuracy": float}


@dataclass
class DomainExamples:
    domain: str
    train: list[dict]
    heldout: list[dict]
    pairs_train: list[PreferencePair] = field(default_factory=list)
    pairs_heldout: list[PreferencePair] = field(default_factory=list)

    @property
    def data_hash(self) -> str:
        """SHA-256 over the (sorted) training examples and pairs: what a training run saw."""
        rows = [json.dumps(r, sort_keys=True) for r in self.train]
        rows += [json.dumps(asdict(p), sort_keys=True) for p in self.pairs_train]
        return hashlib.sha256("\n".join(sorted(rows)).encode()).hexdigest()

    @property
    def size(self) -> int:
        """Training examples plus training pairs (what "new samples" counts)."""
        return len(self.train) + len(self.pairs_train)

    def write(self, out_dir: Path) -> tuple[Path, Path]:
        """``<d>.train.jsonl`` and ``<d>.heldout.jsonl`` in capsule shape."""
        out_dir.mkdir(parents=True, exist_ok=True)
        paths = []
        for split, rows in (("train", self.train), ("heldout", self.heldout)):
            path = out_dir / f"{self.domain}.{split}.jsonl"
            path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
            paths.append(path)
        return paths[0], paths[1]


def collect_examples(
    store: FeedbackStore, domain: str, *, min_score: float, heldout_fraction: float
) -> DomainExamples:
    """High-quality examples of ``domain`` from the store, split train / held-out."""
    scores: dict[str, list[float]] = defaultdict(list)
    requests = {}
    rows: dict[str, dict] = {}
    events: list[FeedbackEvent] = []
    for req, fb in store.feedback_with_requests(domain=domain):
        requests[req.id] = req
        event = _event(req.prompt, req.response, fb.kind, fb.value, fb.payload)
        if event is not None:
            events.append(event)
        if fb.kind == "correction":
            text = (fb.payload or {})["text"]
            row = _row(req.prompt, text, domain, 1.0, f"correction:{fb.id}")
            rows[_key(row)] = row
        elif fb.kind in _NORMALISE and fb.value is not None:
            scores[req.id].append(_NORMALISE[fb.kind](fb.value))
    for rid, vals in scores.items():
        score = sum(vals) / len(vals)
        if score > min_score:
            req = requests[rid]
            row = _row(req.prompt, req.response, domain, round(score, 4), f"request:{rid}")
            rows.setdefault(_key(row), row)
    ordered = [rows[k] for k in sorted(rows)]
    train = [r for r in ordered if not is_heldout(_key(r), heldout_fraction)]
    held = [r for r in ordered if is_heldout(_key(r), heldout_fraction)]
    pairs = sorted(pairs_from_feedback(events), key=_pair_key)
    p_train = [p for p in pairs if not is_heldout(_pair_key(p), heldout_fraction)]
    p_held = [p for p in pairs if is_heldout(_pair_key(p), heldout_fraction)]
    return DomainExamples(domain, train, held, p_train, p_held)


def _event(prompt: str, response: str, kind: str, value, payload) -> FeedbackEvent | None:
    """A stored feedback row as a :class:`FeedbackEvent` (None: no preference signal)."""
    prompt = prompt if parse_prompt(prompt) else format_prompt(prompt)
    if kind == "correction":
        return FeedbackEvent("correction", prompt, response, correction=(payload or {})["text"])
    if kind == "thumbs" and value is not None:
        return FeedbackEvent("thumbs_up" if value > 0 else "thumbs_down", prompt, response)
    if kind == "rating" and value is not None:
        return FeedbackEvent("rating", prompt, response, rating=int(value))
    return None


def _row(prompt: str, output: str, domain: str, score: float, source: str) -> dict:
    parsed = parse_prompt(prompt)  # a chat request is stored in the model's prompt format
    instruction, extra = parsed if parsed else (prompt, "")
    return {"instruction": instruction, "input": extra, "output": output, "domain": domain,
            "validation_score": score, "source": source}  # fmt: skip


def _pair_key(pair: PreferencePair) -> str:
    return hashlib.sha256(f"{pair.prompt}\x1f{pair.chosen}\x1f{pair.rejected}".encode()).hexdigest()


def _key(row: dict) -> str:
    text = f"{row['instruction']}\x1f{row['output']}".lower()
    return hashlib.sha256(" ".join(text.split()).encode()).hexdigest()
