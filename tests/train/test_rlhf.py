"""DPO, GRPO/RLOO, reward model and distillation on a tiny Llama (plain TRL, no Ray)."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from qlp_ray.core.errors import InvalidRequest
from qlp_ray.train.dpo import (
    PreferencePair,
    load_pairs_jsonl,
    pairs_from_feedback,
    preference_margin,
    train_dpo,
)
from qlp_ray.train.rewards import (
    FeedbackEvent,
    domain_reward,
    feedback_lookup_reward,
    feedback_reward,
    json_object_reward,
    keyword_reward,
    reward_model_func,
    score_with_reward_model,
    token_share_reward,
    train_reward_model,
)
from qlp_ray.train.rl import mean_reward, train_rl
from tests.helpers.tiny_lm import grammar_texts, make_model, make_tokenizer, pretrain

GOOD = [
    "deploy the service with docker",
    "check the health endpoint",
    "the api returns json",
    "write parquet files",
    "train the model and evaluate the loss",
]
BAD = [
    "the cat sat on the mat",
    "the dog sat on the rug",
    "the cat and the dog",
    "sat on the mat",
    "the rug and the mat",
]
PROMPTS = ["question one:", "tell me:", "what now?", "answer:", "next step:", "help:", "task:"]
HELD_OUT_PROMPTS = ["new prompt:", "another one?", "explain:", "go on:"]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # the test machine is shared; one thread is faster under load
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


@pytest.fixture(scope="module")
def base(tok):
    return pretrain(make_model(tok), tok, steps=60)


# --- feedback -> reward / pairs (pure) ----------------------------------------------------


def _ev(kind, prompt="p", response="r", **kw):
    return FeedbackEvent.from_dict({"kind": kind, "prompt": prompt, "response": response, **kw})


@pytest.mark.parametrize(
    "event, reward",
    [
        (dict(kind="thumbs_up"), 1.0),
        (dict(kind="thumbs_down"), -0.5),
        (dict(kind="rating", rating=5), 0.8),
        (dict(kind="rating", rating=4), 0.8),
        (dict(kind="rating", rating=3), 0.3),
        (dict(kind="rating", rating=2), -0.3),
        (dict(kind="rating", rating=1), -0.3),
        (dict(kind="comparison", other="x"), 0.5),
        (dict(kind="correction", correction="fixed"), -0.2),
    ],
)
def test_feedback_reward_mapping(event, reward):
    assert feedback_reward(_ev(**event)) == reward


def test_feedback_validation_names_the_problem():
    with pytest.raises(InvalidRequest, match="unknown feedback kind 'smile'"):
        _ev("smile")
    with pytest.raises(InvalidRequest, match="integer 'rating'"):
        _ev("rating")
    with pytest.raises(InvalidRequest, match="'other'"):
        _ev("comparison")


def test_pairs_from_feedback():
    events = [
        _ev("comparison", "p1", "good", other="worse"),
        _ev("correction", "p2", "wrong", correction="right"),
        _ev("thumbs_up", "p3", "a"),  # +1.0
        _ev("rating", "p3", "b", rating=3),  # +0.3
        _ev("thumbs_down", "p3", "c"),  # -0.5
        _ev("comparison", "p1", "good", other="worse"),  # duplicate
    ]
    pairs = pairs_from_feedback(events)
    assert pairs == [
        PreferencePair("p1", "good", "worse"),
        PreferencePair("p2", "right", "wrong"),
        PreferencePair("p3", "a", "b"),
        PreferencePair("p3", "a", "c"),
        PreferencePair("p3", "b", "c"),
    ]
    lookup = feedback_lookup_reward(events)
    # mean of the two comparisons for ("p1", "good") is 0.5; unknown completions get None
    assert lookup(prompts=["p1", "p3", "p3"], completions=[" good", "c", "zzz"]) == [
        0.5,
        -0.5,
        None,
    ]


def test_programmatic_validators():
    # 2 of 3 keywords present -> 2/3; whole words only ("deployment" is not "deploy")
    kw = keyword_reward(["docker", "deploy", "helm"])
    assert kw(completions=["Deploy it with docker", "deployment"]) == pytest.approx([2 / 3, 0.0])
    assert json_object_reward(completions=['ok {"a": 1}', "{broken"]) == [1.0, 0.0]
    # api: (json object, status code) -> ('{"status": 200}': 1, 1) -> 1.0; ('nothing': 0, 0) -> 0
    api = domain_reward("api")
    assert api(prompts=["p", "p"], completions=['{"status": 200}', "nothing"]) == [1.0, 0.0]
    # share of allowed words: "the cat the" -> 2 of 3
    assert token_share_reward({"the"})(completions=["the cat the"]) == [pytest.approx(2 / 3)]
    with pytest.raises(InvalidRequest, match="no validators for domain 'law'"):
        domain_reward("law")


def test_load_pairs_jsonl(tmp_path):
    f = tmp_path / "pairs.jsonl"
    f.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"}) + "\n\n")
    assert load_pairs_jsonl(f) == [PreferencePair("p", "a", "b")]
    f.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "a"}) + "\n")
    with pytest.raises(InvalidRequest, match="pairs.jsonl:1: chosen and rejected are identical"):
        load_pairs_jsonl(f)


# --- training (real TRL on the tiny model) -------------------------------------------------


def _pairs(prompts, shift=0):
    return [
        PreferencePair(p, " " + GOOD[(i + shift) % 5], " " + BAD[(i + j + shift) % 5])
        for i, p in enumerate(prompts)
        for j in range(2)
    ]


def test_dpo_raises_held_out_margin(tok, base, tmp_path):
    held = _pairs(HELD_OUT_PROMPTS, shift=2)
    model = copy.deepcopy(base)
    before = preference_margin(model, tok, held)
    res = train_dpo(
        model, tok, _pairs(PROMPTS), output_dir=str(tmp_path), steps=15, learning_rate=1e-2
    )
    after = preference_margin(res.model, tok, held)
    assert after > before + 1.0, (before, after)
    assert res.train_loss < 0.693  # below the DPO loss at zero margin, ln 2


@pytest.mark.parametrize("algorithm", ["grpo", "rloo"])
def test_rl_raises_held_out_reward(tok, base, tmp_path, algorithm):
    reward = token_share_reward({"the", "docker", "deploy", "service"})
    model = copy.deepcopy(base)
    before = mean_reward(model, tok, HELD_OUT_PROMPTS, reward, samples_per_prompt=16)
    res = train_rl(
        model,
        tok,
        PROMPTS,
        [reward],
        output_dir=str(tmp_path),
        algorithm=algorithm,
        steps=20,
        learning_rate=5e-3,
        batch_size=16,
        num_generations=8,
    )
    after = mean_reward(res.model, tok, HELD_OUT_PROMPTS, reward, samples_per_prompt=16)
    # seen: 0.17 -> 0.41 (GRPO), 0.17 -> 0.28 (RLOO) on 64 held-out samples
    assert after > before + 0.05, (before, after)
    assert len(res.reward_history) >= 2


def test_reward_model_ranks_held_out_pairs(tok, base, tmp_path):
    rm = train_reward_model(
        base, tok, _pairs(PROMPTS), output_dir=str(tmp_path), steps=30, learning_rate=1e-3
    )
    held = _pairs(HELD_OUT_PROMPTS, shift=2)
    chosen = score_with_reward_model(rm, tok, [p.prompt + p.chosen for p in held])
    rejected = score_with_reward_model(rm, tok, [p.prompt + p.rejected for p in held])
    wins = sum(c > r for c, r in zip(chosen, rejected, strict=True))
    assert wins >= 0.75 * len(held), (chosen, rejected)
    # the trained reward model plugs into GRPO next to a programmatic validator
    res = train_rl(
        copy.deepcopy(base),
        tok,
        PROMPTS[:2],
        [reward_model_func(rm, tok), domain_reward("devops")],
        output_dir=str(tmp_path / "rl"),
        steps=2,
        batch_size=4,
        num_generations=2,
    )
    assert len(res.reward_history) == 2 and all(r == r for r in res.reward_history)  # not NaN


@pytest.fixture(scope="module")
def grammar_pair(tok):
    texts = grammar_texts(120)
    train, held = texts[:100], texts[100:]
    teacher = pretrain(make_model(tok, hidden=48, seed=1), tok, steps=40, texts=train)
    student = pretrain(make_model(tok, seed=2), tok, steps=10, texts=train)
    return teacher, student, train, held


def test_distillation_lowers_held_out_kl(tok, grammar_pair, tmp_path):
    from qlp_ray.train.distill import student_teacher_kl, train_distill

    teacher, student, train, held = grammar_pair
    student = copy.deepcopy(student)
    before = student_teacher_kl(student, teacher, tok, held)
    res = train_distill(
        student,
        teacher,
        tok,
        train,
        output_dir=str(tmp_path),
        steps=20,
        learning_rate=1e-2,
        use_lora=False,
    )
    after = student_teacher_kl(res.model, teacher, tok, held)
    assert after < 0.6 * before, (before, after)


def test_on_policy_distillation_lowers_on_policy_kl(tok, grammar_pair, tmp_path):
    from qlp_ray.train.distill import on_policy_kl, train_distill

    teacher, student, train, held = grammar_pair
    student = copy.deepcopy(student)
    prompts = [" ".join(t.split()[:3]) for t in train]
    held_prompts = [" ".join(t.split()[:3]) for t in held]
    before = on_policy_kl(student, teacher, tok, held_prompts, max_new_tokens=4)
    res = train_distill(
        student,
        teacher,
        tok,
        prompts,
        method="on_policy",
        output_dir=str(tmp_path),
        steps=20,
        learning_rate=1e-2,
        use_lora=False,
        max_completion_length=4,
    )
    after = on_policy_kl(res.model, teacher, tok, held_prompts, max_new_tokens=4)
    assert after < before, (before, after)


def test_distillation_rejects_vocab_mismatch(tok, base, tmp_path):
    from qlp_ray.train.distill import train_distill

    other = make_model(make_tokenizer(vocab_size=280))
    with pytest.raises(InvalidRequest, match="vocabulary"):
        train_distill(copy.deepcopy(base), other, tok, ["x"], output_dir=str(tmp_path))
