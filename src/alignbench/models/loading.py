"""Load the base model and tokenizer every role is built on, offline-first.

``HF_HUB_OFFLINE=1`` is the default (set in ``alignbench.utils.env``), so a model that is not on this
machine fails here, at start-up, with one sentence naming the model and how to get it — not with a
50-second hub timeout deep inside training. ``trust_remote_code`` is passed only when the model config
turns it on; weights come from safetensors/GGUF files (never a pickle).
"""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from alignbench.config import ModelConfig
from alignbench.errors import ModelUnavailableError
from alignbench.models.locate import resolve_gguf_file, resolve_hf_location
from alignbench.models.tiny import build_tiny_llama, build_word_tokenizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


#: the last GGUF file read: its tokenizer, and its dequantised model when the caller keeps it for the
#: jobs that follow in this process (a multirun: ``keep_model``); the model is 4 bytes a parameter
_GGUF_LOADED: dict[tuple, tuple[PreTrainedModel | None, PreTrainedTokenizerBase]] = {}


def _load_gguf(path: Path, dtype: torch.dtype, trust_remote_code: bool, keep_model: bool):
    """A fresh copy of the model and tokenizer of a GGUF file (dequantising takes ~20 s; copying ~1 s).

    ``keep_model``: also keep a clean copy of the model for the next call (a multirun's next job): the
    caller's copy is then a second one in memory for as long as the process runs."""
    key = (str(path), path.stat().st_mtime_ns, str(dtype), trust_remote_code)
    model, tokenizer = _GGUF_LOADED.get(key, (None, None))
    if tokenizer is None:
        _GGUF_LOADED.clear()
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    if model is None:
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype,
                                                     trust_remote_code=trust_remote_code)
        if not keep_model:
            _GGUF_LOADED[key] = (None, tokenizer)
            return model, copy.deepcopy(tokenizer)
    _GGUF_LOADED[key] = (model, tokenizer)
    return copy.deepcopy(model), copy.deepcopy(tokenizer)


def load_base(
    cfg: ModelConfig, *, vocabulary: list[str] | None, seed: int, keep_model: bool = True
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Build or load the base causal LM and its tokenizer (pad on the left, pad token set).

    ``keep_model``: a GGUF model stays in memory, converted, for the next call in this process (``_load_gguf``);
    a single job (``alignbench.cli`` outside a multirun) passes False and holds one copy instead of two."""
    dtype = DTYPES[cfg.dtype]
    if cfg.source == "tiny":
        if not vocabulary:
            raise ModelUnavailableError("model=tiny needs a data vocabulary to build its tokenizer")
        tokenizer = build_word_tokenizer(vocabulary, cfg.prompt_template)
        model = build_tiny_llama(tokenizer, cfg.arch, seed)
    elif cfg.source == "gguf":
        model, tokenizer = _load_gguf(resolve_gguf_file(cfg), dtype, cfg.trust_remote_code, keep_model)
    else:
        location = resolve_hf_location(cfg)
        tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer_id or location,
                                                  trust_remote_code=cfg.trust_remote_code)
        model = AutoModelForCausalLM.from_pretrained(
            location, dtype=dtype, trust_remote_code=cfg.trust_remote_code, use_safetensors=True,
        )
    model = model.to(dtype)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    if cfg.gradient_checkpointing:
        model.gradient_checkpointing_enable()
        model.config.use_cache = False
    return model, tokenizer
