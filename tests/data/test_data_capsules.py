"""Capsule loading: bundled files, line-numbered errors, helpers."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from qlp_ray.core.config import DOMAINS
from qlp_ray.core.errors import InvalidRequest
from qlp_ray.data.capsules import (
    Capsule,
    bundled_domains,
    file_sha256,
    load_capsules,
    sample_path,
)

GOOD = {"instruction": "Do X", "input": "", "output": "Done.", "domain": "api"}


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_bundled_domains_cover_the_configured_domains() -> None:
    assert bundled_domains() == sorted(DOMAINS)


@pytest.mark.parametrize("domain", DOMAINS)
def test_every_bundled_file_loads_with_enough_records(domain: str) -> None:
    train = load_capsules(sample_path(domain, "train"))
    heldout = load_capsules(sample_path(domain, "heldout"))
    assert len(train) >= 220
    assert len(heldout) >= 40
    for cap in train + heldout:
        assert cap.domain == domain
        assert 0.0 <= cap.validation_score <= 1.0
        assert len(cap.output) <= 400


def test_validation_scores_mostly_high_with_a_few_lower() -> None:
    scores = [c.validation_score for d in DOMAINS for c in load_capsules(sample_path(d))]
    high = sum(0.85 <= s <= 1.0 for s in scores) / len(scores)
    assert 0.9 <= high < 1.0


def test_bundled_train_text_size_fits_tiny_model_pretraining() -> None:
    total = sum(sample_path(d).stat().st_size for d in DOMAINS)
    assert 300_000 <= total <= 1_000_000


def test_load_keeps_extra_fields_and_defaults(tmp_path: Path) -> None:
    rec = {"instruction": "Q", "output": "A", "domain": "ml", "source": "unit"}
    path = _write(tmp_path / "x.jsonl", [json.dumps(rec), ""])
    [cap] = load_capsules(path)
    assert cap.input == ""
    assert cap.validation_score == 1.0
    assert cap.model_extra == {"source": "unit"}
    assert cap.model_dump()["source"] == "unit"


@pytest.mark.parametrize(
    ("bad_line", "needle"),
    [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "expected a JSON object"),
        (json.dumps({k: v for k, v in GOOD.items() if k != "output"}), "output"),
        (json.dumps({**GOOD, "instruction": "   "}), "instruction"),
        (json.dumps({**GOOD, "validation_score": 1.5}), "validation_score"),
    ],
)
def test_bad_line_error_names_file_and_line(tmp_path: Path, bad_line: str, needle: str) -> None:
    path = _write(tmp_path / "bad.jsonl", [json.dumps(GOOD), "", json.dumps(GOOD), bad_line])
    with pytest.raises(InvalidRequest) as info:
        load_capsules(path)
    msg = str(info.value)
    assert f"{path}:4:" in msg
    assert needle in msg


def test_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(InvalidRequest, match="not found"):
        load_capsules(tmp_path / "nope.jsonl")


def test_sample_path_rejects_unknown_domain_and_split() -> None:
    with pytest.raises(InvalidRequest, match="'cooking'.*available: api, dataeng"):
        sample_path("cooking")
    with pytest.raises(InvalidRequest, match="unknown split 'test'"):
        sample_path("api", "test")  # type: ignore[arg-type]


def test_file_sha256_matches_hashlib(tmp_path: Path) -> None:
    path = tmp_path / "blob"
    path.write_bytes(b"q" * 200_000)
    assert file_sha256(path) == hashlib.sha256(b"q" * 200_000).hexdigest()
    assert file_sha256(sample_path("ml")) != file_sha256(sample_path("api"))


def test_capsule_model_rejects_empty_output() -> None:
    with pytest.raises(ValueError, match="non-empty"):
        Capsule(instruction="Q", output="", domain="api")
