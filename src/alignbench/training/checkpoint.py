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
leaves the previous complete ``last.ckpt`` in place; the numbered copy is a hard link made after. A
write that fails (full disk, read-only directory) raises ``StorageError`` naming the file.

Every checkpoint carries ``checksum``, a SHA-256 over its whole content (every tensor's bytes, dtype and
shape, every number and string, in order), recomputed on load: flipped bits that still unpickle are
caught. Under DDP it also holds each other rank's own state (``ranks``) and the ``world_size``, and
every checkpoint records the data it trained on (``data_fingerprint``): resuming on changed data is
refused, as is resuming with another config.

Reads use ``torch.load(weights_only=True)``: tensors, numbers, strings and containers only (plus
numpy arrays, allowed explicitly below); a file that would need any other class to unpickle is refused
instead of executing it. A truncated or corrupted file raises ``CorruptCheckpointError`` naming it;
``find_resume_state`` then falls back to the newest intact checkpoint (hard links of the bad file
skipped), saying so.
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
from alignbench.utils.distributed import is_rank_zero

FORMAT = "alignbench-checkpoint"
VERSION = 1
DIRNAME = "checkpoints"
LAST = "last.ckpt"
KEEP = 3  # numbered checkpoints kept besides last.ckpt
_NUMBERED = re.compile(r"^iteration-(\d+)\.ckpt$")
#: config groups whose change makes a checkpoint belong to a different run
FINGERPRINT_GROUPS = ("algo", "model", "data", "stages", "seed")


class CorruptCheckpointError(CheckpointError):
    """A checkpoint file that cannot be read back as it was written (truncated, flipped bits)."""

    def __init__(self, message: str, path: Path) -> None:
        super().__init__(message)
        self.path = path


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


def on_cpu(value: Any) -> Any:
    """``value`` with every nested tensor moved to the CPU (what one rank sends another through a pickle:
    a CUDA tensor would unpickle onto the sender's device index)."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, dict):
        return {key: on_cpu(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(on_cpu(item) for item in value)
    return value


def non_finite_entries(value: Any, limit: int = 3) -> list[str]:
    """Key paths of floating-point tensors (and floats) holding NaN or inf, at most ``limit``."""
    bad: list[str] = []
    for key, tensor in iter_tensors(value):
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad.append(key)
            if len(bad) >= limit:
                break
    return bad


# ----------------------------------------------------------------------------- checksums
def _feed(digest, value: Any) -> None:
    """Feed ``value`` into ``digest`` with its structure: types, lengths, keys, dtypes, shapes, bytes."""
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous().reshape(-1)
        digest.update(f"T{tensor.dtype}{tuple(value.shape)};".encode())
        digest.update(tensor.view(torch.uint8).numpy().data if tensor.numel() else b"")
    elif isinstance(value, dict):
        digest.update(f"D{len(value)};".encode())
        for key, item in value.items():
            _feed(digest, key)
            _feed(digest, item)
    elif isinstance(value, (list, tuple)):
        digest.update(f"{'L' if isinstance(value, list) else 'U'}{len(value)};".encode())
        for item in value:
            _feed(digest, item)
    elif hasattr(value, "tobytes") and hasattr(value, "dtype") and hasattr(value, "shape"):  # numpy arrays
        digest.update(f"A{value.dtype}{tuple(value.shape)};".encode())
        digest.update(value.tobytes())
    else:
        digest.update(f"{type(value).__name__}:{value!r};".encode())


def content_checksum(state: dict[str, Any]) -> str:
    """SHA-256 of a checkpoint's content, everything but its own ``checksum`` entry."""
    digest = hashlib.sha256()
    _feed(digest, {key: value for key, value in state.items() if key != "checksum"})
    return digest.hexdigest()


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
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        # torch's zip writer reports a failed write (a full disk) as RuntimeError("... unexpected pos ...")
        if isinstance(exc, (OSError, RuntimeError)):
            from alignbench.utils.files import write_failure

            raise write_failure(path, exc, "checkpoint") from None
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

    def distinct(self) -> list[Path]:
        """``existing()`` newest first, one name per file (a numbered hard link of ``last.ckpt`` is the same
        file: listing both would offer the same bytes twice)."""
        seen, out = set(), []
        for path in [self.last_path] + [p for _, p in reversed(self.numbered())]:
            try:
                info = path.stat()
            except OSError:
                continue
            if (info.st_dev, info.st_ino) not in seen:
                seen.add((info.st_dev, info.st_ino))
                out.append(path)
        return out

    def save(self, state: dict[str, Any], iteration: int) -> Path:
        """Write ``state`` (with its checksum) as the new ``last.ckpt`` (atomically) and link it as
        ``iteration-N.ckpt``."""
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            from alignbench.utils.files import write_failure

            raise write_failure(self.directory, exc, "checkpoint directory") from None
        state["checksum"] = content_checksum(state)
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


