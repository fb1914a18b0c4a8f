"""Three-way labels read off a causal LM: the label model of ``signals=learned`` and TriPlay's evaluator.

A (prompt, response) pair is rendered with a label template (default the world's evaluator prompt,
plain English: ``rate this reply . question : {prompt} reply : {response}``) and the model's next-token
logits at the end are read at the first token of each label word (``LABELS``: negative / rejective /
positive). The softmax over those three logits is a 3-way categorical classifier: decoding constrained
to the label set. Its argmax is the label; trained with cross-entropy on rater labels (label model) or
with GRPO on a vote (TriPlay's evaluator).
"""

from __future__ import annotations

import torch

from alignbench.data.schema import LABELS
from alignbench.data.world.templates import EVALUATOR_PROMPT
from alignbench.errors import ConfigError

#: the default label template: the world's evaluator prompt (the same words TriPlay's evaluator reads)
LABEL_TEMPLATE = EVALUATOR_PROMPT


def label_token_ids(tokenizer) -> list[int]:
    """Id of the first token of `` <label>`` for each of ``LABELS``; they must differ."""
    from alignbench.models.text import encode

    ids = [encode(tokenizer, " " + label)[0] for label in LABELS]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"the labels {LABELS} do not start with distinct tokens in this model's vocabulary")
    return ids


def label_logits(ctx, roles, role: str, texts: list[str], label_ids: list[int]) -> torch.Tensor:
    """``[N, 3]`` float32 logits of the label words (``LABELS`` order) after each rendered text."""
    from alignbench.models.text import encode_prompts

    ids, mask = encode_prompts(ctx.tokenizer, ctx.model_cfg, texts, limits=ctx.limits)
    logits = roles.lm_logits(role, ids.to(ctx.device), mask.to(ctx.device))[:, -1]
    return logits[:, label_ids].float()


@torch.no_grad()
def predict_labels(ctx, roles, role: str, texts: list[str], label_ids: list[int], chunk: int = 128) -> list[str]:
    """The argmax label of ``role`` for every rendered text."""
    picks = [label_logits(ctx, roles, role, texts[i:i + chunk], label_ids).argmax(1)
             for i in range(0, len(texts), chunk)]
    return [LABELS[i] for i in torch.cat(picks).tolist()] if picks else []


def render(template: str, prompt: str, response: str) -> str:
    """The label template filled with one (prompt, response)."""
    return template.format(prompt=prompt, response=response)
