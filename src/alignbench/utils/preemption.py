"""Signals that stop a job cleanly: preemption (SIGTERM, SIGUSR1, SIGUSR2) and Ctrl-C (SIGINT).

``PREEMPTION`` (a ``PreemptionGuard``) is installed by ``alignbench.cli`` before anything heavy is
imported, so a signal at any moment ends in a summary and a one-line message, never a traceback:

* While a fit trains (``deferred``), a signal only records itself. The checkpoint callback asks every
  rank at each iteration end (one all-reduce of the signal number), so all ranks agree at the same
  boundary, rank 0 writes the checkpoint and every rank raises ``Preempted`` (exit 75) or, for
  Ctrl-C, ``Interrupted`` (exit 130). A preemption signal outranks Ctrl-C: the job must be requeued.
* Outside training (loading, stage caching, evaluation) the signal raises at once on rank 0: nothing
  there is worth saving, the last checkpoint stands. A DDP or FSDP worker (rank > 0) never stops on
  its own: it keeps the signal until the ranks agree, or until rank 0 ends the job.
* A second Ctrl-C during training stops at once, without waiting for the iteration to end.
* Nothing here sends a collective from inside a signal handler (Lightning's SIGTERM notifier does,
  which deadlocks against a gradient all-reduce; ``training.callbacks`` keeps it from installing).

SIGUSR2 is submitit's preemption signal (``hydra/launcher=slurm``); when the job runs under a
launcher that had its own handler for the signal (submitit's requeue), ``forward`` hands the signal on
after the checkpoint and summary are written.
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from typing import Any, Iterator

from alignbench.errors import Interrupted, Preempted

#: signals a scheduler sends before it stops a job (SLURM --signal, Kubernetes, submitit's SIGUSR2)
PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
#: Ctrl-C
INTERRUPT_SIGNALS = (signal.SIGINT,)
HANDLED_SIGNALS = PREEMPTION_SIGNALS + INTERRUPT_SIGNALS


def is_worker_process() -> bool:
    """True in a DDP/FSDP worker process (global rank > 0), from the launcher's environment only: a
    signal handler must not import torch (``alignbench.utils.distributed.rank`` reads the same
    variables; several SLURM tasks of one step are ranks by ``SLURM_PROCID``)."""
    if any(int(os.environ.get(name, "0") or 0) > 0 for name in ("RANK", "LOCAL_RANK", "NODE_RANK")):
        return True
    slurm_tasks = int(os.environ.get("SLURM_NTASKS", "0") or 0) if "SLURM_PROCID" in os.environ else 0
    return "RANK" not in os.environ and slurm_tasks > 1 and int(os.environ["SLURM_PROCID"] or 0) > 0


def signal_name(signum: int | None) -> str:
    return signal.Signals(signum).name if signum else "none"


class PreemptionGuard:
    """Preemption and Ctrl-C handling for one process (see module docstring)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._deferred = 0
        self._installed = 0
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        return self.received is not None

    @property
    def signal_name(self) -> str:
        return signal_name(self.received)

    def reset(self) -> None:
        self.received = None

    def record(self, signum: int) -> None:
        """Remember ``signum`` (also one another rank received); a preemption signal outranks Ctrl-C."""
        if self.received is None or (signum in PREEMPTION_SIGNALS and self.received not in PREEMPTION_SIGNALS):
            self.received = int(signum)

    def stop(self, where: str, *, checkpoint: str | None = None) -> Preempted:
        """The exception that ends the job for the recorded signal: ``Interrupted`` for Ctrl-C."""
        cls = Interrupted if self.received in INTERRUPT_SIGNALS else Preempted
        return cls(f"received {self.signal_name} {where}; rerun the same command to continue (resume=auto)",
                   signal_name=self.signal_name, checkpoint=checkpoint)

    def _handler(self, signum, frame) -> None:  # noqa: ARG002 - signal handler signature
        again = self.received == signum
        self.record(signum)
        if self._deferred or is_worker_process():
            if signum in INTERRUPT_SIGNALS and not is_worker_process():
                if again:  # the second Ctrl-C: stop now, the last checkpoint stands
                    raise self.stop("twice during training; stopped at once (the last checkpoint stands)")
                # os.write: print() is not safe inside a signal handler (the main thread may be printing)
                os.write(2, b"\nalignbench: interrupted: stopping at the end of this iteration with a checkpoint "
                            b"(Ctrl-C again to stop at once)\n")
            return
        raise self.stop("outside training; no checkpoint needed (the last one stands)")

    def forward(self) -> None:
        """Hand the recorded preemption signal to the handler installed before ours (submitit's requeue
        under ``hydra/launcher=slurm``); nothing when there was none. It may exit the process."""
        previous = self._previous.get(int(self.received or 0))
        if self.received in PREEMPTION_SIGNALS and callable(previous) and previous is not self._handler:
            previous(self.received, None)

    @contextmanager
    def installed(self) -> Iterator["PreemptionGuard"]:
        """Handle the signals for the duration of the block (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        if not self._installed:
            self.reset()
            self._previous = {int(s): signal.getsignal(s) for s in HANDLED_SIGNALS}
            for sig in HANDLED_SIGNALS:
                signal.signal(sig, self._handler)
        self._installed += 1
        try:
            yield self
        finally:
            self._installed -= 1
            if not self._installed:
                for sig, previous in self._previous.items():
                    signal.signal(sig, previous if previous is not None else signal.SIG_DFL)

    @contextmanager
    def deferred(self) -> Iterator["PreemptionGuard"]:
        """Inside a training loop: a signal only sets ``requested`` (checked at iteration ends)."""
        with self.installed():
            self._deferred += 1
            try:
                yield self
            finally:
                self._deferred -= 1


PREEMPTION = PreemptionGuard()