def load_checkpoint(path: str | os.PathLike, *, verify: bool = True) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; ``CheckpointError`` naming the file on any problem
    (``CorruptCheckpointError`` when it is truncated or its checksum does not match). ``verify=False``
    maps the tensors lazily and skips the checksum: for reading a checkpoint's metadata only."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with torch.serialization.safe_globals(_safe_globals()):
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=not verify)
    except Exception as exc:  # noqa: BLE001 - truncated, corrupted or unsafe: all mean "cannot use this file"
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        # a pickle that names a class to construct (os.system, ...) is hostile or foreign; anything else
        # that fails (random bytes, a cut-off zip) is damage
        if re.search(r"unsupported GLOBAL|Unsupported global", str(exc)):
            raise CheckpointError(f"checkpoint {path} holds objects that are not plain tensors/numbers (refused: "
                                  f"loading it would run arbitrary code; {type(exc).__name__}: {reason})") from None
        raise CorruptCheckpointError(f"checkpoint {path} is truncated or corrupted ({type(exc).__name__}: "
                                     f"{reason})", path) from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {path} was not written by alignbench (no '{FORMAT}' marker)")
    if int(state.get("version", 0)) > VERSION:
        raise CheckpointError(f"checkpoint {path} has format version {state.get('version')}, newer than this "
                              f"alignbench ({VERSION})")
    if verify and "checksum" in state:  # checkpoints of older alignbench versions have none
        found = content_checksum(state)
        if found != state["checksum"]:
            raise CorruptCheckpointError(f"checkpoint {path} is corrupted (content checksum {found[:12]}, recorded "
                                         f"{str(state['checksum'])[:12]}: its bytes changed after it was written)",
                                         path)
    return state


def check_compatible(state: dict[str, Any], path: Path, *, stage: str, fingerprint: dict[str, str],
                     num_iterations: int | None, data_fingerprint: str | None = None) -> None:
    """Refuse a checkpoint of another stage, another config, other data or another schedule length.

    ``num_iterations=None`` skips the length check (the caller checks it after the component has
    loaded its state, for components whose schedule depends on it); ``data_fingerprint=None`` the data
    check (so do checkpoints of older versions, which did not record it)."""
    if state.get("stage") != stage:
        raise CheckpointError(f"checkpoint {path} belongs to stage '{state.get('stage')}', not '{stage}'")
    saved = state.get("fingerprint") or {}
    changed = [g for g in FINGERPRINT_GROUPS if saved.get(g) != fingerprint.get(g)]
    if changed:
        raise CheckpointError(
            f"checkpoint {path} was written with a different config ({', '.join(changed)} changed); resume with "
            f"the same settings, or start a new run in a new hydra.run.dir")
    saved_data = state.get("data_fingerprint")
    if data_fingerprint is not None and saved_data is not None and saved_data != data_fingerprint:
        raise CheckpointError(
            f"checkpoint {path} was trained on other data (data fingerprint {saved_data}, the data now gives "
            f"{data_fingerprint}): the contents behind data.path changed since; restore them, or start a new run "
            f"in a new hydra.run.dir")
    if num_iterations is not None and int(state.get("num_iterations", -1)) != int(num_iterations):
        raise CheckpointError(
            f"checkpoint {path} is for a run of {state.get('num_iterations')} iterations, this run has "
            f"{num_iterations}; resume with the same schedule")


