"""PPO math on hand-computed cases, and the PPO learner on the built-in tiny model (no Ray)."""

from __future__ import annotations

import json

import pytest
import torch

from qlp_ray.core.errors import InvalidRequest
from qlp_ray.models.prompt import format_prompt
from qlp_ray.train.ppo import (
    AdaptiveKLController,
    Rollout,
    gae,
    masked_whiten,
    per_token_rewards,
    policy_loss,
    value_loss,
)

T = torch.tensor


@pytest.mark.parametrize(
    "gamma, lam, adv, ret",
    [
        (1.0, 1.0, [0.5, 0.5, 0.5], [1.0, 1.0, 1.0]),
        (1.0, 0.5, [0.125, 0.25, 0.5], [0.625, 0.75, 1.0]),
        (0.9, 1.0, [0.31, 0.4, 0.5], [0.81, 0.9, 1.0]),  # returns = discounted reward
    ],
)
def test_gae_by_hand(gamma, lam, adv, ret):
    a, r = gae(T([[0.0, 0.0, 1.0]]), T([[0.5, 0.5, 0.5]]), torch.ones(1, 3), gamma, lam)
    assert a[0].tolist() == pytest.approx(adv)
    assert r[0].tolist() == pytest.approx(ret)


def test_gae_ignores_tokens_after_the_end():
    a, r = gae(T([[0.0, 1.0, 5.0]]), T([[0.5, 0.5, 9.0]]), T([[1.0, 1.0, 0.0]]), 1.0, 1.0)
    assert a[0].tolist() == pytest.approx([0.5, 0.5, 0.0])
    assert r[0].tolist() == pytest.approx([1.0, 1.0, 0.0])


def test_per_token_rewards_kl_penalty_and_score_at_last_token():
    logp = T([[-1.0, -2.0, -3.0], [-1.0, -1.0, -1.0]])
    ref = T([[-1.5, -2.0, -2.0], [-1.0, -2.0, -1.0]])
    mask = T([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    rewards, kl = per_token_rewards(T([1.0, 2.0]), logp, ref, mask, kl_coef=0.1)
    assert torch.allclose(kl, T([[0.5, 0.0, -1.0], [0.0, 1.0, 0.0]]))
    assert torch.allclose(rewards, T([[-0.05, 0.0, 1.1], [0.0, 1.9, 0.0]]))


def test_clipped_policy_loss_by_hand():
    logp = torch.log(T([[1.5, 0.5, 1.1]]))
    loss, stats = policy_loss(logp, torch.zeros(1, 3), T([[1.0, -1.0, 2.0]]), torch.ones(1, 3))
    # tokens: max(-1.5, -1.2) = -1.2 (clipped); max(0.5, 0.8) = 0.8 (clipped); -2.2
    assert float(loss) == pytest.approx((-1.2 + 0.8 - 2.2) / 3)
    assert stats["clipfrac"] == pytest.approx(2 / 3)


def test_clipped_value_loss_by_hand():
    loss = value_loss(T([[1.0, 0.0]]), T([[0.5, 0.5]]), T([[0.8, 1.0]]), torch.ones(1, 2), 0.2)
    assert float(loss) == pytest.approx(0.5 * (0.04 + 1.0) / 2)  # max(0.04, 0.01), max(1, 0.49)


def test_adaptive_kl_controller():
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=10_000)
    assert ctl.update(12.0, 100) == pytest.approx(0.1 * 1.002)  # error clipped to +20 %
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=10_000)
    assert ctl.update(3.0, 100) == pytest.approx(0.1 * 0.998)
    assert AdaptiveKLController(0.1).update(50.0, 100) == 0.1  # no target: fixed


def test_masked_whiten_and_minibatches():
    w = masked_whiten(T([[1.0, 2.0, 3.0, 100.0]]), T([[1.0, 1.0, 1.0, 0.0]]))
    assert w[0, :3].tolist() == pytest.approx([-1.2247, 0.0, 1.2247], abs=1e-4)
    n = 5
    rows = torch.arange(n).float().unsqueeze(1)
    buf = Rollout(*(rows.clone() for _ in range(7)))
    seen = [mb.input_ids[:, 0].tolist() for mb in buf.minibatches(2, torch.Generator())]
    assert [len(s) for s in seen] == [2, 2, 1]
    assert sorted(sum(seen, [])) == list(range(n))


# --- the learner on the built-in tiny model --------------------------------------------


@pytest.fixture(scope="module")
def tiny(qlp_home):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from qlp_ray.core.config import load_config
    from qlp_ray.models.base import resolve_base_path

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("QLP_HOME", str(qlp_home))
        path = resolve_base_path(load_config())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(path)
    yield path, tok, lambda: AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    torch.set_num_threads(threads)


def _prompts(split: str, n: int) -> list[str]:
    from qlp_ray.models.tiny import DATA_DIR

    lines = (DATA_DIR / "samples" / f"devops.{split}.jsonl").read_text().splitlines()
    return [format_prompt(json.loads(x)["instruction"]) for x in lines[:n]]


