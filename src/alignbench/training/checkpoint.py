"""Training checkpoints: what they hold, how they are written atomically and read safely.

Layout (``trainer.checkpoint_every=K``)::

    <output_dir>/checkpoints/last.ckpt                the newest complete checkpoint of the RL fit
    <output_dir>/checkpoints/iteration-000040.ckpt    numbered copies (hard links), the last KEEP kept
    <output_dir>/checkpoints/<stage>/...              same, for a shared stage (sft, reward_model, ...)
                                                      while it trains; removed once the stage is cached

A checkpoint is one ``torch.save`` dict (see ``AlignmentModule.checkpoint_state``): the trainable roles
only (adapters, heads, trained copies — never the frozen base), every optimiser's and scheduler's state,
the component's own ``state_dict`` (Lagrange multiplier and its cost window, generators, counters,
phase, pools), the data position (batches consumed), the RNG states (torch CPU/CUDA, python, numpy),
the metrics sink's step and last values, and a fingerprint of the config it belongs to.

Writes are atomic: the bytes go to a hidden temporary file in the same directory, are fsync'ed and then
``os.replace``d onto ``last.ckpt``, so a process killed at any moment (SIGKILL mid-save included)
leaves the previous complete ``last.ckpt`` in place; the numbered copy is a hard link made after.

Reads use ``torch.load(weights_only=True)``: tensors, numbers, strings and containers only (plus
numpy arrays, allowed explicitly below); a file that would need any other class to unpickle is refused
instead of executing it. A truncated or corrupted file raises ``CheckpointError`` naming it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
from pathlib import Path
from typing import Any, Iterator

import torch
from omegaconf import OmegaConf

from alignbench.errors import CheckpointError

FORMAT = "alignbench-checkpoint"
VERSION = 1
DIRNAME = "checkpoints"
LAST = "last.ckpt"
KEEP = 3  # numbered checkpoints kept besides last.ckpt
_NUMBERED = re.compile(r"^iteration-(\d+)\.ckpt$")
#: config groups whose change makes a checkpoint belong to a different run
FINGERPRINT_GROUPS = ("algo", "model", "data", "stages", "seed")


def checkpoint_dir(output_dir: str | os.PathLike, stage: str) -> Path:
    """``<output_dir>/checkpoints`` for the RL fit, ``<output_dir>/checkpoints/<stage>`` for the others."""
    root = Path(output_dir) / DIRNAME
    return root if stage == "rl" else root / stage


def config_fingerprint(raw_cfg) -> dict[str, str]:
    """Per-group hashes of the config that determines training (``FINGERPRINT_GROUPS``).

    Settings that may change between a run and its resume (trainer threads, ``checkpoint_every``,
    logger, evaluation, ``max_nan_steps``, output paths) are not part of it.
    """
    out: dict[str, str] = {}
    for group in FINGERPRINT_GROUPS:
        node = raw_cfg.get(group) if raw_cfg is not None else None
        value = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
        payload = json.dumps(value, sort_keys=True, default=str)
        out[group] = hashlib.sha256(payload.encode()).hexdigest()[:16]
    return out


# ----------------------------------------------------------------------------- RNG states
def capture_rng() -> dict[str, Any]:
    """Every global RNG a training step may draw from, in a weights_only-loadable form."""
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    try:
        import numpy as np

        kind, keys, pos, has_gauss, cached = np.random.get_state()
        state["numpy"] = {"kind": kind, "keys": torch.from_numpy(keys.astype("int64")), "pos": int(pos),
                          "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    except ImportError:  # pragma: no cover - numpy is a dependency
        pass
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        import numpy as np

        numpy_state = state["numpy"]
        np.random.set_state((numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32),
                             numpy_state["pos"], numpy_state["has_gauss"], numpy_state["cached_gaussian"]))


# ----------------------------------------------------------------------------- safety checks
def iter_tensors(value: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """(key path, tensor) for every tensor nested in dicts, lists and tuples."""
    if isinstance(value, torch.Tensor):
        yield prefix, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from iter_tensors(item, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from iter_tensors(item, f"{prefix}[{index}]")


def non_finite_entries(value: Any, limit: int = 3) -> list[str]:
    """Key paths of floating-point tensors (and floats) holding NaN or inf, at most ``limit``."""
    bad: list[str] = []
    for key, tensor in iter_tensors(value):
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad.append(key)
            if len(bad) >= limit:
                break
    return bad


# ----------------------------------------------------------------------------- writing
def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - not every filesystem allows it
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` into a temporary file next to ``path``, fsync, then rename onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


class CheckpointManager:
    """Writes ``last.ckpt`` + numbered copies into one directory and finds the newest one."""

    def __init__(self, directory: str | os.PathLike, keep: int = KEEP) -> None:
        self.directory = Path(directory)
        self.keep = keep
        self.last_saved: Path | None = None

    @property
    def last_path(self) -> Path:
        return self.directory / LAST

    def numbered(self) -> list[tuple[int, Path]]:
        if not self.directory.is_dir():
            return []
        found = [(int(m.group(1)), p) for p in self.directory.iterdir() if (m := _NUMBERED.match(p.name))]
        return sorted(found)

    def existing(self) -> list[Path]:
        """Complete checkpoint files in the directory (temporary leftovers excluded)."""
        files = [p for _, p in self.numbered()]
        return ([self.last_path] if self.last_path.exists() else []) + files

    def latest(self) -> Path | None:
        """``last.ckpt``, or the highest numbered checkpoint when it is missing; None when there is none."""
        if self.last_path.exists():
            return self.last_path
        numbered = self.numbered()
        return numbered[-1][1] if numbered else None

    def clean_temporary(self) -> None:
        """Remove temporary files of saves that were killed half-way (never complete checkpoints)."""
        if self.directory.is_dir():
            for path in self.directory.glob(".*.tmp"):
                path.unlink(missing_ok=True)

    def save(self, state: dict[str, Any], iteration: int) -> Path:
        """Write ``state`` as the new ``last.ckpt`` (atomically) and link it as ``iteration-N.ckpt``."""
        self.directory.mkdir(parents=True, exist_ok=True)
        atomic_save(state, self.last_path)
        numbered = self.directory / f"iteration-{iteration:06d}.ckpt"
        tmp = self.directory / f".{numbered.name}.{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)
        try:
            os.link(self.last_path, tmp)
        except OSError:  # filesystems without hard links: a copy
            import shutil

            shutil.copyfile(self.last_path, tmp)
        os.replace(tmp, numbered)
        for _, old in self.numbered()[:-self.keep] if self.keep > 0 else []:
            old.unlink(missing_ok=True)
        self.last_saved = self.last_path
        return self.last_path

    def remove_all(self) -> None:
        for path in self.existing():
            path.unlink(missing_ok=True)
        self.clean_temporary()
        try:
            self.directory.rmdir()
        except OSError:
            pass


# ----------------------------------------------------------------------------- reading
def _safe_globals() -> list[Any]:
    """Classes a checkpoint may need besides tensors and builtins: numpy arrays and scalars only."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        return []
    allowed: list[Any] = [np.ndarray, np.dtype]
    try:
        allowed.append(np._core.multiarray._reconstruct)  # numpy >= 2
        allowed.append(np._core.multiarray.scalar)
    except AttributeError:  # pragma: no cover - numpy 1.x
        allowed.append(np.core.multiarray._reconstruct)
        allowed.append(np.core.multiarray.scalar)
    allowed += [type(np.dtype(name)) for name in ("float64", "float32", "int64", "int32", "uint32", "bool")]
    return allowed


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; ``CheckpointError`` naming the file on any problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated, corrupted or unsafe: all mean "cannot use this file"
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        unsafe = "weights_only" in str(exc) or "Unsupported global" in str(exc)
        what = ("holds objects that are not plain tensors/numbers (refused: loading it would run arbitrary code)"
                if unsafe else "is truncated or corrupted")
        others = [p.name for p in CheckpointManager(path.parent).existing() if p != path]
        hint = (f"delete it to resume from an earlier one ({', '.join(others[-2:])})" if others
                else "delete it and rerun with resume=false to start over")
        raise CheckpointError(f"checkpoint {path} {what} ({type(exc).__name__}: {reason}); {hint}") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} was not written by alignbench (no '{FORMAT}' marker)")
    if int(state.get("version", 0)) > VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {state.get('version')}, newer than this "
                              f"alignbench ({VERSION})")
    return state


