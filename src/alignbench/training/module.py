"""The one LightningModule that hosts every algorithm component.

Manual optimisation: a component's ``training_step`` is one *algorithm iteration* (an SFT batch, or a
whole RL iteration: rollout, scoring, several PPO minibatch updates of several optimisers). It calls
``host.optimize(name, loss)`` for each update. Lightning's ``global_step`` counts every optimiser
step under manual optimisation, so the host keeps its own ``iteration`` counter, which is the x-axis
of every logged metric and what checkpoints resume from.

Checkpoints (``checkpoint_state``, written by ``training.callbacks.CheckpointCallback``) carry only
trainable roles (adapters, heads, trained copies), every optimiser's and scheduler's state, the
component's own state (counters, Lagrange multiplier, pools, generators), the job's compute meter
(``models.compute``), the data position and the RNG states — never the frozen base or frozen roles.
``load_resume_state`` puts one back: weights, component and compute meter at once, optimiser/scheduler
states when Lightning has built them (``on_train_start``) and the RNG states just before the first
resumed iteration (after the data loader's iterator has drawn its seed), so a resumed run continues bit
for bit. Under DDP the weights and optimiser states are the same on every rank (gradients are
all-reduced), but each rank's own state (``rank_state``: the component's cost window, generators, pools,
the training-signal audit's counts of its own rows, its compute meter and the RNG states) differs: rank
0's file holds every rank's, and each rank resumes from its own. Under FSDP (``configure_model`` shards
the roles) the weights and optimiser states are gathered whole into that file (every rank takes part in
the save) and a resumed run lays them out as shards again (``_shard_optimizer_state``).

Every optimiser the iteration stepped is logged by the host, whatever the algorithm (docs/METRICS.md):
``optim/<name>/grad_norm`` (the mean pre-clip gradient norm of its steps this iteration) and
``optim/<name>/lr`` (the learning rate they used).

Numerical faults: ``optimize`` never steps an optimiser on a non-finite loss or gradient; an iteration
with such a skip, or with a NaN/inf loss, reward, cost or lambda among its metrics, is counted
(``train/nan_skipped``) and ``max_nan_steps`` consecutive ones stop the run (``NumericalFaultError``).
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import Any

import lightning as L
import torch

from alignbench.algorithms.base import AlgorithmComponent
from alignbench.config import OptimConfig
from alignbench.errors import CheckpointError, NumericalFaultError
from alignbench.models.compute import METER
from alignbench.models.roles import RoleSet
from alignbench.training import checkpoint as ckpt
from alignbench.training.callbacks import metric_faults
from alignbench.training.sink import MetricsSink
from alignbench.utils.distributed import (all_reduce_gradients_, full_tensor, gathered, is_rank_zero, is_sharded,
                                          local_part, mean_metrics, release_workers, world_size)
from alignbench.utils.memory import in_training_step, peak_rss_mb
from alignbench.utils.oracle import oracle_scope

#: when (``time.time()``) this process began its first training step: ``perf.startup_s`` (``startup_seconds``)
FIRST_STEP_AT: list[float] = []


def startup_seconds() -> float | None:
    """Seconds from this process's creation (the OS's clock: interpreter start and imports included) to
    the start of its first training step; None before one ran. A multirun's later jobs share the value."""
    if not FIRST_STEP_AT:
        return None
    import psutil

    return FIRST_STEP_AT[0] - psutil.Process().create_time()