def _earlier_run(directory: Path, path: Path) -> CheckpointError:
    return CheckpointError(f"{directory} already holds checkpoints of an earlier run ({path.name}) and resume=false; "
                           f"rerun with resume=auto to continue from it, or use a new hydra.run.dir")


def preflight_resume(output_dir: str | os.PathLike, *, resume: bool, fingerprint: dict[str, str],
                     data_fingerprint: str | None) -> None:
    """Before anything trains, refuse what the fits would refuse later: checkpoints under
    ``<output_dir>/checkpoints`` (any stage) with ``resume=false``, or of another config or other data.
    Reads metadata only (tensors mapped lazily, no checksum); corrupted files are left to the fits'
    fallback."""
    root = Path(output_dir) / DIRNAME
    if not root.is_dir():
        return
    for directory in [root, *sorted(p for p in root.iterdir() if p.is_dir())]:
        candidates = CheckpointManager(directory).distinct()
        if candidates and not resume:
            raise _earlier_run(directory, candidates[0])
        for path in candidates:
            try:
                state = load_checkpoint(path, verify=False)
            except CorruptCheckpointError:
                continue
            check_compatible(state, path, stage=str(state.get("stage")), fingerprint=fingerprint,
                             num_iterations=None, data_fingerprint=data_fingerprint)
            break


def check_world_size(state: dict[str, Any], path: Path, world_size: int) -> None:
    """Refuse to continue a checkpoint written by another number of DDP ranks: each rank's own state
    (cost window, generators, RNG) has no counterpart. A finished checkpoint only lends its weights."""
    saved = int(state.get("world_size", 1))
    if saved != int(world_size) and int(state["iteration"]) < int(state["num_iterations"]):
        raise CheckpointError(
            f"checkpoint {path} was written by {saved} DDP rank(s), this run has {world_size}: each rank's own state "
            f"(cost window, generators, RNG) would not match; resume with {saved} rank(s) (trainer.devices x "
            f"trainer.num_nodes)")


def find_resume_state(directory: Path, *, resume: bool, stage: str, fingerprint: dict[str, str],
                      num_iterations: int | None, data_fingerprint: str | None = None
                      ) -> tuple[dict[str, Any] | None, Path | None]:
    """The checkpoint a fit resumes from: ``(state, path)``, or ``(None, None)`` to start fresh.

    With ``resume=false`` a directory that already holds checkpoints is an error (rerunning into the
    same ``hydra.run.dir`` would silently overwrite them). A corrupted newest checkpoint falls back to
    the newest intact one, with a line saying so; a checkpoint of another config or other data is an
    error (never a fallback: the older ones belong to the same run).
    """
    manager = CheckpointManager(directory)
    manager.clean_temporary()
    candidates = manager.distinct()
    if not resume:
        if candidates:
            raise _earlier_run(directory, candidates[0])
        return None, None
    corrupt: list[CorruptCheckpointError] = []
    for path in candidates:
        try:
            state = load_checkpoint(path)
        except CorruptCheckpointError as exc:
            corrupt.append(exc)
            continue
        if corrupt and is_rank_zero():  # every DDP rank falls back alike; rank 0 says so
            print(f"alignbench: {corrupt[0]}; resuming from the newest intact checkpoint, {path} (iteration "
                  f"{state.get('iteration')})", flush=True)
        check_compatible(state, path, stage=stage, fingerprint=fingerprint, num_iterations=num_iterations,
                         data_fingerprint=data_fingerprint)
        return state, path
    if corrupt:
        others = ", ".join(exc.path.name for exc in corrupt[1:])
        also = f"; so are the other checkpoints there ({others})" if others else ""
        raise CorruptCheckpointError(f"{corrupt[0]}{also}; no intact checkpoint is left in {directory}: delete it "
                                     f"to start over", corrupt[0].path)
    return None, None


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
