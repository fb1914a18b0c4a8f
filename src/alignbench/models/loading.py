"""Load the base model and tokenizer every role is built on, offline-first.

``HF_HUB_OFFLINE=1`` is the default (set in ``alignbench.utils.env``), so a model that is not on this
machine fails here, at start-up, with one sentence naming the model and how to get it — not with a
50-second hub timeout deep inside training. ``trust_remote_code`` is passed only when the model config
turns it on; weights come from safetensors/GGUF files (never a pickle).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from alignbench.assets import package_dir
from alignbench.config import ModelConfig
from alignbench.errors import ModelUnavailableError
from alignbench.models.tiny import build_tiny_llama, build_word_tokenizer

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def _hint(cfg: ModelConfig) -> str:
    if cfg.download_hint:
        return cfg.download_hint
    return (f"download it with `huggingface-cli download {cfg.id}` (with network) or point "
            f"model.path= at a local copy")


def resolve_hf_location(cfg: ModelConfig) -> str:
    """Return a local directory (or, when online is allowed, the hub id) for ``source=hf``."""
    if cfg.path:
        if not Path(cfg.path).exists():
            raise ModelUnavailableError(f"model '{cfg.name}': model.path={cfg.path} does not exist")
        return cfg.path
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return snapshot_download(cfg.id, local_files_only=True)
    except (LocalEntryNotFoundError, OSError, ValueError):
        if _offline():
            raise ModelUnavailableError(
                f"model '{cfg.id}' is not on this machine and HF_HUB_OFFLINE=1: {_hint(cfg)}"
            ) from None
        return cfg.id


def resolve_gguf_file(cfg: ModelConfig) -> Path:
    """Find the GGUF file: ``model.path`` or a file shipped inside PyPI package ``gguf_package``.

    The package's folder is the fetched asset (``alignbench.assets``, ``python -m alignbench.assets
    fetch``) or an installed copy; it is never imported (its files are plain data).
    """
    if cfg.path:
        path = Path(cfg.path)
        if path.is_dir() and cfg.gguf_file:
            path = path / cfg.gguf_file
        if not path.is_file():
            raise ModelUnavailableError(f"model '{cfg.name}': GGUF file {path} does not exist")
        return path
    root = package_dir(cfg.gguf_package) if cfg.gguf_package else None
    if root is None:
        raise ModelUnavailableError(
            f"model '{cfg.name}' needs the PyPI package '{cfg.gguf_package}': {_hint(cfg)}"
        )
    candidates = sorted(root.rglob(cfg.gguf_file or "*.gguf"))
    if not candidates:
        raise ModelUnavailableError(f"model '{cfg.name}': no GGUF file inside package {root}: {_hint(cfg)}")
    return candidates[0]


#: the last GGUF file read, dequantised: the jobs of a multirun (one process) read and convert it once
_GGUF_LOADED: dict[tuple, tuple[PreTrainedModel, PreTrainedTokenizerBase]] = {}


def _load_gguf(path: Path, dtype: torch.dtype, trust_remote_code: bool):
    """A fresh copy of the model and tokenizer of a GGUF file (dequantising takes ~20 s; copying ~1 s)."""
    key = (str(path), path.stat().st_mtime_ns, str(dtype), trust_remote_code)
    if key not in _GGUF_LOADED:
        _GGUF_LOADED.clear()
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dtype,
                                                     trust_remote_code=trust_remote_code)
        _GGUF_LOADED[key] = (model, tokenizer)
    return tuple(copy.deepcopy(item) for item in _GGUF_LOADED[key])


def load_base(
    cfg: ModelConfig, *, vocabulary: list[str] | None, seed: int
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Build or load the base causal LM and its tokenizer (pad on the left, pad token set)."""
    dtype = DTYPES[cfg.dtype]
    if cfg.source == "tiny":
        if not vocabulary:
            raise ModelUnavailableError("model=tiny needs a data vocabulary to build its tokenizer")
        tokenizer = build_word_tokenizer(vocabulary, cfg.prompt_template)
        model = build_tiny_llama(tokenizer, cfg.arch, seed)
    elif cfg.source == "gguf":
        model, tokenizer = _load_gguf(resolve_gguf_file(cfg), dtype, cfg.trust_remote_code)
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
