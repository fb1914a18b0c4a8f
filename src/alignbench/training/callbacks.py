"""Lightning callbacks and process-level guards around a fit: checkpoints, preemption, NaN detection.

* ``PREEMPTION`` (``alignbench.utils.preemption``) turns SIGTERM, SIGUSR1, SIGUSR2 and Ctrl-C into a clean
  stop. While a fit trains, a signal only sets a flag; at the end of every iteration
  ``CheckpointCallback`` asks all ranks for one (a single all-reduce), so every rank stops at the same
  boundary: rank 0 writes the checkpoint and all raise ``Preempted`` (exit 75, status ``preempted``)
  or ``Interrupted`` (Ctrl-C: exit 130, status ``interrupted``). Lightning's own SIGTERM handler is
  kept out (``setup``): it broadcasts from inside the signal handler, which deadlocks when another rank
  is in the gradient all-reduce.
* ``CheckpointCallback`` writes a checkpoint every ``trainer.checkpoint_every`` iterations and at the
  end of the RL fit, never from an iteration that had a numerical fault, never with non-finite weights.
  Under DDP every rank contributes its own state (``AlignmentModule.rank_state``: the component's
  cost window, generators and pools, the RNG states), gathered into rank 0's file.
* ``metric_faults`` says which of an iteration's metrics make it a numerical fault (NaN/inf loss,
  reward, cost or lambda); diagnostics such as ``losses/<critic>/explained_variance`` may be NaN legitimately.
* ``StageProgressBar``: Lightning's rich bar (count, elapsed, ETA) named after the running stage (``sft``,
  ``reward_model``, ``waltzrl_warmup``, ``rl``) and the component's ``progress_label()`` when it gives one
  (TriPlay: its round and phase); quiet off a terminal (``alignbench.utils.progress``).
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar

from alignbench.errors import CheckpointError, NumericalFaultError, Preempted, StorageError
from alignbench.training import checkpoint as ckpt
from alignbench.training.checkpoint import CheckpointManager, non_finite_entries
from alignbench.utils import distributed
from alignbench.utils.preemption import PREEMPTION, PREEMPTION_SIGNALS, PreemptionGuard  # noqa: F401 - re-exported

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


# ----------------------------------------------------------------------------- checkpoints
class CheckpointCallback(L.Callback):
    """Periodic, final and preemption checkpoints of an ``AlignmentModule`` fit (see module docstring)."""

    def __init__(self, manager: CheckpointManager, every: int, *, final: bool, guard: PreemptionGuard = PREEMPTION,
                 extra: dict[str, Any] | None = None) -> None:
        self.manager = manager
        self.every = int(every or 0)
        self.final = final
        self.guard = guard
        self.extra = dict(extra or {})
        self.pending = False  # a checkpoint was due at a faulty iteration: write it at the next good one

    def setup(self, trainer, pl_module, stage: str) -> None:  # noqa: ARG002
        # Lightning's SIGTERM notifier broadcasts from inside the handler (a deadlock against the
        # gradient all-reduce of another rank) and forwards the signal to the workers; the guard and
        # the agreement at iteration ends replace it. Called before Lightning registers its handlers.
        trainer._signal_connector.register_signal_handlers = lambda: None
        distributed.track_workers(trainer)

    def save(self, module) -> str:
        """Write a checkpoint; a collective under DDP and FSDP (every rank calls it at the same iteration).
        Rank 0 writes the file; under FSDP every rank gathers the sharded weights with it."""
        whole = module.checkpoint_state() if distributed.is_rank_zero() or module.sharded else None
        state = whole if distributed.is_rank_zero() else None  # rank 0 writes the file
        local = module.rank_state() if whole is None else {key: whole[key] for key in module.RANK_STATE_KEYS}
        bad = non_finite_entries(local["component"]) + (non_finite_entries(state["roles"]) if state else [])
        if distributed.max_over_ranks(int(bool(bad))):
            raise NumericalFaultError(
                f"stage '{module.stage}' iteration {module.iteration}: non-finite values in "
                f"{', '.join(bad) or 'the state of another rank'}; not checkpointed, last good checkpoint: "
                f"{self.manager.last_saved or 'none'}")
        gathered = distributed.gather_objects(ckpt.on_cpu(local) if distributed.world_size() > 1 else local)
        outcome: tuple[str | None, str | None, str] = (None, None, "")
        if state is not None:
            state.update(self.extra)
            state["world_size"] = len(gathered)
            state["ranks"] = gathered[1:]  # rank r > 0 resumes from ranks[r - 1]; rank 0 from the top level
            try:
                outcome = (str(self.manager.save(state, module.iteration)), None, "")
            except (CheckpointError, StorageError) as exc:
                outcome = (None, type(exc).__name__, str(exc))
        path, error, message = distributed.broadcast_object(outcome)
        if error is not None:  # every rank stops with rank 0's one-line reason
            raise {"StorageError": StorageError, "CheckpointError": CheckpointError}[error](message)
        self.manager.last_saved = path
        module.last_checkpoint = path
        module.saved_iteration = module.iteration
        self.pending = False
        return path

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ARG002
        module = pl_module
        total = module.component.num_iterations
        due = self.pending or (self.every > 0 and module.iteration % self.every == 0) or (
            self.final and module.iteration >= total)
        signum = self.agree_on_stop()  # every rank, every iteration
        if due or signum:
            if module.last_iteration_faulty:  # the same on every rank (metrics are rank means)
                self.pending = due
            else:
                self.save(module)
        if signum:
            raise self.preempted(module)

    def agree_on_stop(self) -> int:
        """The signal any rank received (0: none), the same on every rank; a collective under DDP. When
        there is one, rank 0 lets its workers exit non-zero before anyone does."""
        signum = distributed.max_over_ranks(self.guard.received or 0)
        if signum:
            self.guard.record(signum)
            if distributed.is_rank_zero():
                distributed.release_workers()  # the workers are about to exit 75: not a crash
            distributed.barrier()
        return signum

    def preempted(self, module) -> Preempted:
        saved = module.last_checkpoint
        where = (f"checkpoint {saved} (iteration {module.saved_iteration}/{module.component.num_iterations} of "
                 f"stage '{module.stage}')" if saved else "no checkpoint yet (the run restarts from the beginning)")
        return self.guard.stop(f"during training; {where}", checkpoint=saved)


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
        component = getattr(module, "component", None)
        label = component.progress_label() if component is not None else ""
        return f"{stage} · {label}" if label else stage

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        if self.progress is not None and self.train_progress_bar_id is not None and self.is_enabled:
            self.progress.update(self.train_progress_bar_id, description=self._get_train_description(0))
