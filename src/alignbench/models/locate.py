"""Where the base model's files are, found without importing transformers (``alignbench.models.loading``).

``alignbench.cli`` calls ``locate_model`` right after the config is validated, so a model that is not on
this machine fails within a few seconds of launch, before the training stack is imported.
"""

from __future__ import annotations

import os
from pathlib import Path

from alignbench.assets import package_dir
from alignbench.config import ModelConfig
from alignbench.errors import ModelUnavailableError


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


def locate_model(cfg: ModelConfig) -> None:
    """``ModelUnavailableError`` (one line naming the model and how to get it) when ``cfg``'s files are
    not here; the same checks ``load_base`` makes before it reads them."""
    if cfg.source == "gguf":
        resolve_gguf_file(cfg)
    elif cfg.source != "tiny":
        resolve_hf_location(cfg)
