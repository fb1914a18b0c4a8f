"""Turning records into token ids the same way in every algorithm (prompt template, EOS, masks)."""

from __future__ import annotations

import torch
from transformers import PreTrainedTokenizerBase

from alignbench.config import ModelConfig
from alignbench.rl.rollout import left_pad_batch


def format_prompt(tokenizer: PreTrainedTokenizerBase, model_cfg: ModelConfig, prompt: str) -> str:
    """Apply the model's chat template (instruct models) or the plain prompt template."""
    if model_cfg.use_chat_template and getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                             add_generation_prompt=True)
    return model_cfg.prompt_template.format(prompt=prompt)


def encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_prompts(tokenizer, model_cfg: ModelConfig, prompts: list[str], max_len: int = 0):
    """Left-padded prompt batch ``(ids, mask)``; ``max_len`` keeps the last tokens of long prompts."""
    rows = [encode(tokenizer, format_prompt(tokenizer, model_cfg, p)) for p in prompts]
    if max_len:
        rows = [row[-max_len:] for row in rows]
    return left_pad_batch(rows, tokenizer.pad_token_id)


def encode_prompt_response(tokenizer, model_cfg: ModelConfig, prompts: list[str], responses: list[str],
                           max_len: int = 0) -> dict[str, torch.Tensor]:
    """Prompt + response + EOS, left-padded, with a mask of the response (and EOS) tokens.

    Prompt and response are encoded separately and concatenated, so the response's tokens are the
    same ones the model would have generated after the prompt.
    """
    rows, response_flags = [], []
    for prompt, response in zip(prompts, responses):
        prompt_ids = encode(tokenizer, format_prompt(tokenizer, model_cfg, prompt))
        response_ids = encode(tokenizer, " " + response.strip()) + [tokenizer.eos_token_id]
        ids = prompt_ids + response_ids
        flags = [0] * len(prompt_ids) + [1] * len(response_ids)
        if max_len and len(ids) > max_len:
            ids, flags = ids[-max_len:], flags[-max_len:]
        rows.append(ids)
        response_flags.append(flags)
    input_ids, attention_mask = left_pad_batch(rows, tokenizer.pad_token_id)
    response_mask = torch.zeros_like(attention_mask)
    for index, flags in enumerate(response_flags):
        response_mask[index, input_ids.shape[1] - len(flags):] = torch.tensor(flags)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "response_mask": response_mask}
