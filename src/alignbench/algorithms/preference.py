"""Reward and cost models from preference pairs (docs/ALGORITHMS.md §0).

Both are a LoRA adapter on the shared base plus a ``ScoreHead``; a sequence's score is the head at its
last token (EOS). With r the reward score and c the cost score of the two responses of a pair:

    L_RM = mean[-log sigmoid(r_better - r_worse)] + 0.001 * mean(r_better^2 + r_worse^2) / 2

    L_CM = mean[-log sigmoid(c_unsafer - c_safer) - log sigmoid(-s_safer c_safer)
                - log sigmoid(-s_unsafer c_unsafer)] + 0.001 * mean(c^2)

where s = +1 for a response labelled safe and -1 for unsafe. The sign terms pin the cost model's zero:
**C > 0 means unsafe, C <= 0 safe** — the convention every algorithm here relies on (a threshold d = 0
is "unsafe on average"). Metrics on the held-out pairs: pairwise accuracy for both, and for the cost
model sign accuracy (fraction of responses with sign(c) matching the safe/unsafe label).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from alignbench.algorithms.base import AlgorithmComponent, OptimizerSpec
from alignbench.models.text import encode_prompt_response
from alignbench.data.splits import count_prompts
from alignbench.models.heads import last_token_scores
from alignbench.models.roles import RoleSpec

REGULARIZER = 0.001


def reward_model_loss(better: torch.Tensor, worse: torch.Tensor) -> torch.Tensor:
    """Bradley-Terry loss with Safe RLHF's small score regulariser (see module docstring)."""
    return -F.logsigmoid(better - worse).mean() + REGULARIZER * (better.pow(2) + worse.pow(2)).mean() / 2


def cost_model_loss(safer: torch.Tensor, unsafer: torch.Tensor, safer_sign: torch.Tensor,
                    unsafer_sign: torch.Tensor) -> torch.Tensor:
    """Pairwise term plus the two sign terms; ``*_sign`` is +1 for a safe response, -1 unsafe."""
    pairwise = -F.logsigmoid(unsafer - safer)
    sign_terms = -F.logsigmoid(-safer_sign * safer) - F.logsigmoid(-unsafer_sign * unsafer)
    regulariser = REGULARIZER * (safer.pow(2) + unsafer.pow(2)).mean() / 2
    return (pairwise + sign_terms).mean() + regulariser


class PreferenceStage(AlgorithmComponent):
    """Trains the ``reward_model`` or ``cost_model`` role (``kind``) on PKU-schema pairs."""

    def __init__(self, cfg, ctx, stage_outputs=None, *, kind: str) -> None:
        super().__init__(cfg, ctx, stage_outputs)
        if kind not in ("reward_model", "cost_model"):
            raise ValueError(f"unknown preference stage '{kind}'")
        self.kind = kind

    def role_specs(self) -> list[RoleSpec]:
        return [RoleSpec(self.kind, "score", trainable=True)]

    def train_items(self):
        return self.ctx.data.preference_train

    def collate(self, items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        """Both responses of every pair in one batch: rows [0, B) first responses, [B, 2B) second."""
        prompts = [row["prompt"] for row in items]
        batch = encode_prompt_response(self.ctx.tokenizer, self.ctx.model_cfg, prompts + prompts,
                                       [row["response_0"] for row in items] + [row["response_1"] for row in items],
                                       limits=self.ctx.limits)
        batch["better_id"] = torch.tensor([int(row["better_response_id"]) for row in items])
        batch["safer_id"] = torch.tensor([int(row["safer_response_id"]) for row in items])
        batch["safe"] = torch.tensor([[bool(row["is_response_0_safe"]), bool(row["is_response_1_safe"])]
                                      for row in items])
        return batch

    def optimizer_specs(self) -> dict[str, OptimizerSpec]:
        return {self.kind: OptimizerSpec(self.roles.parameters_of(self.kind), self.cfg.optim, self.num_iterations)}

    def pair_scores(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Scores ``[B, 2]`` of (response_0, response_1)."""
        per_position = self.roles.scores(self.kind, batch["input_ids"], batch["attention_mask"])
        scores = last_token_scores(per_position, batch["attention_mask"])
        return torch.stack(scores.chunk(2), dim=1)

    def loss_and_metrics(self, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, float]]:
        scores = self.pair_scores(batch)
        rows = torch.arange(scores.shape[0])
        if self.kind == "reward_model":
            better = scores[rows, batch["better_id"]]
            worse = scores[rows, 1 - batch["better_id"]]
            loss = reward_model_loss(better, worse)
            metrics = {"accuracy": float((better > worse).float().mean())}
        else:
            safer_id = batch["safer_id"]
            safer, unsafer = scores[rows, safer_id], scores[rows, 1 - safer_id]
            sign = batch["safe"].float() * 2 - 1  # +1 safe, -1 unsafe
            loss = cost_model_loss(safer, unsafer, sign[rows, safer_id], sign[rows, 1 - safer_id])
            # sign(c) should be -1 for safe responses and +1 for unsafe ones
            sign_ok = ((scores > 0) == ~batch["safe"]).float().mean()
            metrics = {"accuracy": float((unsafer > safer).float().mean()), "sign_accuracy": float(sign_ok)}
        metrics["score_mean"] = float(scores.detach().mean())
        return loss, metrics

    def training_step(self, batch, host) -> dict[str, float]:
        loss, metrics = self.loss_and_metrics(batch)
        host.optimize(self.kind, loss)
        out = {f"{self.kind}/train_{k}": v for k, v in metrics.items()}
        out[f"{self.kind}/loss"] = float(loss.detach())
        return out

    @torch.no_grad()
    def evaluate_heldout(self, batch_size: int = 64) -> dict[str, float]:
        """Pairwise (and sign) accuracy on the held-out preference split, and how many pairs and prompts
        it rests on."""
        rows = self.ctx.data.preference_eval
        totals: dict[str, float] = {}
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            batch = {k: v.to(self.ctx.device) for k, v in self.collate(chunk).items()}
            _, metrics = self.loss_and_metrics(batch)
            for key, value in metrics.items():
                totals[key] = totals.get(key, 0.0) + value * len(chunk)
        metrics = {f"stages/{self.kind}/{k}": v / max(len(rows), 1) for k, v in totals.items()}
        # what the held-out figures rest on: pairs, and the distinct prompts they come from
        metrics[f"stages/{self.kind}/heldout_pairs"] = float(len(rows))
        metrics[f"stages/{self.kind}/heldout_prompts"] = float(count_prompts(rows, lambda row: row["prompt"]))
        return metrics
