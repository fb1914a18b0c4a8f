"""Turning records into token ids the same way in every algorithm (prompt template, EOS, masks, lengths).

Lengths come from the model config (``model.max_prompt_length``, ``model.max_length``, carried by a
``TextLimits``). A prompt is cut only inside the user's text, never through the prompt or chat template:

    ids(format(p))                            when it has <= max_prompt_length tokens
    ids(format(tail_k(p)))                    otherwise, k the largest count of p's last tokens that fits

so the template's start (``BEGINNING OF CONVERSATION: USER:``, ``<|im_start|>user``) and its end (the
generation prompt) always survive and the model still sees the end of the request, where the question
usually is. Prompt + response pairs (SFT, reward/cost scoring, PTX) keep the whole (fitted) prompt and
cut the response's end when the pair exceeds ``max_length``. Every cut is counted in ``TextLimits``
(a warning at the first cut of each kind; the totals go into ``summary.json`` as ``truncations``).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from alignbench.config import ModelConfig
from alignbench.errors import ConfigError

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)


def left_pad_batch(
    sequences: Sequence[Sequence[int]], pad_id: int, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack token-id lists into left-padded ``ids`` and ``mask`` ``[B, max_len]`` (long)."""
    if len(sequences) == 0 or any(len(s) == 0 for s in sequences):
        raise ValueError("left_pad_batch: needs at least one sequence and no empty sequence.")
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, width - len(seq) :] = torch.as_tensor(list(seq), dtype=torch.long)
        mask[row, width - len(seq) :] = 1
    return ids.to(device), mask.to(device)


def format_prompt(tokenizer: PreTrainedTokenizerBase, model_cfg: ModelConfig, prompt: str) -> str:
    """Apply the model's chat template (instruct models) or the plain prompt template."""
    if model_cfg.use_chat_template and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    return model_cfg.prompt_template.format(prompt=prompt)


def encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def _digest(*texts: str) -> bytes:
    return hashlib.blake2b("\x1f".join(texts).encode("utf-8", "surrogatepass"), digest_size=12).digest()


#: what each kind of cut counts: distinct texts (summary key) and cut events (``<key>`` -> ``<kind>_cuts``)
CUT_KINDS = {
    "prompts": "the start of the user's text, to fit model.max_prompt_length",
    "responses": "the end of the response, to fit model.max_length",
    "scored_texts": "the start of the text, to fit the max_length of a scorer with its own tokenizer "
                    "(algo.<reward_model|cost_model>.max_length, eval.classifier.max_length)",
}


@dataclass
class TextLimits:
    """Token budgets of one run and a count of every cut made to fit them.

    ``max_prompt``: tokens of a formatted prompt (``model.max_prompt_length``); ``max_length``: tokens of
    prompt + response (``model.max_length``); 0 = no limit (unit tests, benchmarks). Counts per kind of
    cut (``CUT_KINDS``): distinct texts cut (``prompts``, ``responses``: prompt/response pairs,
    ``scored_texts``: texts an external scorer truncated) and how often a cut was made (``<kind>_cuts``:
    the same prompt is encoded at every rollout and scoring).
    """

    max_prompt: int = 0
    max_length: int = 0
    counts: dict[str, int] = field(default_factory=lambda: {f"{kind}_cuts": 0 for kind in CUT_KINDS})
    _seen: dict[str, set] = field(default_factory=lambda: {kind: set() for kind in CUT_KINDS}, repr=False)

    @classmethod
    def for_model(cls, model_cfg: ModelConfig, model: Any = None) -> "TextLimits":
        """The budgets of ``model=``; with the loaded ``model``, checked against its context window."""
        window = getattr(getattr(model, "config", None), "max_position_embeddings", None)
        if isinstance(window, int) and model_cfg.max_length > window:
            raise ConfigError(f"config value 'model.max_length' ({model_cfg.max_length}) exceeds the context "
                              f"window of model '{model_cfg.name}' ({window} positions)")
        return cls(max_prompt=model_cfg.max_prompt_length, max_length=model_cfg.max_length)

    def record_cut(self, kind: str, key: Any, message: str) -> None:
        """Count one cut of ``kind`` (a ``CUT_KINDS`` key) of the text ``key`` identifies; warn at the first."""
        self.counts[f"{kind}_cuts"] += 1
        seen = self._seen[kind]
        if not seen:
            logger.warning("%s (every cut is counted; the totals go into summary.json 'truncations')", message)
        seen.add(key)

    def report(self) -> dict[str, Any]:
        """What ``summary.json`` stores under ``truncations``."""
        return {**{kind: len(seen) for kind, seen in self._seen.items()}, **self.counts,
                "max_prompt_length": self.max_prompt, "max_length": self.max_length}

    def warn_totals(self) -> None:
        """One warning with the totals of the run, when anything was cut."""
        cut = [f"{len(self._seen[kind])} {kind.replace('_', ' ')} lost {what} ({self.counts[f'{kind}_cuts']} cuts)"
               for kind, what in CUT_KINDS.items() if self._seen[kind]]
        if cut:
            logger.warning("truncated: %s", "; ".join(cut))


