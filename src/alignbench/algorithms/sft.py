"""Supervised fine-tuning: the shared first stage, and the ``sft`` baseline algorithm.

Loss: token-level cross-entropy on the response (and its EOS), prompt tokens masked out::

    L_SFT = - sum_t m_t log pi(y_t | x, y_<t) / sum_t m_t

``SFTStage`` trains it (LoRA on real models, every weight on ``model=tiny``, whose random base knows
nothing). ``algo=sft`` is the baseline every other algorithm is compared with: it evaluates the SFT
model they all start from, taken from the same stage cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from alignbench.algorithms.base import AlgorithmComponent, OptimizerSpec
from alignbench.models.text import encode_prompt_response
from alignbench.config import AlgoConfig
from alignbench.config_fields import at_least, param
from alignbench.models.roles import RoleSpec
from alignbench.registry import register_algorithm


def response_cross_entropy(roles, role: str, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy of ``role`` over the response positions of ``batch``::

        L = sum_t m_{t+1} CE(z_t, y_{t+1}) / max(1, sum_t m_{t+1})       (m: ``response_mask``)

    Only the positions that predict a response token go through the LM head (``RoleSet.lm_logits``'s
    ``rows``): the same per-token losses, summed over the same ``[B, L-1]`` grid, as a full-logits pass,
    without its ``[B, L, V]`` logits, their log-softmax and their gradients. Equal to that pass up to
    float rounding, not bit for bit: the head's product over fewer rows may round differently (on
    model=tiny the SFT loss moves in its 7th digit at step 2, and a trained model diverges from there)."""
    input_ids, response_mask = batch["input_ids"], batch["response_mask"]
    mask = response_mask[:, 1:].float()
    scored = mask > 0
    rows = torch.zeros_like(response_mask, dtype=torch.bool)
    rows[:, :-1] = scored  # logits at t predict token t + 1
    logits = roles.lm_logits(role, input_ids, batch["attention_mask"], rows=rows).float()
    token_loss = F.cross_entropy(logits, input_ids[:, 1:][scored], reduction="none")
    token_loss = token_loss.new_zeros(mask.shape).masked_scatter(scored, token_loss)
    return (token_loss * mask).sum() / mask.sum().clamp(min=1.0)


class SFTStage(AlgorithmComponent):
    """Trains the ``policy`` role on prompt/response pairs; its weights become everyone's base."""

    def __init__(self, cfg, ctx, stage_outputs=None, *, items=None, metric_prefix: str = "sft") -> None:
        super().__init__(cfg, ctx, stage_outputs)
        self.full_finetune = bool(getattr(cfg, "full_finetune", False))
        self._items = items if items is not None else ctx.data.sft_examples
        self.metric_prefix = metric_prefix

    def role_specs(self) -> list[RoleSpec]:
        return [RoleSpec("policy", "lm", trainable=True)]

    def train_items(self):
        return self._items

    def collate(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        return encode_prompt_response(self.ctx.tokenizer, self.ctx.model_cfg,
                                      [item["prompt"] for item in items], [item["response"] for item in items],
                                      limits=self.ctx.limits)

    def optimizer_specs(self) -> dict[str, OptimizerSpec]:
        return {"policy": OptimizerSpec(self.roles.parameters_of("policy"), self.cfg.optim, self.num_iterations)}

    def loss(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return response_cross_entropy(self.roles, "policy", batch)

    def training_step(self, batch, host) -> dict[str, float]:
        loss = self.loss(batch)
        host.optimize("policy", loss)  # the host logs optim/policy/grad_norm and optim/policy/lr
        tokens = float(batch["response_mask"].sum())
        return {f"{self.metric_prefix}/loss": float(loss.detach()), "perf/train_tokens": tokens}


@dataclass
class SFTBaselineConfig(AlgoConfig):
    """``algo=sft`` trains nothing itself: the SFT stage (``stages.sft``) is the model it evaluates."""

    steps: int = param(0, "none: the SFT stage is trained (and cached) by the pipeline", at_least(0))
    batch_size: int = param(1, "unused (nothing is trained here)", at_least(1))


@register_algorithm("sft")
class SFTBaseline(AlgorithmComponent):
    """Evaluate the SFT model: the starting point (and the baseline) of every other algorithm."""

    config_class = SFTBaselineConfig
    requires = ("sft",)
    export_role = "reference"  # the SFT model is the policy
    fsdp_ready = True  # the SFT stage: one forward and backward per batch

    def role_specs(self) -> list[RoleSpec]:
        return []

    @property
    def num_iterations(self) -> int:
        return 0