def lr_lambda(optim: OptimConfig, total_steps: int):
    """Linear warm-up over ``warmup_ratio`` of the steps, then constant or cosine decay to 0."""
    warmup = int(optim.warmup_ratio * total_steps)

    def factor(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if optim.scheduler == "cosine" and total_steps > warmup:
            progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
            return 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return factor


def adamw(params, **kwargs) -> torch.optim.AdamW:
    """AdamW with the fused kernel where torch has one for these tensors (CPU and CUDA floats): the
    same update, one kernel instead of a dozen per parameter (the single-tensor loop is torch's
    default on the CPU); torch's default implementation otherwise."""
    params = list(params)
    fusable = all(p.device.type in ("cpu", "cuda") and p.dtype in (torch.float32, torch.float16, torch.bfloat16)
                  for p in params)
    if fusable:
        try:
            return torch.optim.AdamW(params, fused=True, **kwargs)
        except (RuntimeError, TypeError, ValueError):
            pass
    return torch.optim.AdamW(params, **kwargs)


class AlignmentModule(L.LightningModule):
    """Runs ``component`` over ``roles``; logs through ``sink`` under ``stage``."""

    def __init__(self, component: AlgorithmComponent, roles: RoleSet, sink: MetricsSink | None,
                 stage: str, *, max_nan_steps: int | None = None, data_seed: int = 0) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.strict_loading = False
        self.component = component
        self.roles = roles
        self.sink = sink
        self.stage = stage
        self.iteration = 0
        self.max_nan_steps = max_nan_steps  # None: never stop; 0 or 1: stop at the first faulty iteration
        self.data_seed = data_seed
        self.nan_skipped = 0  # faulty iterations so far in this fit (resumed runs continue the count)
        self.nan_consecutive = 0
        self.last_iteration_faulty = False
        self.last_checkpoint: str | None = None
        self.saved_iteration = 0
        self._faults: list[str] = []
        self._optimizer_names: list[str] = []
        self._grad_clip: dict[str, float] = {}
        self._grad_norms: dict[str, list[float]] = {}  # this iteration's steps per optimiser (optim/<name>/...)
        self._lrs: dict[str, float] = {}
        self._pending_optim: dict[str, Any] | None = None
        self._pending_rng: dict[str, Any] | None = None
        self._t_last = time.perf_counter()

    # ----------------------------------------------------------------- sharding
    def configure_model(self) -> None:
        """``trainer=fsdp``: shard the roles over the strategy's data-parallel mesh before the
        optimisers are built (``alignbench.models.sharding``); other strategies leave them whole."""
        mesh = getattr(self, "_device_mesh", None)
        if mesh is not None and not self.sharded:
            from alignbench.models.sharding import shard_roles, sharded_bytes

            whole = sum(p.numel() * p.element_size() for p in self.roles.parameters())
            shard_roles(self.roles, mesh["data_parallel"])
            if is_rank_zero():
                print(f"alignbench: FSDP: stage '{self.stage}' roles sharded over {mesh['data_parallel'].size()} "
                      f"ranks: {sharded_bytes(self.roles) / 2**20:.2f} MiB of {whole / 2**20:.2f} MiB of "
                      f"parameters on rank 0", flush=True)

    @property
    def sharded(self) -> bool:
        """The roles are FSDP shards: reading them whole (checkpoints) is a collective."""
        return is_sharded(self.roles)

    # ----------------------------------------------------------------- optimisers
    def configure_optimizers(self):
        specs = self.component.optimizer_specs()
        optimizers, schedulers = [], []
        for name, spec in specs.items():
            if not spec.params:
                raise RuntimeError(f"optimiser '{name}' has no trainable parameters")
            optimizer = adamw(spec.params, lr=spec.optim.lr, betas=tuple(spec.optim.betas),
                              weight_decay=spec.optim.weight_decay)
            optimizers.append(optimizer)
            schedulers.append({"scheduler": torch.optim.lr_scheduler.LambdaLR(
                optimizer, lr_lambda(spec.optim, max(1, spec.total_steps))), "interval": "step"})
            self._optimizer_names.append(name)
            self._grad_clip[name] = spec.optim.grad_clip
        return optimizers, schedulers

    def optimize(self, name: str, loss: torch.Tensor, step_scheduler: bool = True) -> dict[str, float]:
        """One update of optimiser ``name``: zero-grad, backward, clip, step (scheduler per iteration).

        A non-finite loss or gradient norm skips the step: the gradients are dropped, the optimiser
        state is untouched and the iteration counts as faulty. (Under DDP and FSDP the decision is
        taken on the all-reduced gradient norm, which every rank shares, so the ranks never diverge.)
        """
        index = self._optimizer_names.index(name)
        optimizers = self.optimizers()
        optimizer = optimizers[index] if isinstance(optimizers, list) else optimizers
        optimizer.zero_grad(set_to_none=True)
        lr = float(optimizer.param_groups[0]["lr"])
        loss_finite = bool(torch.isfinite(loss.detach()).all())
        ddp = self._ddp_wrapper()
        # DDP: gradients are averaged here, per optimiser (DDP's reducer expects every trainable
        # parameter in every backward, which several optimisers with disjoint parameters break)
        with ddp.no_sync() if ddp is not None else contextlib.nullcontext():
            self.manual_backward(loss)
        if ddp is not None:
            all_reduce_gradients_([p for group in optimizer.param_groups for p in group["params"]])
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        # FSDP: the norm of the sharded gradients is a DTensor; whole, it is the global norm
        grad_norm = full_tensor(torch.nn.utils.clip_grad_norm_(params, self._grad_clip[name] or float("inf")))
        self._grad_norms.setdefault(name, []).append(float(grad_norm))
        self._lrs[name] = lr
        synced = ddp is not None or self.sharded
        if not bool(torch.isfinite(grad_norm)) or (not synced and not loss_finite):
            optimizer.zero_grad(set_to_none=True)  # never step on NaN/inf
            self._faults.append(f"{name} {'loss' if not loss_finite else 'gradient'}")
            return {"grad_norm": float(grad_norm), "skipped": 1.0}
        optimizer.step()
        return {"grad_norm": float(grad_norm)}

    def _ddp_wrapper(self) -> torch.nn.parallel.DistributedDataParallel | None:
        trainer = getattr(self, "_trainer", None)
        model = getattr(trainer.strategy, "model", None) if trainer is not None else None
        return model if isinstance(model, torch.nn.parallel.DistributedDataParallel) else None

    def _step_schedulers(self) -> None:
        schedulers = self.lr_schedulers()
        if schedulers is None:
            return
        for scheduler in schedulers if isinstance(schedulers, list) else [schedulers]:
            scheduler.step()

    # ----------------------------------------------------------------- training
    def _optimizer_metrics(self) -> dict[str, float]:
        """``optim/<name>/grad_norm`` and ``optim/<name>/lr`` of every optimiser stepped this iteration."""
        metrics = {}
        for name, norms in self._grad_norms.items():
            metrics[f"optim/{name}/grad_norm"] = sum(norms) / len(norms)
            metrics[f"optim/{name}/lr"] = self._lrs[name]
        self._grad_norms, self._lrs = {}, {}
        return metrics

    def training_step(self, batch: Any, batch_idx: int) -> None:
        if not FIRST_STEP_AT:
            FIRST_STEP_AT.append(time.time())
        self._faults = []
        # the evaluation oracle is refused here under signals=learned; the heap keeps the step's freed pages
        with oracle_scope("train"), in_training_step():
            metrics = self.component.training_step(batch, self)
        metrics.update(self._optimizer_metrics())
        with oracle_scope("monitor"):  # ground-truth diagnostics of what the iteration trained on, logged only
            metrics.update(self.component.monitor())
        metrics = mean_metrics(metrics)  # DDP: means over ranks (token counts summed); as is in one process
        self._step_schedulers()
        self.iteration += 1
        faults = self._faults + metric_faults(metrics)  # NaN/inf losses, rewards, costs, lambda
        self.last_iteration_faulty = bool(faults)
        if faults:
            self.nan_skipped += 1
            self.nan_consecutive += 1
        else:
            self.nan_consecutive = 0
        # train/nan_skipped for the RL fit (the summary reports it), <stage>/nan_skipped for the stages
        metrics[f"{'train' if self.stage == 'rl' else self.stage}/nan_skipped"] = float(self.nan_skipped)
        now = time.perf_counter()
        metrics.setdefault("timing/iteration", now - self._t_last)
        # the job's training compute so far (every stage and role, models.compute): the report's compute axis
        metrics["perf/flops"] = METER.total(training=True, world_size=world_size()).flops
        metrics["perf/peak_rss_mb"] = peak_rss_mb()  # this process's high-water mark so far (this rank's)
        self._t_last = now
        if self.sink is not None and self.trainer.is_global_zero:
            self.sink.log(metrics, stage=self.stage, iteration=self.iteration)
        shown = {k: v for k, v in metrics.items() if k.endswith(("/loss", "/reward", "lambda"))}
        for key, value in list(shown.items())[:3]:
            self.log(key, value, prog_bar=True, logger=False, on_step=True, batch_size=1)
        if faults and self.max_nan_steps is not None and self.nan_consecutive >= max(1, self.max_nan_steps):
            if is_rank_zero():
                release_workers()  # every rank stops here (the metrics are rank means): not a worker crash
            raise NumericalFaultError(
                f"{self.nan_consecutive} consecutive iterations of stage '{self.stage}' had non-finite values "
                f"(iteration {self.iteration}: {', '.join(sorted(set(faults))[:4])}); stopped after "
                f"max_nan_steps={self.max_nan_steps}, last good checkpoint: {self.last_checkpoint or 'none'}")

    # ----------------------------------------------------------------- resume
    def _signals(self):
        return getattr(getattr(self.component, "ctx", None), "signals", None) if self.stage == "rl" else None

    def _raw_optimizers(self) -> list[torch.optim.Optimizer]:
        return list(self.trainer.optimizers)

    def _raw_schedulers(self) -> list[Any]:
        return [config.scheduler for config in self.trainer.lr_scheduler_configs]

    def on_train_start(self) -> None:
        # keep references: a checkpoint may be written after Lightning has torn the fit down
        self._optimizers_ref = self._raw_optimizers()
        self._schedulers_ref = self._raw_schedulers()
        if self._pending_optim is not None:
            saved = self._pending_optim
            self._pending_optim = None
            if list(saved["optimizers"]) != self._optimizer_names:
                raise CheckpointError(f"checkpoint optimisers {list(saved['optimizers'])} do not match this "
                                           f"run's {self._optimizer_names}")
            for name, optimizer in zip(self._optimizer_names, self._optimizers_ref):
                optimizer.load_state_dict(saved["optimizers"][name])
                _shard_optimizer_state(optimizer)
            for scheduler, state in zip(self._schedulers_ref, saved["schedulers"]):
                scheduler.load_state_dict(state)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self._pending_rng is not None:  # after the data loader drew its seed: as at this point originally
            ckpt.restore_rng(self._pending_rng)
            self._pending_rng = None

    #: the keys of ``rank_state`` (also top-level keys of ``checkpoint_state``: rank 0's own)
    RANK_STATE_KEYS = ("component", "rng", "signals", "compute")

    def rank_state(self) -> dict[str, Any]:
        """This rank's own part of a checkpoint: the component's state, the RNG states, the running
        counts of the training-signal audit (each rank audits the rows it trained on) and the compute
        meter (each rank counts its own passes)."""
        signals = self._signals()
        return {"component": self.component.state_dict(), "rng": ckpt.capture_rng(),
                "signals": signals.state_dict() if signals is not None else None, "compute": METER.state_dict()}

    def checkpoint_state(self) -> dict[str, Any]:
        """Everything an exact resume needs (see module docstring); written by ``CheckpointCallback``.

        Under FSDP weights and optimiser states are gathered whole: a collective, every rank calls this
        (``CheckpointCallback.save``) and rank 0 writes; each rank's own ``rank_state`` is gathered there
        as under DDP."""
        optimizers = getattr(self, "_optimizers_ref", None) or self._raw_optimizers()
        schedulers = getattr(self, "_schedulers_ref", None) or self._raw_schedulers()
        return {
            "format": ckpt.FORMAT,
            "version": ckpt.VERSION,
            "stage": self.stage,
            "iteration": self.iteration,
            "num_iterations": int(self.component.num_iterations),
            "roles": self.roles.trainable_state_dict(),
            "optimizers": {name: gathered(opt.state_dict()) for name, opt in zip(self._optimizer_names, optimizers)},
            "schedulers": [scheduler.state_dict() for scheduler in schedulers],
            **self.rank_state(),
            "data": {"seed": int(self.data_seed), "batch_size": int(self.component.batch_size),
                     "consumed_batches": self.iteration,
                     "consumed_items": self.iteration * int(self.component.batch_size)},
            "sink": ({"step": int(self.sink.step), "last": dict(self.sink.last)} if self.sink is not None else None),
            "nan": {"skipped": self.nan_skipped, "consecutive": self.nan_consecutive},
        }

    def load_resume_state(self, state: dict[str, Any], *, history_file: str | None = None, rank: int = 0) -> None:
        """Restore a ``checkpoint_state``: weights, component, compute meter and sink now; optimisers and RNG
        when training starts (see module docstring). ``rank`` > 0 takes its own ``rank_state``."""
        ranks = state.get("ranks") or []
        own = ranks[rank - 1] if 0 < rank <= len(ranks) else state  # a finished checkpoint: rank 0's will do
        data = state.get("data") or {}
        if data and (int(data["batch_size"]) != int(self.component.batch_size) or int(data["seed"]) != self.data_seed):
            raise CheckpointError(f"checkpoint data position (seed {data['seed']}, batch size "
                                       f"{data['batch_size']}) does not match this run")
        self.iteration = int(state["iteration"])
        self.saved_iteration = self.iteration
        self.roles.load_trainable_state_dict(state["roles"])
        self.component.load_state_dict(own["component"])
        nan = state.get("nan") or {}
        self.nan_skipped = int(nan.get("skipped", 0))
        self.nan_consecutive = int(nan.get("consecutive", 0))
        if own.get("compute"):  # this rank's compute meter
            METER.load_state_dict(own["compute"])
        if self._signals() is not None and own.get("signals"):  # this rank's signal audit's running counts
            self._signals().load_state_dict(own["signals"])
        self._pending_optim = {"optimizers": state["optimizers"], "schedulers": state["schedulers"]}
        self._pending_rng = own["rng"]
        if history_file is not None:
            self.restore_sink(state, history_file)

    def restore_sink(self, state: dict[str, Any], history_file: str) -> None:
        """Drop history rows logged after the checkpoint (they are logged again) and continue the
        sink's step and last values from it."""
        if self.sink is None or not state.get("sink"):
            return
        ckpt.rewind_history(history_file, self.stage, int(state["iteration"]))
        self.sink.step = max(int(state["sink"]["step"]), ckpt.last_history_step(history_file))
        self.sink.last.update(state["sink"]["last"])

    # ----------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = {}  # frozen base and frozen roles never enter a checkpoint
        checkpoint["alignbench"] = {
            "stage": self.stage,
            "iteration": self.iteration,
            "roles": self.roles.trainable_state_dict(),
            "component": self.component.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "rng": ckpt.capture_rng(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("alignbench")
        if state is None:
            raise KeyError("checkpoint has no 'alignbench' section (not written by alignbench)")
        self.iteration = int(state["iteration"])
        self.roles.load_trainable_state_dict(state["roles"])
        self.component.load_state_dict(state["component"])
        if "rng" in state:
            ckpt.restore_rng(state["rng"])
        else:
            torch.set_rng_state(state["torch_rng"])


def _shard_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """After ``load_state_dict`` of a whole (gathered) state: lay every per-parameter tensor of an
    FSDP-sharded parameter out as the parameter (this rank's shard); scalars such as ``step`` stay."""
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            for key, value in state.items():
                if isinstance(value, torch.Tensor) and value.dim() and value.shape == param.shape:
                    state[key] = local_part(value, param)
