"""Per-token reward/cost streams from a sequence score plus a KL penalty (docs/ALGORITHMS.md section 1).

With the per-token KL estimate k_t = log pi(y_t) - log pi_ref(y_t) and L the last response token:

    reward stream  r_t = -beta * k_t + 1[t = L] * R(x, y)        (sign = +1)
    cost stream    c_t = +beta * k_t + 1[t = L] * C(x, y)        (sign = -1)

The KL term always *penalises* the policy: it lowers the reward and raises the cost (C > 0 unsafe),
so the cost critic also sees drift from pi_ref as "unsafe". Each stream is then clamped to
[-clamp, clamp]. Note on the clamp: the public Safe RLHF code (``add_kl_divergence_regularization``)
clamps the whole shaped token stream, after the score is added, at ``clip_range_score = 50``; in
practice this clips the score (the KL term is tiny), and we do the same.
"""

from __future__ import annotations

import torch

__all__ = ["last_token_index", "shape_token_rewards"]


def last_token_index(mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each row of a right-padded ``[B, T]`` mask (``[B]``, long).

    Rows with no real token get index 0 (callers should not score empty responses).
    """
    mask = mask.to(torch.long)
    positions = torch.arange(mask.shape[-1], device=mask.device).expand_as(mask)
    # largest position whose mask is 1; -1 for empty rows, clamped to 0
    return torch.where(mask > 0, positions, -1).amax(dim=-1).clamp(min=0)


def shape_token_rewards(
    scores: torch.Tensor,
    kl: torch.Tensor,
    mask: torch.Tensor,
    beta: float,
    sign: float = 1.0,
    clamp: float | None = 50.0,
) -> torch.Tensor:
    """Shaped ``[B, T]`` stream ``-sign * beta * k_t`` plus ``scores[b]`` at each row's last token.

    Args:
        scores: ``[B]`` sequence score (R for the reward stream, C for the cost stream).
        kl: ``[B, T]`` per-token KL estimate (see ``losses.kl_penalty``); treated as a constant.
        mask: ``[B, T]`` response mask.
        beta: KL coefficient.
        sign: +1 for a reward stream, -1 for a cost stream.
        clamp: bound applied to every shaped token (Safe RLHF: 50); ``None`` disables it.
    Returns:
        ``[B, T]`` stream, 0 outside ``mask``.
    """
    mask_f = mask.to(kl.dtype)
    stream = -sign * beta * kl.detach() * mask_f
    last = last_token_index(mask).unsqueeze(-1)
    stream = stream.scatter_add(-1, last, scores.detach().to(stream.dtype).unsqueeze(-1))
    if clamp is not None:
        stream = stream.clamp(-clamp, clamp)
    return stream * mask_f
