"""Policy/value losses, KL estimators and diagnostics shared by every algorithm.

All tensors are ``[B, T]`` over *response* tokens (right-padded); ``mask`` is 1 for real response
tokens and 0 for padding (float, bool or long are all accepted). Nothing here loops over tokens.

Reduction convention (Safe RLHF, ``safe_rlhf.utils.masked_mean``)::

    masked_mean(x) = 1/|S| sum_{b in S} ( sum_t m_bt x_bt / sum_t m_bt ),  S = {b : sum_t m_bt > 0}

i.e. every *sequence* weighs the same whatever its length. ``per_sequence=False`` gives the global
token mean ``sum m x / sum m`` (every *token* weighs the same, as in DAPO / Dr.GRPO).
"""

from __future__ import annotations

import math

import torch

from alignbench.config_fields import Choice

__all__ = [
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "clipped_policy_loss",
    "clipped_value_loss",
    "kl_penalty",
    "entropy_from_logits",
    "explained_variance",
    "KLEstimator",
]

#: the per-token estimators of KL(pi || pi_ref) of ``kl_penalty`` (Schulman 2020, "Approximating KL
#: divergence"): ``algo.kl_estimator``, wherever an algorithm's KL enters
KLEstimator = Choice("KLEstimator", "k1 k2 k3 abs")
KL_KINDS = tuple(KLEstimator)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, per_sequence: bool = True) -> torch.Tensor:
    """Mean of ``x`` over ``mask``: per-sequence-then-batch (default) or global over tokens.

    Sequences without any real token are left out of the per-sequence mean. When the mask is
    empty the result is 0 (still connected to the graph of ``x``, so ``backward`` works).
    """
    mask = mask.to(x.dtype)
    if not per_sequence:
        return (x * mask).sum() / mask.sum().clamp(min=1.0)
    tokens = mask.sum(dim=-1)
    seq_mean = (x * mask).sum(dim=-1) / tokens.clamp(min=1.0)
    has_tokens = (tokens > 0).to(x.dtype)
    return (seq_mean * has_tokens).sum() / has_tokens.sum().clamp(min=1.0)


def masked_var(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Population variance (divide by N, not N-1) of the masked tokens, pooled over the batch."""
    mean = masked_mean(x, mask, per_sequence=False)
    return masked_mean((x - mean) ** 2, mask, per_sequence=False)


def masked_whiten(
    x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """Whiten the masked tokens of the whole batch: ``(x - mu) / sqrt(var + eps)``.

    ``mu`` and ``var`` are pooled over all real tokens (population variance, so the result has
    masked mean 0 and masked std 1 exactly up to ``eps``). With ``shift_mean=False`` the mean is
    added back (only the scale is normalised, the trl convention). Padding positions become 0.
    """
    mask_f = mask.to(x.dtype)
    mean = masked_mean(x, mask, per_sequence=False)
    var = masked_var(x, mask)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * mask_f


def clipped_policy_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float = 0.2,
    per_sequence: bool = True,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate (Schulman et al. 2017), used by PPO, GRPO and REINFORCE++ alike.

        rho_t = exp(logp_t - old_logp_t)
        L     = -masked_mean( min(rho_t A_t, clip(rho_t, 1 - eps, 1 + eps) A_t) )

    ``old_logp`` and ``advantages`` are treated as constants (detached here).

    Stats (detached, reduced as global token means over ``mask``):
      * ``approx_kl``: k3 estimate of KL(old || new), mean of ``(rho - 1) - log rho`` (>= 0);
      * ``clipfrac``: fraction of tokens where the clipped term is the active (strictly smaller)
        one, i.e. tokens whose gradient the clip removes;
      * ``ratio_mean``: mean of ``rho``.
    """
    old_logp = old_logp.detach()
    advantages = advantages.detach()
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    surr_unclipped = ratio * advantages
    surr_clipped = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps) * advantages
    loss = -masked_mean(torch.minimum(surr_unclipped, surr_clipped), mask, per_sequence)

    with torch.no_grad():
        stats = {
            "approx_kl": masked_mean((ratio - 1.0) - log_ratio, mask, per_sequence=False),
            "clipfrac": masked_mean(
                (surr_clipped < surr_unclipped).to(logp.dtype), mask, per_sequence=False
            ),
            "ratio_mean": masked_mean(ratio, mask, per_sequence=False),
        }
    return loss, stats


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float = 5.0,
    per_sequence: bool = True,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped critic loss (Safe RLHF ``critic_loss_fn``):

        V_clip = clip(V, V_old - c, V_old + c)
        L      = 0.5 * masked_mean( max((V - R)^2, (V_clip - R)^2) )

    Stat ``vf_clipfrac``: fraction of tokens where the clipped error is the larger one (chosen).
    """
    old_values = old_values.detach()
    returns = returns.detach()
    values_clipped = torch.clamp(values, old_values - clip_range, old_values + clip_range)
    err_unclipped = (values - returns) ** 2
    err_clipped = (values_clipped - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(err_unclipped, err_clipped), mask, per_sequence)
    with torch.no_grad():
        stats = {
            "vf_clipfrac": masked_mean(
                (err_clipped > err_unclipped).to(values.dtype), mask, per_sequence=False
            )
        }
    return loss, stats


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token estimator of KL(pi || pi_ref) from samples y_t ~ pi (Schulman's k1/k2/k3).

    With ``d_t = logp_t - ref_logp_t``:
      * ``k1``  = d_t                          (unbiased, can be negative; Safe RLHF's choice)
      * ``k2``  = d_t^2 / 2                    (biased, >= 0)
      * ``k3``  = exp(-d_t) - (-d_t) - 1       (unbiased, >= 0; GRPO's choice)
      * ``abs`` = |d_t|
    """
    diff = logp - ref_logp
    if kind == "k1":
        return diff
    if kind == "k2":
        return 0.5 * diff**2
    if kind == "k3":
        # written as exp(ref - logp) - (ref - logp) - 1 on the log-ratio r = ref - logp
        log_r = -diff
        return torch.exp(log_r) - log_r - 1.0
    if kind == "abs":
        return diff.abs()
    raise ValueError(f"kl_penalty: unknown kind {kind!r}; expected one of {KL_KINDS}")


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of softmax(logits) over the last dim: H = logsumexp(z) - sum_v p_v z_v.

    The logsumexp form never takes log of a probability, so it stays finite for peaked logits.
    """
    logits = logits.float()
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(dim=-1)


def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """Critic quality, 1 - Var[R - V] / Var[R] over the masked tokens.

    1 is a perfect critic, 0 one that predicts a constant equal to mean(R), < 0 worse than that.
    Returns ``nan`` (the CleanRL / Stable-Baselines convention) when Var[R] = 0 or no token is
    masked in, since the ratio is then undefined; it never raises.
    """
    with torch.no_grad():
        values, returns = values.double(), returns.double()
        if mask.sum() == 0:
            return math.nan
        var_r = masked_var(returns, mask)
        if var_r.item() == 0.0:
            return math.nan
        return float(1.0 - masked_var(returns - values, mask) / var_r)
