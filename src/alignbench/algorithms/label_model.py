"""The label model: a 3-way rater (negative / rejective / positive) learned from the pairs' rater labels.

``signals=learned`` (``alignbench.signals``) gives every algorithm the same information: models learned
from the annotator data the reward and cost models see. The preference pairs carry, per response, a
rater's 3-way label (``response_{0,1}_label``: negative = unsafe, positive = helpful, rejective
otherwise; on the world a share ``label_flip_prob`` of them is wrong). The label model is a frozen-base
LoRA adapter read as a constrained classifier over the three label words (``signals.labels``)::

    p(label | x, y) = softmax(z_label(template(x, y))),      L = mean[-log p(rater label | x, y)]

trained on the training pairs' responses only. Its held-out metric is 3-way accuracy against the
held-out pairs' rater labels (``stages/label_model/accuracy``). Data without rater labels (PKU-SafeRLHF
has only ``is_response_*_safe``) trains no label model; the learned judge then reads refusals with
refusal matching instead (``signals.sources``).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from alignbench.algorithms.base import AlgorithmComponent, OptimizerSpec
from alignbench.data.schema import LABELS
from alignbench.models.roles import RoleSpec
from alignbench.signals.labels import label_logits, label_token_ids, render


def labelled_responses(rows: list[dict[str, Any]]) -> list[dict[str, str]]:
    """``{"prompt", "response", "label"}`` for every pair response that carries a rater label."""
    items = []
    for row in rows:
        for side in (0, 1):
            label = row.get(f"response_{side}_label")
            if label in LABELS:
                items.append({"prompt": row["prompt"], "response": row[f"response_{side}"], "label": label})
    return items


class LabelModelStage(AlgorithmComponent):
    """Trains the ``label_model`` role (an LM adapter read at the label words) on rater labels."""

    def __init__(self, cfg, ctx, stage_outputs=None, *, template: str) -> None:
        super().__init__(cfg, ctx, stage_outputs)
        self.template = template
        self.items = labelled_responses(ctx.data.preference_train)
        self.label_ids = label_token_ids(ctx.tokenizer)

    def role_specs(self) -> list[RoleSpec]:
        return [RoleSpec("label_model", "lm", trainable=True)]

    def train_items(self):
        return self.items

    def collate(self, items: list[dict[str, str]]) -> dict[str, Any]:
        return {"texts": [render(self.template, i["prompt"], i["response"]) for i in items],
                "labels": torch.tensor([LABELS.index(i["label"]) for i in items])}

    def optimizer_specs(self) -> dict[str, OptimizerSpec]:
        return {"label_model": OptimizerSpec(self.roles.parameters_of("label_model"), self.cfg.optim,
                                             self.num_iterations)}

    def loss_and_accuracy(self, batch: dict[str, Any]) -> tuple[torch.Tensor, float]:
        logits = label_logits(self.ctx, self.roles, "label_model", batch["texts"], self.label_ids)
        labels = batch["labels"].to(logits.device)
        return F.cross_entropy(logits, labels), float((logits.argmax(1) == labels).float().mean())

    def training_step(self, batch, host) -> dict[str, float]:
        loss, accuracy = self.loss_and_accuracy(batch)
        host.optimize("label_model", loss)
        return {"label_model/loss": float(loss.detach()), "label_model/train_accuracy": accuracy}

    @torch.no_grad()
    def evaluate_heldout(self, batch_size: int = 64) -> dict[str, float]:
        """3-way accuracy on the held-out pairs' labelled responses."""
        items = labelled_responses(self.ctx.data.preference_eval)
        correct = 0.0
        for start in range(0, len(items), batch_size):
            chunk = items[start:start + batch_size]
            _, accuracy = self.loss_and_accuracy(self.collate(chunk))
            correct += accuracy * len(chunk)
        return {"stages/label_model/accuracy": correct / max(1, len(items)),
                "stages/label_model/heldout_responses": float(len(items))}
