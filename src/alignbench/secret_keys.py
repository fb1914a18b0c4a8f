"""Secrets (tokens, API keys, passwords) come from the environment, never from alignbench's config.

A command-line override whose key looks like a secret (``+hf_token=hf_...``) would be copied by Hydra
into ``.hydra/overrides.yaml``, ``hydra.yaml`` and ``config.yaml``, by W&B into the run's metadata
(which records the command line, and ``wandb sync`` uploads), by Lightning into every worker rank's
command line, and by the shell into its history. So:

* ``refuse_secret_arguments`` stops such a command before Hydra reads it, with one line naming the
  environment variable to export instead (``env_name``: ``HF_TOKEN`` and ``WANDB_API_KEY``, which
  huggingface_hub and wandb read themselves; otherwise the key in capitals). Nothing is written.
* A secret-looking key with a value in a config file is refused at start-up in the same words
  (``secret_config_keys``, raised by ``alignbench.cli``); the copies Hydra had already written in
  ``.hydra/`` (and a sweep's ``multirun.yaml``) are scrubbed first (``scrub_hydra_files``).
* Whatever else is written (summary.json, the W&B and CSV config) goes through ``redact``.

A key is secret when one of its words is a secret word (``hf_token``, ``HF_TOKEN``, ``auth_header``)
or it contains a secret pair (``wandb_api_key``); whole words, so ``max_new_tokens`` and
``tokenizer_id`` are not secrets.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

_SECRET_WORDS = {"token", "secret", "secrets", "password", "passwd", "credential", "credentials", "auth",
                 "apikey", "authorization", "cookie"}
_SECRET_PAIRS = ("api_key", "access_key", "secret_key", "private_key", "auth_key")
_HF_KEYS = {"hf_token", "hub_token", "huggingface_token", "huggingface_hub_token", "token"}
MASK = "***"


def is_secret_key(key: Any) -> bool:
    """Does a config key (or the last part of a dotted override key) name a secret?"""
    name = str(key).lower().lstrip("+~").rsplit(".", 1)[-1]
    return bool(_SECRET_WORDS & set(re.split(r"[^a-z0-9]+", name))) or any(p in name for p in _SECRET_PAIRS)


def env_name(key: str) -> str:
    """The environment variable that holds the secret a config key names."""
    dotted = str(key).lstrip("+~")
    leaf = dotted.rsplit(".", 1)[-1].lower()
    if leaf in _HF_KEYS:
        return "HF_TOKEN"
    if "wandb" in leaf or dotted.lower().startswith("logger."):
        return "WANDB_API_KEY"
    return re.sub(r"[^A-Za-z0-9]+", "_", leaf).upper()


def refusal(key: str) -> str:
    """The one-line message that refuses a secret under ``key``."""
    key = str(key).lstrip("+~")
    return (f"'{key}' looks like a secret, and the run would write it to .hydra/, W&B's run metadata and "
            f"its logs; export {env_name(key)}=... instead (alignbench never takes secrets from its config)")


def secret_arguments(argv: list[str]) -> list[str]:
    """The command-line overrides (``key=value``) whose key looks like a secret and whose value is set."""
    found = []
    for token in argv:
        if token.startswith("-") or "=" not in token:
            continue
        key, _, value = token.partition("=")
        if value and is_secret_key(key):
            found.append(key.lstrip("+~"))
    return found


def refuse_secret_arguments(argv: list[str]) -> None:
    """Exit with status 2 and one line on stderr when ``argv`` carries a secret (module docstring)."""
    found = secret_arguments(argv)
    if found:
        print(f"alignbench: error: {refusal(found[0])}", file=sys.stderr)
        raise SystemExit(2)


def secret_config_keys(config: Any, prefix: str = "") -> list[str]:
    """Dotted keys of ``config`` (a plain container) that look like secrets and hold a value."""
    found: list[str] = []
    if isinstance(config, dict):
        for key, value in config.items():
            dotted = f"{prefix}{key}"
            if is_secret_key(key) and value not in (None, "", {}, []):
                found.append(dotted)
            else:
                found += secret_config_keys(value, dotted + ".")
    elif isinstance(config, list):
        for index, value in enumerate(config):
            found += secret_config_keys(value, f"{prefix}{index}.")
    return found


def redact(value: Any) -> Any:
    """Replace values whose key looks like a secret (token, key, password, …) by ``***``; in lists of
    override strings (``+hf_token=x``) too."""
    if isinstance(value, dict):
        return {k: (MASK if is_secret_key(k) and v not in (None, "") else redact(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [redact(v) for v in value]
    if isinstance(value, str) and "=" in value and not value.startswith("-"):
        key, _, rest = value.partition("=")
        if rest and is_secret_key(key) and " " not in key:
            return f"{key}={MASK}"
    return value


def scrub_hydra_files(output_dir: str | Path, multirun: bool = False) -> list[Path]:
    """Redact the config copies Hydra wrote for this job (``.hydra/*.yaml``; a sweep's
    ``multirun.yaml`` beside the job dirs); returns the files rewritten."""
    import yaml

    root = Path(output_dir)
    files = sorted((root / ".hydra").glob("*.yaml"))
    if multirun:
        files.append(root.parent / "multirun.yaml")
    rewritten = []
    for file in files:
        if not file.is_file():
            continue
        data = yaml.safe_load(file.read_text())
        clean = redact(data)
        if clean != data:
            file.write_text(yaml.safe_dump(clean, sort_keys=False))
            rewritten.append(file)
    return rewritten
