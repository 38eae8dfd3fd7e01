"""Token log-probabilities of the transformers backend (generate, batched rows, the
continuous decoder) against log_softmax of a plain full forward of the same model."""

from __future__ import annotations

import pytest
import torch

from qlp_ray.models.backend import GenerationRequest
from tests.models.test_continuous_decoder import _drain
from tests.models.test_hf_backend_batch import PROMPTS, backend  # noqa: F401 - fixture
from tests.models.test_serve_backend import tokenizer  # noqa: F401 - fixture

STEPS = 6


def _plain_greedy(model, tok, prompt: str, steps: int) -> tuple[list[int], torch.Tensor]:
    """Greedy ids and each step's log-softmax by full forwards (no cache, no generate)."""
    ids = tok(prompt, add_special_tokens=True)["input_ids"]
    new, lps = [], []
    with torch.no_grad(), model.disable_adapter():  # the base model, whatever is active
        for _ in range(steps):
            logits = model(torch.tensor([ids + new])).logits[0, -1].float()
            lp = torch.log_softmax(logits, -1)
            new.append(int(lp.argmax()))
            lps.append(lp)
            if new[-1] == tok.eos_token_id:
                break
    return new, torch.stack(lps)


def _check(entries, tok, ids, lps, top_n) -> None:
    assert len(entries) == len(ids)
    for entry, token, lp in zip(entries, ids, lps, strict=True):
        assert entry["token"] == tok.decode([token])
        assert entry["bytes"] == list(entry["token"].encode("utf-8"))
        assert entry["logprob"] == pytest.approx(float(lp[token]), abs=1e-4)
        top = entry["top_logprobs"]
        assert len(top) == top_n
        values = [t["logprob"] for t in top]
        assert values == sorted(values, reverse=True)
        want = torch.topk(lp, top_n).values.tolist()
        assert values == pytest.approx(want, abs=1e-4)
        if top_n:  # greedy: the chosen token is the most likely one
            assert top[0]["token"] == entry["token"]
            assert top[0]["logprob"] == pytest.approx(entry["logprob"], abs=1e-6)


def test_generate_logprobs_equal_log_softmax_of_a_plain_forward(backend, tokenizer):  # noqa: F811
    for prompt, top_n in ((PROMPTS[0], 3), (PROMPTS[1], 0)):
        gen = backend.generate(GenerationRequest(prompt, max_new_tokens=STEPS, logprobs=top_n))
        ids, lps = _plain_greedy(backend.peft_model, tokenizer, prompt, STEPS)
        assert gen.completion_tokens == len(ids)
        _check(gen.logprobs, tokenizer, ids, lps, top_n)
    assert backend.generate(GenerationRequest(PROMPTS[0], max_new_tokens=2)).logprobs is None


def test_batched_and_continuous_rows_give_the_same_logprobs(backend):  # noqa: F811
    items = [
        (GenerationRequest(PROMPTS[0], max_new_tokens=STEPS, logprobs=2), None),
        (GenerationRequest(PROMPTS[2], max_new_tokens=4), "first"),
        (GenerationRequest(PROMPTS[3], max_new_tokens=5, logprobs=1), "second"),
    ]
    alone = [backend.generate(r, a) for r, a in items]
    batched = backend.generate_batch(items)
    continuous = _drain(backend.continuous_decoder(), {0: [(r, a, i) for i, (r, a) in
                                                            enumerate(items)]})  # fmt: skip
    for i, want in enumerate(alone):
        for got in (batched[i], continuous[i]):
            assert got.text == want.text
            if want.logprobs is None:
                assert got.logprobs is None
                continue
            assert [e["token"] for e in got.logprobs] == [e["token"] for e in want.logprobs]
            assert [e["logprob"] for e in got.logprobs] == pytest.approx(
                [e["logprob"] for e in want.logprobs], abs=1e-4
            )
            assert [len(e["top_logprobs"]) for e in got.logprobs] == [
                items[i][0].logprobs
            ] * want.completion_tokens


def test_sampled_tokens_report_the_raw_distribution(backend):  # noqa: F811
    """A sampled (temperature 1.5) token's logprob is the raw log-softmax, not the warped."""
    request = GenerationRequest(
        PROMPTS[3], max_new_tokens=STEPS, temperature=1.5, seed=3, logprobs=5
    )
    got = _drain(backend.continuous_decoder(), {0: [(request, None, "s")]})["s"]
    alone = backend.generate(request)
    assert len(got.logprobs) == got.completion_tokens
    for entry in got.logprobs + alone.logprobs:
        assert entry["logprob"] <= 0.0
        top = entry["top_logprobs"]
        total = torch.logsumexp(torch.tensor([t["logprob"] for t in top]), 0)
        assert float(total) <= 1e-5  # part of a normalised distribution
        chosen = [t for t in top if t["token"] == entry["token"]]
        if chosen:
            assert chosen[0]["logprob"] == pytest.approx(entry["logprob"], abs=1e-5)
