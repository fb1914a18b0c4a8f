"""Shared pipeline stages (SFT, reward model, cost model), trained once and cached by config.

Every entry also records what training it cost (``compute.json``, the ``models.compute`` counts of its
phase): a job that loads the stage adds that record to its own compute, so every job's total counts the
stages it builds on whether it trained them or not.

A stage's cache key hashes everything that determines its weights: the model and data configs, the
stage's own settings, ``stages.seed``, the numeric precision it trains in (``trainer.precision``:
a bf16-mixed stage is not an fp32 one) and the keys of the stages it builds on. A sweep over RL settings
(or RL seeds) therefore trains the SFT, reward and cost models once and every job loads them. Entries
are written to a temporary directory and renamed into place, so a job killed mid-save never leaves a
half-written entry, and concurrent jobs take a file lock per entry (``stages/.<key>.lock``): a job
waits only for another job training the same stage (and says which process holds it), never for one
training a different stage. A write that fails (full disk) raises ``StorageError`` naming the entry.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from omegaconf import OmegaConf
from safetensors.torch import load_file, save_file

from alignbench.errors import CheckpointError
from alignbench.models.compute import METER

STAGE_ORDER = ("sft", "reward_model", "cost_model", "label_model")
# 2: entries record their training compute (compute.json)
CACHE_VERSION = 2
COMPUTE_FILE = "compute.json"


def stage_key(stage: str, raw_cfg, prior: list[str], data_fingerprint: str = "", settings: Any = None) -> str:
    """Hash of the config that determines a stage's weights (see module docstring).

    ``data_fingerprint`` is the hash of the training data itself (``DataBundle.fingerprint``), so a change
    in generated data retrains. ``settings`` replaces ``stages.<stage>`` for stages configured elsewhere
    (a component's warm-up).
    """
    payload = {
        "version": CACHE_VERSION,
        "stage": stage,
        "model": OmegaConf.to_container(raw_cfg.model, resolve=True),
        "data": OmegaConf.to_container(raw_cfg.data, resolve=True),
        "settings": OmegaConf.to_container(raw_cfg.stages[stage], resolve=True) if settings is None else settings,
        "seed": int(raw_cfg.stages.seed),
        "precision": str(raw_cfg.trainer.precision),
        "prior": prior,
        "data_fingerprint": data_fingerprint,
    }
    digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return f"{stage}-{digest}"


def load_entry(entry: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    weights = entry / "weights.safetensors"
    try:
        return load_file(str(weights)), json.loads((entry / "metrics.json").read_text())
    except Exception as exc:  # noqa: BLE001 - any read failure is a corrupt entry
        raise CheckpointError(f"stage cache entry {entry} is unreadable ({type(exc).__name__}: {exc}); "
                              f"delete it to retrain the stage") from None


def stage_phase(key: str) -> str:
    """The compute phase of a stage: its key without the digest (``sft-1a2b...`` -> ``sft``)."""
    return key.rsplit("-", 1)[0]


def cached_stage(cache_dir: str, key: str, train: Callable[[], tuple[dict[str, torch.Tensor], dict[str, Any]]],
                 reuse: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, Any], bool]:
    """Return ``(weights, metrics, was_cached)``, training and storing the stage on a miss.

    Training runs under the compute phase ``stage_phase(key)`` and its counts are stored with the
    entry; a hit adds the stored counts to the meter instead (module docstring).

    Under DDP every rank must train a missing stage together (``train`` runs a distributed fit), so
    only rank 0 takes the lock (other jobs wait on it, this job's ranks must not) and writes the
    entry, and the hit/miss decision is rank 0's: broadcast once the process group exists; before
    that (a worker re-running the stages its launch interrupted) the worker's own look agrees with
    it, because rank 0 holds the lock, so nobody can write this entry, until the worker has joined.
    """
    from alignbench.utils.distributed import broadcast_object, is_rank_zero, world_size
    from alignbench.utils.files import HeldLock, write_failure

    root = Path(cache_dir) / "stages"
    entry = root / key
    leader = is_rank_zero()
    with HeldLock(root / f".{key}.lock", f"stage cache, {key}") if leader else contextlib.nullcontext():
        hit = broadcast_object(reuse and (entry / "metrics.json").exists() and (entry / COMPUTE_FILE).exists())
        if hit:
            weights, metrics = load_entry(entry)
            METER.add(stage_phase(key), json.loads((entry / COMPUTE_FILE).read_text()), world_size())
            return weights, metrics, True
        with METER.phase(stage_phase(key)) as spent:
            weights, metrics = train()
        if not leader:
            return weights, metrics, False
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{key}."))
        try:
            save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp / "weights.safetensors"))
            (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
            (tmp / COMPUTE_FILE).write_text(json.dumps(METER.record(spent, world_size()), indent=2))
        except Exception as exc:  # noqa: BLE001 - a full disk, whatever safetensors calls it
            shutil.rmtree(tmp, ignore_errors=True)
            raise write_failure(entry, exc, "stage cache entry") from None
        if entry.exists():
            shutil.rmtree(entry)
        os.replace(tmp, entry)
        return weights, metrics, False