def fit_prompt(tokenizer, model_cfg: ModelConfig, prompt: str, limits: TextLimits | None) -> list[int]:
    """Token ids of the formatted ``prompt``, its user text left-truncated to fit ``limits.max_prompt``."""
    ids = encode(tokenizer, format_prompt(tokenizer, model_cfg, prompt))
    budget = limits.max_prompt if limits is not None else 0
    if not budget or len(ids) <= budget:
        return ids
    user = encode(tokenizer, prompt)
    keep = budget - (len(ids) - len(user))  # the template's own tokens stay
    while keep > 0:
        tail = tokenizer.decode(user[-keep:], skip_special_tokens=False, clean_up_tokenization_spaces=False)
        ids = encode(tokenizer, format_prompt(tokenizer, model_cfg, tail.lstrip()))
        if len(ids) <= budget:
            limits.record_cut("prompts", _digest(prompt),
                              f"a prompt of {len(user)} user tokens was cut to its last {keep} to fit "
                              f"model.max_prompt_length={budget} (the template is kept whole)")
            return ids
        keep -= max(1, len(ids) - budget)  # tokens merged differently at the cut: try shorter
    raise ConfigError(f"model.max_prompt_length={budget} leaves no room for the user's text: the prompt "
                      f"template alone takes {len(ids) - len(user)} tokens; raise model.max_prompt_length")


def encode_prompts(tokenizer, model_cfg: ModelConfig, prompts: list[str], limits: TextLimits | None = None):
    """Left-padded prompt batch ``(ids, mask)``; prompts over ``limits.max_prompt`` are fitted (module docstring)."""
    rows = [fit_prompt(tokenizer, model_cfg, p, limits) for p in prompts]
    return left_pad_batch(rows, tokenizer.pad_token_id)


def encode_prompt_response(tokenizer, model_cfg: ModelConfig, prompts: list[str], responses: list[str],
                           limits: TextLimits | None = None) -> dict[str, torch.Tensor]:
    """Prompt + response + EOS, left-padded, with a mask of the response (and EOS) tokens.

    Prompt and response are encoded separately and concatenated, so the response's tokens are the
    same ones the model would have generated after the prompt. The prompt is fitted to
    ``limits.max_prompt`` as in ``encode_prompts``; a pair longer than ``limits.max_length`` keeps the
    whole prompt and the start of the response (the EOS goes with the cut end).
    """
    rows, response_flags = [], []
    for prompt, response in zip(prompts, responses):
        prompt_ids = fit_prompt(tokenizer, model_cfg, prompt, limits)
        response_ids = encode(tokenizer, " " + response.strip()) + [tokenizer.eos_token_id]
        room = (limits.max_length if limits is not None else 0) - len(prompt_ids)
        if limits is not None and limits.max_length and len(response_ids) > room:
            limits.record_cut("responses", _digest(prompt, response),
                              f"a response of {len(response_ids)} tokens (with EOS) was cut to {room} to fit "
                              f"model.max_length={limits.max_length} after its {len(prompt_ids)}-token prompt")
            response_ids = response_ids[:room]
        rows.append(prompt_ids + response_ids)
        response_flags.append([0] * len(prompt_ids) + [1] * len(response_ids))
    input_ids, attention_mask = left_pad_batch(rows, tokenizer.pad_token_id)
    response_mask = torch.zeros_like(attention_mask)
    for index, flags in enumerate(response_flags):
        response_mask[index, input_ids.shape[1] - len(flags):] = torch.tensor(flags)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "response_mask": response_mask}
