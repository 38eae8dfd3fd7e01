"""PPO for a causal LM: policy = base + LoRA (PEFT), a linear value head on the last hidden
state, the frozen reference = the same model with the adapter disabled (PEFT's
``disable_adapter()``; no second copy of the weights), or, when PPO continues a parent
adapter, a frozen copy of that adapter (TRL's ``use_adapter``).

One step: sample completions for a batch of prompts, score them with a reward function
(``f(prompts=, completions=) -> list[float | None]``, see :mod:`qlp_ray.train.rewards`),
compute per-token KL-penalised rewards and GAE (:mod:`qlp_ray.train.ppo`), then
``ppo_epochs`` passes of shuffled minibatches with the clipped policy and value losses.
With several workers (Ray Train, :mod:`qlp_ray.train.ray_ppo`) each samples its own
prompts and the gradients are averaged across workers before every optimiser step.
The in-process loop here is the plain baseline the Ray run is measured against.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from qlp_ray.core.errors import InvalidRequest
from qlp_ray.train.ppo import (
    AdaptiveKLController,
    Rollout,
    gae,
    masked_mean,
    per_token_rewards,
    policy_loss,
    value_loss,
    whiten_advantages,
)

logger = logging.getLogger(__name__)

VALUE_HEAD_FILE = "value_head.safetensors"
STATE_FILE = "ppo_state.pt"  # tensors and plain types only: read with weights_only
ADAPTER_DIR = "adapter"
REF_ADAPTER = "ref"  # the frozen parent adapter, when PPO continues one


@dataclass
class PPOOptions:
    """PPO hyper-parameters (per worker where it says so)."""

    steps: int = 30
    batch_size: int = 8  # prompts sampled per step, per worker
    max_new_tokens: int = 8
    temperature: float = 1.0
    learning_rate: float = 3e-3
    lr_scheduler: str = "constant"  # linear / cosine / constant decay after the warm-up
    warmup_ratio: float = 0.0  # linear warm-up share of the steps
    ppo_epochs: int = 2
    minibatch_size: int = 4
    clip: float = 0.2
    value_clip: float = 0.2
    vf_coef: float = 0.5
    gamma: float = 1.0
    lam: float = 0.95
    kl_coef: float = 0.2  # 0.2: the held-out reward rises at ~1 nat of KL (tests/train)
    kl_target: float | None = None  # set: adaptive KL control towards this per-sequence KL
    kl_horizon: int = 10_000
    max_grad_norm: float = 1.0
    rank: int = 8
    alpha: int = 16
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj")
    checkpoint_every: int = 10
    eval_samples: int = 4  # completions per held-out prompt in evaluate()
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "max_new_tokens", "ppo_epochs", "minibatch_size"):
            if getattr(self, name) < 1:
                raise InvalidRequest(f"ppo option {name} must be >= 1, got {getattr(self, name)}")
        if self.checkpoint_every < 1:
            raise InvalidRequest(f"checkpoint_every must be >= 1, got {self.checkpoint_every}")
        if not 0 < self.clip < 1 or self.kl_coef < 0 or self.temperature <= 0:
            raise InvalidRequest("ppo needs 0 < clip < 1, kl_coef >= 0 and temperature > 0")
        if self.lr_scheduler not in ("linear", "cosine", "constant"):
            raise InvalidRequest(f"ppo lr_scheduler must be linear, cosine or constant, got "
                                 f"{self.lr_scheduler!r}")  # fmt: skip
        if not 0 <= self.warmup_ratio < 1:
            raise InvalidRequest(f"ppo warmup_ratio must be in [0, 1), got {self.warmup_ratio}")


class ValueHead(torch.nn.Module):
    """V(s_t) = w . h_t + b on the policy's last hidden state (initialised to 0)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(hidden_size, 1)
        torch.nn.init.zeros_(self.linear.weight)
        torch.nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden).squeeze(-1)


