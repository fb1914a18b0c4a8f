"""Advantage estimators: GAE (PPO, Safe RLHF, RePO), GRPO (TriPlay-RL), REINFORCE++ (WaltzRL).

Token tensors are ``[B, T]`` over response tokens, right-padded, ``mask`` 1 on real tokens. The
response of row b is assumed contiguous (tokens 0..L_b-1), which is what ``rl.rollout`` produces.
The only Python loops are the reverse-time recursions over T, vectorised over the batch.
"""

from __future__ import annotations

import torch

from alignbench.errors import ConfigError
from alignbench.rl.losses import masked_whiten

__all__ = [
    "gae",
    "discounted_returns",
    "grpo_advantages",
    "reinforce_pp_advantages",
    "combine_lagrangian",
]


@torch.no_grad()
def gae(
    token_rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised Advantage Estimation (Schulman et al. 2016) over response tokens only.

        delta_t = r_t + gamma * V_{t+1} - V_t,      V_{L} = 0 after the last real token
        A_t     = delta_t + gamma * lam * A_{t+1},  A_{L} = 0
        R_t     = A_t + V_t                          (critic target, "returns")

    Rewards and values are zeroed outside ``mask`` first (as Safe RLHF does), which gives the
    zero bootstrap after the last real token. Both outputs are 0 outside ``mask`` and detached.
    """
    mask_f = mask.to(values.dtype)
    rewards = token_rewards * mask_f
    values = values * mask_f
    advantages = torch.zeros_like(values)
    next_value = torch.zeros_like(values[:, 0])
    next_adv = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        next_adv = (delta + gamma * lam * next_adv) * mask_f[:, t]
        advantages[:, t] = next_adv
        next_value = values[:, t]
    returns = (advantages + values) * mask_f
    return advantages, returns


@torch.no_grad()
def discounted_returns(
    token_rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0
) -> torch.Tensor:
    """Return-to-go G_t = sum_{k >= t} gamma^(k-t) r_k over real tokens (0 outside ``mask``)."""
    mask_f = mask.to(token_rewards.dtype)
    rewards = token_rewards * mask_f
    returns = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(rewards.shape[1])):
        running = rewards[:, t] + gamma * running
        returns[:, t] = running
    return returns * mask_f


@torch.no_grad()
def reinforce_pp_advantages(
    token_rewards: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0
) -> torch.Tensor:
    """REINFORCE++ (Hu 2025) advantages: critic-free, normalised over the global batch.

        G_t = sum_{k >= t} gamma^(k-t) r_k            (r_t = -beta*k_t + score at the last token)
        A_t = (G_t - mean(G)) / std(G)                mean/std over every real token of the batch

    The statistics pool all rows and tokens (not per prompt, unlike GRPO). Under DDP the
    statistics are the local batch's; all-gather first if a cross-rank batch is wanted.
    """
    return masked_whiten(discounted_returns(token_rewards, mask, gamma), mask, shift_mean=True)


@torch.no_grad()
def grpo_advantages(
    scores: torch.Tensor, group_size: int, scale: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """Group-relative advantages (GRPO, Shao et al. 2024) for ``N = n_prompts * group_size`` scores.

    Groups are consecutive blocks of ``group_size`` samples of one prompt:

        A_i = (s_i - mean_g(s)) / (std_g(s) + eps)     (scale=True, GRPO)
        A_i =  s_i - mean_g(s)                          (scale=False, Dr.GRPO: no std division)

    ``std_g`` is the population std (``unbiased=False``), so a group of identical scores gives
    exactly 0 and a group of 2 gives +-1 (up to eps). Returns ``[N]``; broadcast over tokens with
    ``A[:, None] * mask``.
    """
    n = scores.shape[0]
    if group_size < 1 or n % group_size != 0:
        raise ConfigError(
            f"grpo_advantages: {n} scores cannot be split into groups of group_size={group_size}; "
            "the rollout batch must hold a whole number of groups (prompts x samples per prompt)."
        )
    if not scores.is_floating_point():
        scores = scores.float()
    groups = scores.reshape(n // group_size, group_size)
    centered = groups - groups.mean(dim=1, keepdim=True)
    if scale:
        centered = centered / (groups.std(dim=1, unbiased=False, keepdim=True) + eps)
    return centered.reshape(n)


def combine_lagrangian(
    reward_adv: torch.Tensor,
    cost_adv: torch.Tensor,
    lam: float | torch.Tensor,
    violation_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Lagrangian actor advantage (Safe RLHF eq. for PPO-Lag; RePO's rectified variant).

        A = (A_R - lam * u * A_C) / (1 + lam)

    ``u = 1`` everywhere by default (Safe RLHF). With a per-sequence ``[B]`` ``violation_mask``
    (RePO: u_i = 1[C(x_i, y_i) > d]) the cost advantage only acts on violating responses; it is
    broadcast over the tokens of each row. ``lam`` is used as a constant (no gradient).
    """
    lam = float(lam.detach()) if isinstance(lam, torch.Tensor) else float(lam)
    cost_term = cost_adv
    if violation_mask is not None:
        u = violation_mask.to(cost_adv.dtype).reshape(-1, *[1] * (cost_adv.dim() - 1))
        cost_term = cost_adv * u
    return (reward_adv - lam * cost_term) / (1.0 + lam)