def test_learner_resumes_exactly_and_keeps_the_reference(tiny, tmp_path):
    from qlp_ray.train.ppo_loop import PPOLearner, PPOOptions, _forward, evaluate, make_policy
    from qlp_ray.train.rewards import keyword_reward

    _, tok, load = tiny
    opts = PPOOptions(steps=3, batch_size=4, minibatch_size=2, max_new_tokens=6,
                      lr_scheduler="linear", warmup_ratio=0.34)  # fmt: skip
    reward = keyword_reward(["steps"])
    prompts = _prompts("train", 4)

    policy, head = make_policy(load(), opts)
    learner = PPOLearner(policy, head, tok, reward, opts)
    ids = tok(prompts[:1], return_tensors="pt")["input_ids"]
    attn = torch.ones_like(ids)
    ref_before, _, _ = _forward(load(), None, ids, attn, ids.shape[1] - 1, 1.0)
    for _ in range(2):
        learner.train_step(prompts)
    learner.save(tmp_path / "ckpt")
    following = learner.train_step(prompts)

    p2, h2 = make_policy(load(), opts)
    resumed = PPOLearner(p2, h2, tok, reward, opts)
    resumed.load(tmp_path / "ckpt")
    assert resumed.step == 2
    # same step 3, same numbers (the learning rate too: warm-up 1 step, then linear decay)
    assert following["learning_rate"] == pytest.approx(opts.learning_rate * 0.5)
    assert resumed.train_step(prompts) == pytest.approx(following)

    with policy.disable_adapter():  # the reference is the untouched base
        ref_after, _, _ = _forward(policy, None, ids, attn, ids.shape[1] - 1, 1.0)
    policy_now, _, _ = _forward(policy, None, ids, attn, ids.shape[1] - 1, 1.0)
    assert torch.allclose(ref_before, ref_after, atol=1e-5)
    assert not torch.allclose(policy_now, ref_after, atol=1e-3)  # the adapter did train

    # continuing that adapter: the policy starts as the parent, which is also the reference;
    # the value head saved beside the adapter (as a registered PPO adapter has it) continues
    from qlp_ray.train.ppo_loop import VALUE_HEAD_FILE

    parent = tmp_path / "ckpt" / "adapter"
    _, fresh_head = make_policy(load(), opts, str(parent))  # no value head file: zeros
    assert float(fresh_head.linear.weight.abs().sum()) == 0.0
    (parent / VALUE_HEAD_FILE).write_bytes((tmp_path / "ckpt" / VALUE_HEAD_FILE).read_bytes())
    child, child_head = make_policy(load(), opts, str(parent))
    saved = resumed.value_head  # == the learner's head at step 2, trained on since
    assert float(child_head.linear.weight.abs().sum()) > 0
    assert not torch.equal(child_head.linear.weight, saved.linear.weight)  # step 2, not 3
    p3, h3 = make_policy(load(), opts)
    PPOLearner(p3, h3, tok, reward, opts).load(tmp_path / "ckpt")
    assert torch.equal(child_head.linear.weight, h3.linear.weight)
    trainable = [n for n, p in child.named_parameters() if p.requires_grad]
    assert trainable and all(".default." in n for n in trainable)
    assert evaluate(child, tok, prompts[:2], reward, opts)["kl"] == pytest.approx(0.0, abs=1e-5)


def test_sample_masks_tokens_after_eos(tiny):
    from qlp_ray.train.ppo_loop import PPOOptions, sample

    _, tok, load = tiny
    torch.manual_seed(0)
    ids, attn, mask, rows, texts = sample(
        load(), tok, _prompts("train", 3), PPOOptions(max_new_tokens=40), n=2
    )
    completion = ids[:, -mask.shape[1] :]
    eos = tok.eos_token_id
    assert len(rows) == len(texts) == 6 and mask.shape[0] == 6
    for row, m in zip(completion.tolist(), mask.tolist(), strict=True):
        n = int(sum(m))
        assert m == [1.0] * n + [0.0] * (len(m) - n)  # a prefix
        if eos in row:
            assert n == row.index(eos) + 1  # up to and including the first EOS
    assert attn[:, -mask.shape[1] :].float().equal(mask)


@pytest.mark.parametrize(
    "kind, factors",
    [
        ("constant", [0.5, 1.0, 1.0, 1.0, 1.0]),
        ("linear", [0.5, 1.0, 0.75, 0.5, 0.25]),
        ("cosine", [0.5, 1.0, 0.8536, 0.5, 0.1464]),
    ],
)
def test_lr_schedule_warmup_then_decay(kind, factors):
    from qlp_ray.train.ppo_loop import PPOOptions, lr_lambda

    f = lr_lambda(PPOOptions(steps=5, lr_scheduler=kind, warmup_ratio=0.2))
    assert [f(i) for i in range(5)] == pytest.approx(factors, abs=1e-4)


def test_bad_options_name_the_option():
    from qlp_ray.train.ppo_loop import PPOOptions

    with pytest.raises(InvalidRequest, match="lr_scheduler"):
        PPOOptions(lr_scheduler="step")

    with pytest.raises(InvalidRequest, match="minibatch_size"):
        PPOOptions(minibatch_size=0)
