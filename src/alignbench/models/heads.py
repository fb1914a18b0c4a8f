"""Scalar heads on the backbone's hidden states: reward/cost scores and critics' values.

Cost sign convention (Safe RLHF): a cost-model score C > 0 means unsafe, C <= 0 safe. Reward scores
are helpfulness, higher is better. A sequence's score is the head's output at its last real token
(EOS appended), as in the reference Safe RLHF implementation; critics read every response position.
"""

from __future__ import annotations

import torch
from torch import nn


class ScoreHead(nn.Module):
    """``score = w . h + b`` with ``b`` zero-initialised; computed in fp32 whatever the model dtype or
    autocast (``trainer.precision=bf16-mixed``): rewards, costs and values feed statistics, GAE and
    the Lagrange multiplier, which bf16's 8-bit mantissa would round (and numpy cannot read)."""

    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        nn.init.normal_(self.linear.weight, std=1.0 / (hidden_size + 1) ** 0.5)
        nn.init.zeros_(self.linear.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        with torch.autocast(hidden.device.type, enabled=False):
            return self.linear(hidden.float()).squeeze(-1)


def last_token_scores(per_position: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Pick each row's score at its last real token; works for left- and right-padded rows."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    last = (attention_mask.long() * positions).argmax(dim=1)
    return per_position.gather(1, last.unsqueeze(1)).squeeze(1)