def check_compatible(state: dict[str, Any], path: Path, *, stage: str, fingerprint: dict[str, str],
                     num_iterations: int | None) -> None:
    """Refuse a checkpoint of another stage, another config or another schedule length.

    ``num_iterations=None`` skips the length check (the caller checks it after the component has
    loaded its state, for components whose schedule depends on it)."""
    if state.get("stage") != stage:
        raise CheckpointError(f"checkpoint {path} belongs to stage '{state.get('stage')}', not '{stage}'")
    saved = state.get("fingerprint") or {}
    changed = [g for g in FINGERPRINT_GROUPS if saved.get(g) != fingerprint.get(g)]
    if changed:
        raise CheckpointError(
            f"checkpoint {path} was written with a different config ({', '.join(changed)} changed); resume with "
            f"the same settings, or start a new run (resume=false and a new hydra.run.dir)")
    if num_iterations is not None and int(state.get("num_iterations", -1)) != int(num_iterations):
        raise CheckpointError(
            f"checkpoint {path} is for a run of {state.get('num_iterations')} iterations, this run has "
            f"{num_iterations}; resume with the same schedule")


def find_resume_state(directory: Path, *, resume: bool, stage: str, fingerprint: dict[str, str],
                      num_iterations: int | None) -> tuple[dict[str, Any] | None, Path | None]:
    """The checkpoint a fit resumes from: ``(state, path)``, or ``(None, None)`` to start fresh.

    With ``resume=false`` a directory that already holds checkpoints is an error (rerunning into the
    same ``hydra.run.dir`` without ``resume=true`` would silently overwrite them).
    """
    manager = CheckpointManager(directory)
    manager.clean_temporary()
    path = manager.latest()
    if not resume:
        if path is not None:
            raise CheckpointError(
                f"{directory} already holds checkpoints of an earlier run ({path.name}); rerun with resume=true "
                f"to continue from it, or use a new hydra.run.dir")
        return None, None
    if path is None:
        return None, None
    state = load_checkpoint(path)
    check_compatible(state, path, stage=stage, fingerprint=fingerprint, num_iterations=num_iterations)
    return state, path