def make_policy(
    base: Any, opts: PPOOptions, parent_path: str | None = None
) -> tuple[Any, ValueHead]:
    """The LoRA policy on ``base`` (seeded, so every worker starts identical) + value head.

    With ``parent_path`` (a LoRA adapter directory) the policy continues that adapter and
    a frozen copy of it is loaded as adapter ``"ref"``: the reference is then the parent
    policy; without it the reference is the base (the adapter disabled). A parent trained
    by PPO carries its value head (``value_head.safetensors``, signed with the adapter):
    the critic continues from it, else it starts at zero.
    """
    from peft import PeftModel, get_peft_model
    from trl.trainer.utils import disable_dropout_in_model

    from qlp_ray.train._rlhf_common import lora_config

    torch.manual_seed(opts.seed)
    disable_dropout_in_model(base)
    if parent_path is None:
        policy = get_peft_model(
            base,
            lora_config(rank=opts.rank, alpha=opts.alpha, target_modules=opts.target_modules),
        )
    else:
        policy = PeftModel.from_pretrained(base, parent_path, is_trainable=True)
        policy.load_adapter(parent_path, adapter_name=REF_ADAPTER, is_trainable=False)
        policy.set_adapter("default")
    head = ValueHead(base.config.hidden_size)
    if parent_path is not None and (Path(parent_path) / VALUE_HEAD_FILE).is_file():
        from safetensors.torch import load_file  # tensors only: nothing is unpickled

        head.load_state_dict(load_file(str(Path(parent_path) / VALUE_HEAD_FILE)))
        logger.info("value head continued from %s", parent_path)
    return policy, head


def lr_lambda(opts: PPOOptions) -> Callable[[int], float]:
    """The learning-rate factor of PPO step ``i``: linear warm-up, then linear / cosine
    decay to 0 or constant (the same shapes as ``train.lr_scheduler`` for SFT)."""
    import math

    warmup = int(opts.warmup_ratio * opts.steps)

    def factor(i: int) -> float:
        if i < warmup:
            return (i + 1) / (warmup + 1)
        if opts.lr_scheduler == "constant":
            return 1.0
        progress = (i - warmup) / max(1, opts.steps - warmup)
        if opts.lr_scheduler == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return max(0.0, 1.0 - progress)

    return factor


def reference(policy: Any) -> Any:
    """Context: ``policy`` acts as the reference (the parent adapter, or none)."""
    from trl.trainer.utils import use_adapter

    ref = REF_ADAPTER if REF_ADAPTER in policy.peft_config else None
    return use_adapter(policy, ref)


