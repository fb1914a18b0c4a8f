"""Lightning callbacks and process-level guards around a fit: checkpoints, preemption, NaN detection.

* ``PREEMPTION`` (``PreemptionGuard``) turns SIGTERM and SIGUSR1 into a clean stop. While a fit trains,
  a signal only sets a flag; ``CheckpointCallback`` sees it at the end of the current iteration,
  writes a checkpoint and raises ``Preempted`` (exit status ``EXIT_PREEMPTED``, summary status
  ``preempted``; rerun with ``resume=true``). Outside training (loading, stage caching, evaluation)
  the signal raises ``Preempted`` at once: nothing there is worth saving, the last checkpoint stands.
* ``CheckpointCallback`` writes a checkpoint every ``trainer.checkpoint_every`` iterations and at the
  end of the RL fit, never from an iteration that had a numerical fault, never with non-finite weights.
* ``metric_faults`` says which of an iteration's metrics make it a numerical fault (NaN/inf loss,
  reward, cost or lambda); diagnostics such as ``losses/explained_variance`` may be NaN legitimately.
* ``StageProgressBar``: Lightning's rich bar (count, elapsed, ETA) named after the running stage (``sft``,
  ``reward_model``, ``waltzrl_warmup``, ``rl``) and the component's ``progress_label()`` when it has one
  (TriPlay: its round and phase); quiet off a terminal (``alignbench.utils.progress``).
"""

from __future__ import annotations

import math
import signal
import threading
from contextlib import contextmanager
from typing import Any, Iterator

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar

from alignbench.errors import NumericalFaultError, Preempted
from alignbench.training.checkpoint import CheckpointManager, non_finite_entries

PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

# ----------------------------------------------------------------------------- numerical faults
#: metric leaves (the part after the last '/') that must be finite: losses, rewards, costs, lambda
_FAULT_LEAVES = ("reward", "episode_cost", "cost", "lambda", "J_C")
#: diagnostics that may be NaN without anything being wrong (e.g. a constant-return batch)
_DIAGNOSTIC_MARKERS = ("explained_variance", "timing/", "perf/")


def is_fault_metric(key: str) -> bool:
    if any(marker in key for marker in _DIAGNOSTIC_MARKERS):
        return False
    leaf = key.rsplit("/", 1)[-1]
    return leaf.endswith("loss") or leaf in _FAULT_LEAVES or leaf.endswith("_reward")


def metric_faults(metrics: dict[str, Any]) -> list[str]:
    """Keys of ``metrics`` that are losses/rewards/costs/lambda and not finite."""
    bad = []
    for key, value in metrics.items():
        if value is None or not is_fault_metric(key):
            continue
        try:
            finite = math.isfinite(float(value))
        except (TypeError, ValueError):
            continue
        if not finite:
            bad.append(key)
    return bad


# ----------------------------------------------------------------------------- preemption
class PreemptionGuard:
    """SIGTERM/SIGUSR1 handling for one process (see module docstring)."""

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
        return signal.Signals(self.received).name if self.received is not None else "none"

    def reset(self) -> None:
        self.received = None

    def _handler(self, signum, frame) -> None:  # noqa: ARG002 - signal handler signature
        self.received = signum
        if not self._deferred:
            raise Preempted(f"received {signal.Signals(signum).name} outside training; no checkpoint needed "
                            f"(the last one stands): rerun with resume=true", signal_name=signal.Signals(signum).name)

    @contextmanager
    def installed(self) -> Iterator["PreemptionGuard"]:
        """Handle the preemption signals for the duration of the block (main thread only)."""
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        if not self._installed:
            self.reset()
            self._previous = {int(s): signal.getsignal(s) for s in PREEMPTION_SIGNALS}
            for sig in PREEMPTION_SIGNALS:
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


# ----------------------------------------------------------------------------- checkpoints
class CheckpointCallback(L.Callback):
    """Periodic, final and preemption checkpoints of an ``AlignmentModule`` fit."""

    def __init__(self, manager: CheckpointManager, every: int, *, final: bool, guard: PreemptionGuard = PREEMPTION,
                 extra: dict[str, Any] | None = None) -> None:
        self.manager = manager
        self.every = int(every or 0)
        self.final = final
        self.guard = guard
        self.extra = dict(extra or {})
        self.pending = False  # a checkpoint was due at a faulty iteration: write it at the next good one

    def save(self, module) -> str:
        state = module.checkpoint_state()
        bad = non_finite_entries({"roles": state["roles"], "component": state["component"]})
        if bad:
            raise NumericalFaultError(
                f"stage '{module.stage}' iteration {module.iteration}: non-finite values in {', '.join(bad)}; "
                f"not checkpointed, last good checkpoint: {self.manager.last_saved or 'none'}")
        state.update(self.extra)
        path = self.manager.save(state, module.iteration)
        module.last_checkpoint = str(path)
        module.saved_iteration = module.iteration
        self.pending = False
        return str(path)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ARG002
        module = pl_module
        total = module.component.num_iterations
        due = self.pending or (self.every > 0 and module.iteration % self.every == 0) or (
            self.final and module.iteration >= total)
        preempt = self.guard.requested
        if not trainer.is_global_zero:
            due = False
        if (due or preempt) and trainer.is_global_zero:
            if module.last_iteration_faulty:
                self.pending = due
            else:
                self.save(module)
        if preempt:
            raise self.preempted(module)

    def preempted(self, module) -> Preempted:
        saved = module.last_checkpoint
        where = (f"checkpoint {saved} (iteration {module.saved_iteration}/{module.component.num_iterations} of "
                 f"stage '{module.stage}')" if saved else "no checkpoint yet (the run restarts from the beginning)")
        return Preempted(f"received {self.guard.signal_name} during training; {where}; rerun the same command "
                         f"with resume=true to continue", signal_name=self.guard.signal_name, checkpoint=saved)


# ----------------------------------------------------------------------------- progress
class StageProgressBar(RichProgressBar):
    """Lightning's rich bar labelled with the stage and the component's phase (module docstring)."""

    def __init__(self) -> None:
        from alignbench.utils.progress import progress_enabled

        super().__init__(leave=False)
        if not progress_enabled():
            self.disable()

    def _get_train_description(self, current_epoch: int) -> str:
        module = self.trainer.lightning_module
        stage = str(getattr(module, "stage", "training"))
        label = getattr(getattr(module, "component", None), "progress_label", None)
        return f"{stage} · {label()}" if callable(label) else stage

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self.progress is not None and self.train_progress_bar_id is not None and self.is_enabled:
            self.progress.update(self.train_progress_bar_id, description=self._get_train_description(0))
