"""The synthetic sample generator: deterministic, disjoint splits, bundled files up to date."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qlp_ray.core.config import DOMAINS
from qlp_ray.data.capsules import SAMPLES_DIR, load_capsules, sample_path
from qlp_ray.data.synth import generate_all, generate_domain

# The answer shape each domain's adapter should learn (see templates.py).
ANSWER_PREFIX = {
    "dataeng": "Plan: ",
    "devops": "Steps: 1) ",
    "api": "Contract: ",
    "frontend": "Fix: ",
    "ml": "Diagnosis: ",
}


def test_bundled_files_are_exactly_what_the_generator_writes(tmp_path: Path) -> None:
    generate_all(tmp_path)
    for path in sorted(SAMPLES_DIR.glob("*.jsonl")):
        assert (tmp_path / path.name).read_bytes() == path.read_bytes(), path.name
    assert {p.name for p in tmp_path.glob("*.jsonl")} == {
        p.name for p in SAMPLES_DIR.glob("*.jsonl")
    }


def test_generator_is_seeded() -> None:
    assert generate_domain("api", 20, 5, seed=1) == generate_domain("api", 20, 5, seed=1)
    assert generate_domain("api", 20, 5, seed=1) != generate_domain("api", 20, 5, seed=2)


@pytest.mark.parametrize("domain", DOMAINS)
def test_heldout_never_duplicates_train(domain: str) -> None:
    train = load_capsules(sample_path(domain, "train"))
    heldout = load_capsules(sample_path(domain, "heldout"))
    train_keys = {c.instruction.strip().lower() for c in train}
    heldout_keys = [c.instruction.strip().lower() for c in heldout]
    assert len(train_keys) == len(train), "duplicate instructions inside train"
    assert len(set(heldout_keys)) == len(heldout), "duplicate instructions inside held-out"
    assert not train_keys & set(heldout_keys)


@pytest.mark.parametrize("domain", DOMAINS)
def test_answers_follow_the_domain_style_and_vary(domain: str) -> None:
    caps = load_capsules(sample_path(domain))
    assert all(c.output.startswith(ANSWER_PREFIX[domain]) for c in caps)
    assert all("\n" not in c.output for c in caps)
    assert len({c.output for c in caps}) >= 100  # slot-filled, not a handful of canned answers
    with_input = sum(bool(c.input) for c in caps) / len(caps)
    assert 0.15 <= with_input <= 0.45


def test_records_have_capsule_keys_in_order() -> None:
    line = sample_path("devops").read_text(encoding="utf-8").splitlines()[0]
    assert list(json.loads(line)) == [
        "instruction",
        "input",
        "output",
        "domain",
        "validation_score",
    ]