# ----------------------------------------------------------------------------- metrics history
def rewind_history(history_file: str | os.PathLike, stage: str, iteration: int) -> int:
    """Drop rows of ``stage`` logged after ``iteration`` (an interrupted run logged them past its
    last checkpoint; the resumed run logs them again). Returns the number of rows removed.

    The file is truncated in place, so a sink that holds it open in append mode keeps working.
    """
    path = Path(history_file)
    if not path.exists():
        return 0
    lines = path.read_bytes().splitlines(keepends=True)
    kept, removed = [], 0
    for line in lines:
        try:
            row = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            removed += 1  # a half-written last line of a killed process
            continue
        if row.get("stage") == stage and int(row.get("iteration", 0)) > iteration:
            removed += 1
            continue
        kept.append(line if line.endswith(b"\n") else line + b"\n")
    if removed:
        with open(path, "r+b") as handle:
            data = b"".join(kept)
            handle.seek(0)
            handle.write(data)
            handle.truncate(len(data))
    return removed


def last_history_step(history_file: str | os.PathLike) -> int:
    """The largest ``step`` in a history file (0 when there is none)."""
    path = Path(history_file)
    step = 0
    if path.exists():
        for line in path.read_bytes().splitlines():
            try:
                value = json.loads(line).get("step", 0)
            except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
                continue
            if isinstance(value, (int, float)) and math.isfinite(value):
                step = max(step, int(value))
    return step