def _forward(
    model: Any,
    value_head: ValueHead | None,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    n_completion: int,
    temperature: float,
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Log-probs ``[B, T]`` of the last ``T`` tokens, their values (or None) and the
    logits that predicted them (temperature-scaled, ``[B, T, V]``)."""
    from trl.trainer.utils import selective_log_softmax

    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    out = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        output_hidden_states=value_head is not None,
    )
    logits = out.logits[:, -n_completion - 1 : -1].float() / temperature
    logprobs = selective_log_softmax(logits, input_ids[:, -n_completion:])
    values = None
    if value_head is not None:
        values = value_head(out.hidden_states[-1][:, -n_completion - 1 : -1].float())
    return logprobs, values, logits


def sample(
    model: Any, tokenizer: Any, prompts: Sequence[str], opts: PPOOptions, *, n: int = 1
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str], list[str]]:
    """``n`` sampled completions per prompt: (ids, attention mask, completion mask,
    the prompt of each row, the decoded completions)."""
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        enc = tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False)
    finally:
        tokenizer.padding_side = side
    with torch.no_grad():
        out = model.generate(
            **enc,
            do_sample=True,
            temperature=opts.temperature,
            top_k=0,
            top_p=1.0,
            max_new_tokens=opts.max_new_tokens,
            num_return_sequences=n,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    p_len = enc["input_ids"].shape[1]
    completion = out[:, p_len:]
    is_eos = completion == tokenizer.eos_token_id
    # 1 up to and including the first EOS; 0 on the padding generate() adds after it
    after_eos = (is_eos.cumsum(1) - is_eos.long()) > 0
    mask = (~after_eos).long()
    attn = torch.cat([enc["attention_mask"].repeat_interleave(n, 0), mask], dim=1)
    texts = tokenizer.batch_decode(completion * mask, skip_special_tokens=True)
    rows = [p for p in prompts for _ in range(n)]
    return out, attn, mask.float(), rows, texts


def score(reward: Callable[..., list[float | None]], prompts: list[str], texts: list[str]):
    values = reward(prompts=prompts, completions=texts)
    if len(values) != len(texts):
        raise InvalidRequest(f"reward returned {len(values)} scores for {len(texts)} completions")
    return torch.tensor([0.0 if v is None else float(v) for v in values])


@dataclass
class PPOLearner:
    """Policy, value head, optimiser and KL controller of one worker."""

    policy: Any
    value_head: ValueHead
    tokenizer: Any
    reward: Callable[..., list[float | None]]
    opts: PPOOptions
    grad_sync: Callable[[list[torch.nn.Parameter]], None] | None = None
    step: int = 0
    kl_ctl: AdaptiveKLController = field(init=False)

    def __post_init__(self) -> None:
        self.kl_ctl = AdaptiveKLController(
            self.opts.kl_coef, self.opts.kl_target, self.opts.kl_horizon
        )
        self.params = [p for p in self.policy.parameters() if p.requires_grad]
        self.params += list(self.value_head.parameters())
        self.optimizer = torch.optim.AdamW(self.params, lr=self.opts.learning_rate)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_lambda(self.opts))

    def rollout(self, prompts: Sequence[str]) -> tuple[Rollout, dict[str, float]]:
        o = self.opts
        self.policy.eval()
        ids, attn, mask, rows, texts = sample(self.policy, self.tokenizer, prompts, o)
        scores = score(self.reward, rows, texts)
        t = mask.shape[1]
        with torch.no_grad():
            logp, values, _ = _forward(self.policy, self.value_head, ids, attn, t, o.temperature)
            with reference(self.policy):
                ref_logp, _, _ = _forward(self.policy, None, ids, attn, t, o.temperature)
        rewards, kl = per_token_rewards(scores, logp, ref_logp, mask, self.kl_ctl.value)
        adv, returns = gae(rewards, values, mask, o.gamma, o.lam)
        batch = Rollout(ids, attn, mask, logp, values * mask, whiten_advantages(adv, mask), returns)
        seq_kl = kl.sum(1)
        stats = {
            "reward": float(scores.mean()),
            "kl": float(seq_kl.mean()),
            "kl_coef": self.kl_ctl.value,
            "learning_rate": self.optimizer.param_groups[0]["lr"],
            "completion_tokens": float(mask.sum(1).mean()),
        }
        return batch, stats

    def update(self, batch: Rollout) -> dict[str, float]:
        o = self.opts
        self.policy.train()
        gen = torch.Generator().manual_seed(o.seed * 100_003 + self.step)
        totals: dict[str, float] = {}
        n = 0
        t = batch.mask.shape[1]
        for _ in range(o.ppo_epochs):
            for mb in batch.minibatches(o.minibatch_size, gen):
                logp, values, _ = _forward(
                    self.policy, self.value_head, mb.input_ids, mb.attention_mask, t, o.temperature
                )
                pl, stats = policy_loss(logp, mb.logprobs, mb.advantages, mb.mask, o.clip)
                vl = value_loss(values, mb.values, mb.returns, mb.mask, o.value_clip)
                loss = pl + o.vf_coef * vl
                self.optimizer.zero_grad(set_to_none=False)
                loss.backward()
                if self.grad_sync is not None:
                    self.grad_sync(self.params)
                torch.nn.utils.clip_grad_norm_(self.params, o.max_grad_norm)
                self.optimizer.step()
                for k, v in {
                    "policy_loss": float(pl.detach()),
                    "value_loss": float(vl.detach()),
                    **stats,
                }.items():
                    totals[k] = totals.get(k, 0.0) + v
                n += 1
        return {k: v / n for k, v in totals.items()}

    def train_step(self, prompts: Sequence[str]) -> dict[str, float]:
        """One PPO iteration: seeded sampling (seed, step), rollout, minibatch epochs."""
        torch.manual_seed(self.opts.seed * 1_000_003 + self.step * 7919 + _rank_offset())
        batch, stats = self.rollout(prompts)
        stats.update(self.update(batch))
        self.kl_ctl.update(stats["kl"], len(batch))
        self.scheduler.step()
        self.step += 1
        return stats

    # --- checkpoints: adapter + value head + optimiser + step + KL controller ------------

    def save(self, path: Path, extra: dict[str, Any] | None = None) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.policy.save_pretrained(
            str(path / ADAPTER_DIR), safe_serialization=True, selected_adapters=["default"]
        )
        from safetensors.torch import save_file

        save_file(self.value_head.state_dict(), str(path / VALUE_HEAD_FILE))
        torch.save(
            {
                "step": self.step,
                "optimizer": self.optimizer.state_dict(),
                "scheduler_epoch": self.scheduler.last_epoch,
                "kl_coef": self.kl_ctl.value,
                "torch_rng": torch.get_rng_state(),
            },
            path / STATE_FILE,
        )
        meta = {"step": self.step, "options": asdict(self.opts), **(extra or {})}
        (path / "ppo.json").write_text(json.dumps(meta, default=list))

    def load(self, path: Path) -> dict[str, Any]:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        weights = load_file(str(path / ADAPTER_DIR / "adapter_model.safetensors"))
        set_peft_model_state_dict(self.policy, weights)
        self.value_head.load_state_dict(load_file(str(path / VALUE_HEAD_FILE)))
        state = torch.load(path / STATE_FILE, weights_only=True)  # never unpickle code
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.last_epoch = int(state.get("scheduler_epoch", state["step"]))
        self.scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]
        self.kl_ctl.value = float(state["kl_coef"])
        torch.set_rng_state(state["torch_rng"])
        self.step = int(state["step"])
        return json.loads((path / "ppo.json").read_text())


def _rank_offset() -> int:
    import torch.distributed as dist

    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def prompt_batch(prompts: Sequence[str], step: int, batch_size: int, seed: int, rank: int):
    """The prompts of ``step`` on worker ``rank``: a seeded draw, reproducible on resume."""
    gen = torch.Generator().manual_seed(seed * 65_537 + step * 31 + rank)
    idx = torch.randint(0, len(prompts), (batch_size,), generator=gen)
    return [prompts[int(i)] for i in idx]


def evaluate(
    policy: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    reward: Callable[..., list[float | None]],
    opts: PPOOptions,
    *,
    seed: int = 1234,
) -> dict[str, float]:
    """Held-out mean reward of sampled completions, and KL(policy || reference) per
    completion: the exact per-token KL over the vocabulary, summed over its tokens."""
    if not prompts:
        raise InvalidRequest("no held-out prompts to evaluate")
    policy.eval()
    state = torch.get_rng_state()
    torch.manual_seed(seed)
    try:
        ids, attn, mask, rows, texts = sample(policy, tokenizer, prompts, opts, n=opts.eval_samples)
    finally:
        torch.set_rng_state(state)
    t = mask.shape[1]
    with torch.no_grad():
        _, _, logits = _forward(policy, None, ids, attn, t, opts.temperature)
        with reference(policy):
            _, _, ref_logits = _forward(policy, None, ids, attn, t, opts.temperature)
    logp, ref = torch.log_softmax(logits, -1), torch.log_softmax(ref_logits, -1)
    token_kl = (logp.exp() * (logp - ref)).sum(-1)
    return {
        "reward": float(score(reward, rows, texts).mean()),
        "kl": float((token_kl * mask).sum(1).mean()),
        "kl_per_token": float(masked_mean(token_kl, mask)),
    }


@dataclass
class PPOResult:
    policy: Any  # PeftModel with the trained adapter
    value_head: ValueHead
    metrics: dict[str, float]
    history: list[dict[str, float]]


def train_ppo(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    reward: Callable[..., list[float | None]],
    opts: PPOOptions,
    *,
    eval_prompts: Sequence[str] = (),
    parent_path: str | None = None,
) -> PPOResult:
    """The plain in-process PPO loop (one worker, no checkpoints)."""
    if not prompts:
        raise InvalidRequest("PPO needs at least one prompt")
    policy, head = make_policy(model, opts, parent_path)
    learner = PPOLearner(policy, head, tokenizer, reward, opts)
    before = evaluate(policy, tokenizer, eval_prompts, reward, opts) if eval_prompts else {}
    history = []
    t0 = time.perf_counter()
    while learner.step < opts.steps:
        batch = prompt_batch(prompts, learner.step, opts.batch_size, opts.seed, 0)
        history.append(learner.train_step(batch))
    metrics = {
        "train_reward_last": history[-1]["reward"],
        "steps": float(learner.step),
        "train_seconds": time.perf_counter() - t0,
    }
    if eval_prompts:
        after = evaluate(policy, tokenizer, eval_prompts, reward, opts)
        metrics.update(
            reward_before=before["reward"], reward_after=after["reward"], kl_after=after["kl"]
        )
    return PPOResult(policy, head, metrics, history)


__all__ = [
    "PPOLearner",
    "PPOOptions",
    "PPOResult",
    "ValueHead",
    "evaluate",
    "make_policy",
    "prompt_batch",
    "sample",
    "train_ppo",
]
