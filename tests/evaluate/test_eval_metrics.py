"""Every evaluation metric against a value computed by hand (arithmetic in comments)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch

from qlp_ray.core.errors import InvalidRequest
from qlp_ray.evaluate import metrics as M


def test_perplexity_from_nll():
    # token NLLs ln2 and ln4: mean = 1.5 ln2 -> ppl = 2**1.5
    assert M.perplexity_from_nll(math.log(2) + math.log(4), 2) == pytest.approx(2**1.5)
    with pytest.raises(InvalidRequest):
        M.perplexity_from_nll(1.0, 0)


class _FixedDistributionLM(torch.nn.Module):
    """Predicts the same next-token distribution at every position."""

    def __init__(self, probs: list[float]) -> None:
        super().__init__()
        self.log_probs = torch.nn.Parameter(torch.tensor(probs).log(), requires_grad=False)

    def forward(self, input_ids, attention_mask=None):
        b, t = input_ids.shape
        return SimpleNamespace(logits=self.log_probs.expand(b, t, -1))


def _word_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel({"<pad>": 0, "a": 1, "b": 2, "c": 3}, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>")


def test_perplexity_of_known_distribution_with_padding():
    # p(a)=0.4, p(b)=p(c)=0.25 at every position.
    # "a a b" predicts a, b; "c" predicts nothing; "b a" predicts a.
    # Predicted-token probabilities: 0.4, 0.25, 0.4 -> ppl = (0.4*0.25*0.4)^(-1/3) = 25^(1/3)
    model = _FixedDistributionLM([0.1, 0.4, 0.25, 0.25])
    res = M.perplexity(model, _word_tokenizer(), ["a a b", "c", "b a"], batch_size=3)
    assert res.n_tokens == 3
    assert res.perplexity == pytest.approx(25 ** (1 / 3), rel=1e-5)
    assert res.mean_nll == pytest.approx(-(2 * math.log(0.4) + math.log(0.25)) / 3, rel=1e-5)
    # batch size must not change the pooled result
    res1 = M.perplexity(model, _word_tokenizer(), ["a a b", "c", "b a"], batch_size=1)
    assert res1.perplexity == pytest.approx(res.perplexity, rel=1e-6)


def test_completion_perplexity_masks_prompts_and_padding():
    # p(a)=0.4, p(b)=p(c)=0.25. "a a"+"b c" scores b, c; "c"+"a" scores a (the tokenizer has
    # no EOS, so nothing is appended): ppl = (0.25*0.25*0.4)^(-1/3) = 0.025^(-1/3)
    model = _FixedDistributionLM([0.1, 0.4, 0.25, 0.25])
    pairs = [{"prompt": "a a", "completion": "b c"}, {"prompt": "c", "completion": "a"}]
    res = M.completion_perplexity(model, _word_tokenizer(), pairs, batch_size=2)
    assert res.n_tokens == 3
    assert res.perplexity == pytest.approx(0.025 ** (-1 / 3), rel=1e-5)
    one = M.completion_perplexity(model, _word_tokenizer(), pairs, batch_size=1)
    assert one.perplexity == pytest.approx(res.perplexity, rel=1e-6)
    cut = M.completion_perplexity(model, _word_tokenizer(), pairs[:1], max_length=3)
    assert cut.n_tokens == 1 and cut.perplexity == pytest.approx(4.0, rel=1e-5)  # b only
    with pytest.raises(InvalidRequest, match="no completion tokens"):
        M.completion_perplexity(model, _word_tokenizer(), pairs[:1], max_length=2)


def test_exact_match_and_accuracy():
    preds, refs = ["The cat.", "dog", "a bird"], ["cat", "Dog", "fish"]
    # normalised: cat==cat, dog==dog, bird!=fish -> 2/3
    assert M.exact_match(preds, refs) == pytest.approx(2 / 3)
    assert M.exact_match(preds, refs, normalize=False) == 0.0
    assert M.accuracy([1, 2, 3, 1], [1, 2, 2, 2]) == 0.5  # 2 of 4
    with pytest.raises(InvalidRequest, match="differ in length"):
        M.exact_match(["a"], ["a", "b"])


def test_precision_recall_f1_macro_and_micro():
    preds, refs = ["a", "a", "b", "c"], ["a", "b", "b", "b"]
    # a: tp1 fp1 fn0 -> P 1/2, R 1, F 2/3
    # b: tp1 fp0 fn2 -> P 1, R 1/3, F 1/2
    # c: tp0 fp1 fn0 -> P 0, R 0, F 0
    macro = M.precision_recall_f1(preds, refs, average="macro")
    assert macro.precision == pytest.approx((0.5 + 1 + 0) / 3)
    assert macro.recall == pytest.approx((1 + 1 / 3 + 0) / 3)
    assert macro.f1 == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)  # 7/18
    # micro: tp 2, fp 2, fn 2 -> P = R = F = 1/2
    micro = M.precision_recall_f1(preds, refs, average="micro")
    assert (micro.precision, micro.recall, micro.f1) == pytest.approx((0.5, 0.5, 0.5))
    with pytest.raises(InvalidRequest, match="average"):
        M.precision_recall_f1(preds, refs, average="weighted")


def test_token_f1():
    # "the cat sat on mat" -> [cat sat on mat]; "a cat sat" -> [cat sat]; common 2
    # P = 2/4, R = 2/2, F = 2/3; second pair shares nothing: 0; mean 1/3
    assert M.token_f1(["the cat sat on mat", "hello"], ["a cat sat", "world"]) == pytest.approx(
        1 / 3
    )


def test_bleu():
    assert M.bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(100.0)
    # "the cat sat on a mat" vs "the cat sat on the mat", equal lengths (BP = 1)
    # n-gram precisions 5/6, 3/5, 2/4, 1/3 -> BLEU = (5/6*3/5*2/4*1/3)^(1/4) = (1/12)^(1/4)
    got = M.bleu(["the cat sat on a mat"], ["the cat sat on the mat"])
    assert got == pytest.approx(100 * (1 / 12) ** 0.25, abs=1e-3)


def test_rouge():
    r = M.rouge(["the cat sat"], ["the cat was here"])
    # rouge1: overlap {the, cat} = 2; P 2/3, R 2/4 -> F 4/7
    assert r["rouge1"] == pytest.approx(4 / 7)
    # rouge2: [the cat] shared of 2 vs 3 bigrams; P 1/2, R 1/3 -> F 2/5
    assert r["rouge2"] == pytest.approx(2 / 5)
    # rougeL: LCS "the cat" = 2 -> same as rouge1
    assert r["rougeL"] == pytest.approx(4 / 7)


def test_latency_percentiles_and_throughput():
    # ms [10, 20, 30, 40, 100]; p50 = 30; p95 at rank 0.95*4 = 3.8 -> 40 + 0.8*60 = 88;
    # p99 at rank 3.96 -> 40 + 0.96*60 = 97.6
    p = M.latency_percentiles([0.01, 0.02, 0.03, 0.04, 0.1])
    assert p == pytest.approx({"p50_ms": 30.0, "p95_ms": 88.0, "p99_ms": 97.6})
    assert M.tokens_per_second(120, 1.5) == 80.0
    with pytest.raises(InvalidRequest):
        M.tokens_per_second(10, 0.0)
    with pytest.raises(InvalidRequest):
        M.latency_percentiles([])


def test_peak_memory_sees_allocation():
    size = 8 * 1024 * 1024
    res = M.measure_peak_memory(lambda: len(bytearray(size)))
    assert res.value == size
    assert size <= res.python_peak_bytes < size + 1024 * 1024
    assert res.process_max_rss_bytes > size
