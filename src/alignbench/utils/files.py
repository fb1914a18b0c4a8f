"""Files a job owns: exclusive locks that say who holds them, and writes that fail with one line.

``HeldLock`` is an ``fcntl.flock`` on a file that also records its holder (pid, host, what for, since
when). The kernel drops the lock when the holder dies, SIGKILL included, so a lock is never stale; the
recorded holder is only read to say who is in the way:

* the run-directory lock (``<output_dir>/.alignbench.lock``): one live job per run directory. A second
  process is refused at once (``RunDirBusyError`` naming the holder's pid), instead of both writing
  the same checkpoints and ``history.jsonl``.
* the stage-cache lock (one per entry): a job waits for another job training the same stage, and says whom it waits for.

``write_failure`` turns a failed write (read-only directory, full disk, quota) into a ``StorageError``
naming the path, the reason and the free space left there. ``WritableRunDir`` (a Hydra callback in
``conf/hydra/default.yaml``) checks the run or sweep directory before Hydra writes into it, so an
unwritable one is one line (exit 2) instead of Hydra's traceback.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from alignbench.errors import RunDirBusyError, StorageError

#: errno values that mean "this place cannot be written" (not a bug in alignbench)
STORAGE_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EFBIG}
RUN_DIR_LOCK = ".alignbench.lock"


def _free_space(path: Path) -> str:
    for folder in (path, *path.parents):
        try:
            free = shutil.disk_usage(folder).free
        except OSError:
            continue
        return f"{free / 2**20:.0f} MB free there"
    return "free space unknown"


def write_failure(path: str | os.PathLike, exc: BaseException, what: str = "file") -> StorageError:
    """A one-line ``StorageError`` for a failed write of ``path`` (to raise ``from None``)."""
    path = Path(path)
    if isinstance(exc, OSError) and exc.strerror:
        reason = exc.strerror
    elif re.search(r"unexpected pos|failed writing|write failed", str(exc)):  # torch's zip writer, cut short
        reason = "the write stopped before the end of the file"
    else:
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[-1][:160]
    return StorageError(f"cannot write {what} {path}: {reason} ({_free_space(path.parent)}); free some space or "
                        f"choose a writable place (hydra.run.dir=..., ALIGNBENCH_CACHE=...)")


def is_storage_error(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in STORAGE_ERRNOS


class HeldLock:
    """An exclusive ``flock`` on ``path`` that records its holder (see module docstring)."""

    def __init__(self, path: str | os.PathLike, purpose: str) -> None:
        self.path = Path(path)
        self.purpose = purpose
        self._handle: Any = None

    def holder(self) -> dict[str, Any]:
        """What the current holder wrote into the lock file (empty when unreadable)."""
        try:
            return json.loads(self.path.read_text() or "{}")
        except (OSError, ValueError):
            return {}

    def describe_holder(self) -> str:
        info = self.holder()
        if not info:
            return "another process"
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(info.get("since", 0))))
        return f"pid {info.get('pid')} on {info.get('host')} ({info.get('purpose')}, since {since})"

    def acquire(self, *, wait: bool) -> bool:
        """Take the lock; ``wait=False`` returns False at once when another process holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            handle.close()
            return False
        except BaseException:
            handle.close()
            raise
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "purpose": self.purpose,
                                 "since": time.time()}))
        handle.flush()
        self._handle = handle
        return True

    def release(self) -> None:
        if self._handle is not None:
            try:
                self._handle.seek(0)
                self._handle.truncate()
            except OSError:
                pass
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def __enter__(self) -> "HeldLock":
        if not self.acquire(wait=False):  # say whom we wait for, then wait
            print(f"alignbench: waiting for {self.path} ({self.purpose}), held by {self.describe_holder()}",
                  file=sys.stderr, flush=True)
            self.acquire(wait=True)
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def lock_run_dir(output_dir: str | os.PathLike) -> HeldLock:
    """Take ``<output_dir>/.alignbench.lock`` for this job, or raise ``RunDirBusyError`` naming its holder."""
    lock = HeldLock(Path(output_dir) / RUN_DIR_LOCK, f"job in {output_dir}")
    try:
        acquired = lock.acquire(wait=False)
    except OSError as exc:
        if is_storage_error(exc):
            raise write_failure(lock.path, exc, "lock file") from None
        raise
    if not acquired:
        raise RunDirBusyError(f"{output_dir} is in use by another alignbench job, {lock.describe_holder()}; "
                              f"wait for it to end or use another hydra.run.dir")
    return lock


def check_writable(directory: str | os.PathLike, what: str) -> None:
    """Create ``directory`` and write a probe file into it; ``StorageError`` naming it otherwise."""
    directory = Path(directory)
    probe = directory / f".alignbench-probe.{os.getpid()}"
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise write_failure(directory, exc, what) from None


class WritableRunDir(Callback):
    """Hydra callback: stop with one line (exit 2) when the run or sweep directory cannot be written."""

    @staticmethod
    def _check(config: Any, key: str, what: str) -> None:
        try:
            check_writable(str(config.hydra[key].dir), what)
        except StorageError as exc:
            print(f"alignbench: error: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(2) from None  # not an Exception: Hydra would print it as a traceback

    def on_run_start(self, config: Any, **kwargs: Any) -> None:
        self._check(config, "run", "run directory (hydra.run.dir)")

    def on_multirun_start(self, config: Any, **kwargs: Any) -> None:
        self._check(config, "sweep", "sweep directory (hydra.sweep.dir)")
