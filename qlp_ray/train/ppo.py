"""PPO math for RLHF on a causal LM (pure torch; no models, no Ray).

TRL 1.16 ships no PPO trainer, so these are the pieces of the classic PPO-RLHF recipe
(Ziegler et al. 2019; the same split as OpenRLHF's ``ppo_utils``): a per-token reward
that is ``-kl_coef * (log pi - log pi_ref)`` at every completion token plus the sequence
score at its last token; GAE over those rewards with a learned value; the clipped
policy-ratio loss and the clipped value loss; an adaptive KL controller; and a rollout
buffer cut into shuffled minibatches. All tensors are ``[batch, completion_len]`` with a
0/1 ``mask`` for the completion tokens (padding after EOS is 0).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, fields

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` where ``mask`` is 1 (over all elements, or along ``dim``)."""
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    """``x`` normalised to unit variance (and zero mean) over the masked elements."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    return out if shift_mean else out + mean


def per_token_rewards(
    scores: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rewards ``-kl_coef * (logp - ref_logp)`` per token, plus ``scores[i]`` at the last
    unmasked token of row ``i``; returns ``(rewards, kl)`` with ``kl`` the per-token
    log-ratio (the k1 estimate of KL(pi || pi_ref) at the sampled token)."""
    kl = (logprobs - ref_logprobs) * mask
    rewards = -kl_coef * kl
    last = (mask.sum(1).long() - 1).clamp(min=0)
    rewards[torch.arange(len(scores)), last] += scores
    return rewards * mask, kl


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation; returns ``(advantages, returns)``.

    ``delta_t = r_t + gamma * V_{t+1} - V_t`` with ``V`` zero after the last token;
    ``A_t = delta_t + gamma * lam * A_{t+1}``; ``returns = A + V``.
    """
    values = values * mask
    rewards = rewards * mask
    adv = torch.zeros_like(rewards)
    last = torch.zeros(rewards.shape[0], dtype=rewards.dtype, device=rewards.device)
    for t in reversed(range(rewards.shape[1])):
        next_v = values[:, t + 1] if t + 1 < rewards.shape[1] else torch.zeros_like(last)
        delta = rewards[:, t] + gamma * next_v - values[:, t]
        last = delta + gamma * lam * last
        adv[:, t] = last
    adv = adv * mask
    return adv, (adv + values) * mask


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip: float = 0.2,
) -> tuple[torch.Tensor, dict[str, float]]:
    """PPO's clipped surrogate ``-min(r A, clip(r, 1-e, 1+e) A)``, token mean."""
    ratio = torch.exp(logprobs - old_logprobs)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.max(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {
            "clipfrac": float(masked_mean((clipped > unclipped).float(), mask)),
            "approx_kl": float(masked_mean(0.5 * (logprobs - old_logprobs) ** 2, mask)),
        }
    return loss, stats


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip: float = 0.2,
) -> torch.Tensor:
    """Clipped value loss ``0.5 * max((V - R)^2, (V_old + clip(V - V_old, +-e) - R)^2)``."""
    v_clipped = old_values + torch.clamp(values - old_values, -clip, clip)
    return 0.5 * masked_mean(torch.max((values - returns) ** 2, (v_clipped - returns) ** 2), mask)


@dataclass
class AdaptiveKLController:
    """Ziegler et al.'s proportional controller: raise ``value`` when the observed KL is
    above ``target``, lower it when below (error clipped to +-20 %, scaled by
    ``n_steps / horizon``). ``target=None`` keeps ``value`` fixed."""

    value: float
    target: float | None = None
    horizon: int = 10_000

    def update(self, current_kl: float, n_steps: int) -> float:
        if self.target is not None:
            error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
            self.value *= 1.0 + error * n_steps / self.horizon
        return self.value


@dataclass
class Rollout:
    """One PPO batch: sequences (prompt + completion) and per-completion-token tensors."""

    input_ids: torch.Tensor  # [B, P + T] left-padded prompt + completion
    attention_mask: torch.Tensor  # [B, P + T]
    mask: torch.Tensor  # [B, T] 1 on completion tokens up to and including EOS
    logprobs: torch.Tensor  # [B, T] under the policy that sampled them
    values: torch.Tensor  # [B, T]
    advantages: torch.Tensor  # [B, T]
    returns: torch.Tensor  # [B, T]

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def minibatches(self, size: int, generator: torch.Generator) -> Iterator[Rollout]:
        """Shuffled minibatches of ``size`` rows (the last one may be smaller)."""
        order = torch.randperm(len(self), generator=generator)
        for start in range(0, len(self), size):
            idx = order[start : start + size]
            yield Rollout(**{f.name: getattr(self, f.name)[idx] for f in fields(self)})


def whiten_advantages(adv: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Advantages whitened over the batch (a single row keeps its raw values)."""
    if int(mask.sum()) < 2:
        return adv
    return masked_whiten(adv, mask) * mask


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """1 - Var(R - V) / Var(R) over the masked tokens (1 = perfect critic)."""
    var_r = float(masked_mean((returns - masked_mean(returns, mask)) ** 2, mask))
    diff = returns - values
    var_d = float(masked_mean((diff - masked_mean(diff, mask)) ** 2, mask))
    return math.nan if var_r == 0 else 1.0 - var_d / var_r


__all__ = [
    "AdaptiveKLController",
    "Rollout",
    "explained_variance",
    "gae",
    "masked_mean",
    "masked_whiten",
    "per_token_rewards",
    "policy_loss",
    "value_loss",
    "whiten_advantages",
]
