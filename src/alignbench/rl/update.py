"""The policy update every RL algorithm runs, written once: epochs x minibatches of optimiser steps.

    for epoch in 1 .. epochs:
        split each experience batch ("part") into `minibatches` random row sets
        for j in 1 .. minibatches:
            L_j = sum_p (n_pj / n_j) L_clip(part p, rows j)  [+ extra_loss()]      (clipped_surrogate)
            host.optimize(role, L_j)
            after_step(rows j)                                        (PPO: the critics, a separate PTX step)

with the clipped surrogate of ``rl.experience.actor_loss`` (Schulman et al. 2017)::

    L_clip = -masked_mean(min(rho A, clip(rho, 1 - eps, 1 + eps) A)) + kl_loss_coef KL(pi || pi_ref) - entropy_coef H

A part is one batch of sampled responses with its per-token advantages; several parts of different
widths (WaltzRL's first answers and revisions) share each step, weighted by their rows in it. PPO,
Safe RLHF, RePO and reward shaping (GAE advantages), WaltzRL and single_rl (REINFORCE++,
``reinforce_pp_of_parts``), TriPlay-RL's attacker and defender (GRPO) run ``policy_update`` with
``clipped_surrogate``; TriPlay's evaluator (a 3-way label policy) runs it with its own loss.
``PolicyUpdateConfig`` holds the settings every one of them shares, ``ShapedRewardConfig`` those of the
KL-shaped token rewards of PPO and REINFORCE++ (docs/METRICS.md names what is logged).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from alignbench.config_fields import at_least, param, within
from alignbench.rl.advantages import reinforce_pp_advantages
from alignbench.rl.experience import Experience, actor_loss
from alignbench.rl.losses import KLEstimator, kl_penalty, masked_mean
from alignbench.rl.shaping import shape_token_rewards

__all__ = ["PolicyUpdateConfig", "ShapedRewardConfig", "clipped_surrogate", "mean_of", "policy_update",
           "reinforce_pp_of_parts"]

#: ``loss_of(rows) -> (loss, diagnostics)``: the loss of one step on ``rows[p]`` of every part p
StepLoss = Callable[[list[torch.Tensor]], tuple[torch.Tensor, dict[str, float]]]


@dataclass
class PolicyUpdateConfig:
    """Settings of ``policy_update`` shared by every RL algorithm (a base of their config classes)."""

    epochs: int = param(1, "passes over each rollout batch (TRL num_ppo_epochs, verl ppo_epochs, CleanRL "
                           "update_epochs)", at_least(1))
    minibatches: int = param(1, "optimiser steps per pass, each on a random share of the batch (TRL "
                                "num_mini_batches, CleanRL num_minibatches)", at_least(1))
    clip_eps: float = param(0.2, "eps of the clipped ratio clip(rho, 1 - eps, 1 + eps) (Schulman et al. 2017; TRL "
                                 "cliprange, verl clip_ratio)", at_least(0))
    kl_estimator: KLEstimator = param(KLEstimator.k1, "estimator of KL(pi || pi_ref) per token wherever the KL enters "
                                                      "(the reward: kl_coef; the loss: kl_loss_coef): k1 | k2 | k3 | abs "
                                                      "(Schulman 2020; k1 Safe RLHF's, k3 GRPO's)")
    kl_loss_coef: float = param(0.0, "weight of KL(pi || pi_ref) added to the loss, GRPO's form (verl kl_loss_coef, "
                                     "TRL GRPO beta); 0: none", at_least(0))
    entropy_coef: float = param(0.0, "weight of the entropy bonus subtracted from the loss (verl entropy_coeff, "
                                     "CleanRL ent_coef)", at_least(0))


@dataclass
class ShapedRewardConfig(PolicyUpdateConfig):
    """KL-shaped token rewards (``rl.shaping``) and their discount: PPO's and REINFORCE++'s settings.

        r_t = -kl_coef * k_t + 1[t = L] * clamp(score),     returns discounted by gamma
    """

    kl_coef: float = param(0.05, "beta of the KL penalty in the token rewards, r_t = -beta KL_t (+ the score at the "
                                 "last token) (TRL PPO kl_coef, verl kl_ctrl.kl_coef, safe-rlhf kl_coeff)", at_least(0))
    gamma: float = param(1.0, "discount of the token rewards (TRL, verl and CleanRL gamma)",
                         within(0, 1, low_open=True))
    score_clamp: float = param(50.0, "every shaped token reward is clamped to [-score_clamp, score_clamp] (safe-rlhf "
                                     "clip_range_score)", at_least(0))


def mean_of(metric_rows: list[dict[str, float]]) -> dict[str, float]:
    """Average a list of metric dicts key by key (minibatch diagnostics -> one row per iteration)."""
    keys = {k for row in metric_rows for k in row}
    return {k: sum(r[k] for r in metric_rows if k in r) / sum(1 for r in metric_rows if k in r) for k in keys}


def policy_update(host, role: str, sizes: Sequence[int], loss_of: StepLoss, *, epochs: int, minibatches: int,
                  generator: torch.Generator | None, after_step: Callable[[list[torch.Tensor]], dict[str, float]]
                  | None = None) -> dict[str, float]:
    """``epochs`` x ``minibatches`` steps of optimiser ``role`` (module docstring) over parts of ``sizes`` rows.

    Every pass draws one random order per part from ``generator`` and cuts it into ``minibatches`` row
    sets; ``generator=None`` keeps the rows in order (one step per pass over the whole batch: TriPlay's
    evaluator). A step's ``loss_of(rows)`` (rows per part, empty parts left out) is minimised, then
    ``after_step(rows)`` runs (its diagnostics are kept as it names them). Returns the mean over the
    steps of every diagnostic, the loss's under ``losses/<role>/<name>``.
    """
    updates = []
    for _ in range(epochs):
        if generator is None:
            orders = [torch.arange(size).chunk(minibatches) for size in sizes]
        else:
            orders = [torch.randperm(size, generator=generator).chunk(minibatches) for size in sizes]
        for j in range(minibatches):
            rows = [order[j] if j < len(order) else order[0][:0] for order in orders]
            if not any(len(r) for r in rows):
                continue
            loss, stats = loss_of(rows)
            host.optimize(role, loss)
            stats = {f"losses/{role}/{name}": value for name, value in stats.items()}
            if after_step is not None:
                stats.update(after_step(rows))
            updates.append(stats)
    return mean_of(updates)


def clipped_surrogate(roles, role: str, parts: Sequence[tuple[Experience, torch.Tensor]], cfg: PolicyUpdateConfig,
                      extra_loss: Callable[[], tuple[torch.Tensor, dict[str, float]]] | None = None) -> StepLoss:
    """The step loss of an LM policy: each part's ``actor_loss`` on its rows, weighted by its share of the
    step's rows, plus ``extra_loss()`` (e.g. PTX: ``(coef * CE, {"ptx_loss": CE})``)."""

    def loss_of(rows: list[torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        chunks = [(exp.select(index), advantages[index]) for (exp, advantages), index in zip(parts, rows) if len(index)]
        total = sum(exp.size for exp, _ in chunks)
        loss, diagnostics = 0.0, []
        for exp, advantages in chunks:
            part_loss, stats = actor_loss(roles, role, exp, advantages, clip_eps=cfg.clip_eps,
                                          kl_loss_coef=cfg.kl_loss_coef, kl_estimator=cfg.kl_estimator,
                                          entropy_coef=cfg.entropy_coef)
            loss = loss + part_loss * (exp.size / total)
            diagnostics.append(stats)
        stats = mean_of(diagnostics)
        if extra_loss is not None:
            extra, extra_stats = extra_loss()
            loss = loss + extra
            stats.update(extra_stats)
        return loss, stats

    return loss_of


def _pad_width(x: torch.Tensor, width: int) -> torch.Tensor:
    return F.pad(x, (0, width - x.shape[1]))


def reinforce_pp_of_parts(parts: Sequence[tuple[Experience, torch.Tensor]], cfg: ShapedRewardConfig
                          ) -> tuple[list[torch.Tensor], float]:
    """REINFORCE++ advantages (Hu 2025) of several experience batches with sequence ``scores``, and their KL.

    Each part's token rewards are r_k = -kl_coef * KL_k (+ its score at the last token, ``rl.shaping``);
    returns-to-go are whitened over *all* parts together, one global batch
    (``rl.advantages.reinforce_pp_advantages``). Returns the advantages per part and the mean over parts
    of each part's masked-mean KL to the reference (``train/<role>/kl``).
    """
    kls = [kl_penalty(exp.old_logp, exp.ref_logp, cfg.kl_estimator) for exp, _ in parts]
    streams = [shape_token_rewards(scores.to(exp.old_logp.dtype), kl, exp.mask, cfg.kl_coef, +1.0, cfg.score_clamp)
               for (exp, scores), kl in zip(parts, kls)]
    width = max(s.shape[1] for s in streams)
    advantages = reinforce_pp_advantages(torch.cat([_pad_width(s, width) for s in streams]),
                                         torch.cat([_pad_width(exp.mask, width) for exp, _ in parts]), cfg.gamma)
    per_part, offset = [], 0
    for exp, _ in parts:
        per_part.append(advantages[offset:offset + exp.size, :exp.mask.shape[1]])
        offset += exp.size
    kl = float(np.mean([float(masked_mean(kl, exp.mask)) for kl, (exp, _) in zip(kls, parts)]))
    return per_part, kl
