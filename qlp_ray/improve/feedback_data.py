"""Training and held-out examples mined from production feedback, per domain.

A served response becomes an SFT example when its feedback says it was good
(normalised score above the quality threshold: thumbs up = 1, rating (v-1)/4,
accuracy as is); a correction becomes an example with the corrected text. The
split into train / held-out is by content hash, so it is stable across cycles.
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from qlp_ray.data.builder import is_heldout

if TYPE_CHECKING:
    from qlp_ray.store.database import FeedbackStore

_NORMALISE = {"thumbs": lambda v: (v + 1) / 2, "rating": lambda v: (v - 1) / 4, "accuracy": float}


@dataclass
class DomainExamples:
    domain: str
    train: list[dict]
    heldout: list[dict]

    @property
    def data_hash(self) -> str:
        """SHA-256 over the (sorted) training examples: what a training run saw."""
        blob = "\n".join(sorted(json.dumps(r, sort_keys=True) for r in self.train))
        return hashlib.sha256(blob.encode()).hexdigest()

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
    for req, fb in store.feedback_with_requests(domain=domain):
        requests[req.id] = req
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
    return DomainExamples(domain, train, held)


def _row(prompt: str, output: str, domain: str, score: float, source: str) -> dict:
    return {"instruction": prompt, "input": "", "output": output, "domain": domain,
            "validation_score": score, "source": source}  # fmt: skip


def _key(row: dict) -> str:
    text = f"{row['instruction']}\x1f{row['output']}".lower()
    return hashlib.sha256(" ".join(text.split()).encode()).hexdigest()
