"""The one LightningModule that hosts every algorithm component.

Manual optimisation: a component's ``training_step`` is one *algorithm iteration* (an SFT batch, or a
whole RL iteration: rollout, scoring, several PPO minibatch updates of several optimisers). It calls
``host.optimize(name, loss)`` for each update. Lightning's ``global_step`` counts every optimiser
step under manual optimisation, so the host keeps its own ``iteration`` counter, which is the x-axis
of every logged metric and what checkpoints resume from.

Checkpoints carry only trainable roles (adapters, heads, trained copies), the optimiser and scheduler
states Lightning saves, the component's own state (counters, Lagrange multiplier, pools) and the RNG
states — never the frozen base or frozen roles.
"""

from __future__ import annotations

import math
import time
from typing import Any

import lightning as L
import torch

from alignbench.algorithms.base import AlgorithmComponent
from alignbench.config import OptimConfig
from alignbench.models.roles import RoleSet
from alignbench.training.sink import MetricsSink


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


class AlignmentModule(L.LightningModule):
    """Runs ``component`` over ``roles``; logs through ``sink`` under ``stage``."""

    def __init__(self, component: AlgorithmComponent, roles: RoleSet, sink: MetricsSink | None,
                 stage: str) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.strict_loading = False
        self.component = component
        self.roles = roles
        self.sink = sink
        self.stage = stage
        self.iteration = 0
        self._optimizer_names: list[str] = []
        self._grad_clip: dict[str, float] = {}
        self._t_last = time.perf_counter()

    # ----------------------------------------------------------------- optimisers
    def configure_optimizers(self):
        specs = self.component.optimizer_specs()
        optimizers, schedulers = [], []
        for name, spec in specs.items():
            if not spec.params:
                raise RuntimeError(f"optimiser '{name}' has no trainable parameters")
            optimizer = torch.optim.AdamW(spec.params, lr=spec.optim.lr, betas=tuple(spec.optim.betas),
                                          weight_decay=spec.optim.weight_decay)
            optimizers.append(optimizer)
            schedulers.append({"scheduler": torch.optim.lr_scheduler.LambdaLR(
                optimizer, lr_lambda(spec.optim, max(1, spec.total_steps))), "interval": "step"})
            self._optimizer_names.append(name)
            self._grad_clip[name] = spec.optim.grad_clip
        return optimizers, schedulers

    def optimize(self, name: str, loss: torch.Tensor, step_scheduler: bool = True) -> dict[str, float]:
        """One update of optimiser ``name``: zero-grad, backward, clip, step (scheduler per iteration)."""
        index = self._optimizer_names.index(name)
        optimizers = self.optimizers()
        optimizer = optimizers[index] if isinstance(optimizers, list) else optimizers
        optimizer.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        grad_norm = torch.nn.utils.clip_grad_norm_(params, self._grad_clip[name] or float("inf"))
        optimizer.step()
        return {"grad_norm": float(grad_norm)}

    def _step_schedulers(self) -> None:
        schedulers = self.lr_schedulers()
        if schedulers is None:
            return
        for scheduler in schedulers if isinstance(schedulers, list) else [schedulers]:
            scheduler.step()

    # ----------------------------------------------------------------- training
    def training_step(self, batch: Any, batch_idx: int) -> None:
        metrics = self.component.training_step(batch, self)
        self._step_schedulers()
        self.iteration += 1
        now = time.perf_counter()
        metrics.setdefault("timing/iteration", now - self._t_last)
        counters = getattr(self.component.ctx, "counters", None)
        if counters is not None:  # job-wide compute totals for summary.json's perf block
            counters["train_tokens"] += metrics.get("perf/train_tokens", 0.0)
            counters["gen_tokens"] += metrics.get("perf/gen_tokens", 0.0)
        self._t_last = now
        if self.sink is not None and self.trainer.is_global_zero:
            self.sink.log(metrics, stage=self.stage, iteration=self.iteration)
        shown = {k: v for k, v in metrics.items() if k.endswith(("/loss", "/reward", "lambda"))}
        for key, value in list(shown.items())[:3]:
            self.log(key, value, prog_bar=True, logger=False, on_step=True, batch_size=1)

    # ----------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["state_dict"] = {}  # frozen base and frozen roles never enter a checkpoint
        checkpoint["alignbench"] = {
            "stage": self.stage,
            "iteration": self.iteration,
            "roles": self.roles.trainable_state_dict(),
            "component": self.component.state_dict(),
            "torch_rng": torch.get_rng_state(),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("alignbench")
        if state is None:
            raise KeyError("checkpoint has no 'alignbench' section (not written by alignbench)")
        self.iteration = int(state["iteration"])
        self.roles.load_trainable_state_dict(state["roles"])
        self.component.load_state_dict(state["component"])
        torch.set_rng_state(state["torch_rng"])
