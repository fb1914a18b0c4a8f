"""The Lagrange multiplier of PPO-Lagrangian (Safe RLHF) and RePO, parameterised as log lambda.

Safe RLHF solves  max_theta min_{lambda >= 0}  J_R(theta) - lambda * (J_C(theta) - d)  by gradient
descent on the dual variable, written in log space so that lambda stays positive:

    J_C          = mean of the last `window` raw episode costs C(x, y)   (no KL term; C > 0 unsafe)
    loss_lambda  = -(J_C - d) * exp(log_lambda)
    log_lambda  <- log_lambda - lr * d(loss)/d(log_lambda) = log_lambda + lr * (J_C - d) * lambda
    log_lambda  <- min(log_lambda, log(lambda_max))

so lambda grows while the average cost is above the threshold d and shrinks while it is below.
The update is skipped for the first `delay` calls (``lambda_update_delay``), although their costs
do enter the window. It is one plain SGD step (no momentum), written out by hand so that the state
is just (log_lambda, window, call counter) and a resumed run continues bit-for-bit.

RePO (``mode="rectified"``) replaces the average by the rectified violation of the per-prompt
constraint C(x, y) <= d and compares it with a slack s >= 0 (unverified in the paper; an option):

    J_C          = mean over the window of {C - d}+ = max(0, C - d)      (always >= 0)
    loss_lambda  = -(J_C - s) * exp(log_lambda)

With the default s = 0 the gradient step is never negative: lambda can only grow (or stay when no
response in the window violates). With s > 0 it falls whenever the mean violation is below s.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, Callable

import torch

from alignbench.errors import ConfigError

__all__ = ["LagrangeMultiplier"]

MODES = ("average", "rectified")


class LagrangeMultiplier:
    """Dual variable lambda with a moving window of episode costs, update delay and lambda_max.

    Args:
        init: initial lambda (> 0, since it is stored as log lambda).
        lr: SGD learning rate on log lambda (Safe RLHF ``lambda_lr`` = 0.1).
        threshold: cost threshold d (on the cost model's scale).
        window: number of most recent raw episode costs J_C averages over (Safe RLHF: 128).
        delay: number of initial ``update`` calls that only fill the window.
        lambda_max: upper bound on lambda (``None`` for none).
        mode: ``"average"`` (Safe RLHF) or ``"rectified"`` (RePO, see module docstring).
        rectified_slack: slack s of the rectified mode (ignored in average mode).
        all_reduce_mean: hook ``Tensor -> Tensor`` applied to J_C so that DDP ranks agree (each
            rank keeps its own window and all take the identical step); identity by default. It
            receives a 0-dim float64 CPU tensor: move it to the backend's device (NCCL: CUDA).
        num_ranks: ``() -> int``, the number of ranks whose J_C the hook averages (1 by default).
            Each rank then averages only its last ``ceil(window / num_ranks)`` costs, so that with
            equal per-rank batches the mean over ranks is the mean of the last ``window`` costs of
            the global batch, as in one process.
    """

    def __init__(
        self,
        init: float = 1.0,
        lr: float = 0.1,
        threshold: float = 0.0,
        window: int = 128,
        delay: int = 0,
        lambda_max: float | None = 5.0,
        mode: str = "average",
        rectified_slack: float = 0.0,
        all_reduce_mean: Callable[[torch.Tensor], torch.Tensor] | None = None,
        num_ranks: Callable[[], int] | None = None,
    ) -> None:
        if init <= 0:
            raise ConfigError(f"LagrangeMultiplier: init (lambda_init) must be > 0, got {init}.")
        if window < 1:
            raise ConfigError(f"LagrangeMultiplier: window must be >= 1, got {window}.")
        if mode not in MODES:
            raise ConfigError(f"LagrangeMultiplier: mode must be one of {MODES}, got {mode!r}.")
        if lambda_max is not None and lambda_max < init:
            raise ConfigError(
                f"LagrangeMultiplier: lambda_max ({lambda_max}) is below lambda_init ({init})."
            )
        self.lr = float(lr)
        self.threshold = float(threshold)
        self.window = int(window)
        self.delay = int(delay)
        self.lambda_max = None if lambda_max is None else float(lambda_max)
        self.mode = str(mode)  # a plain string in checkpoints (a config's choice member would not load)
        self.rectified_slack = float(rectified_slack)
        self.all_reduce_mean = all_reduce_mean or (lambda x: x)
        self.num_ranks = num_ranks or (lambda: 1)
        self.log_lambda = torch.tensor(math.log(init), dtype=torch.float64)
        self.costs: deque[float] = deque(maxlen=self.window)
        self.calls = 0

    @property
    def value(self) -> float:
        """Current lambda = exp(log_lambda), a detached Python float."""
        return math.exp(self.log_lambda.item())

    def constraint_value(self) -> torch.Tensor:
        """J_C of the current window (before the all-reduce): average or rectified mean."""
        share = -(-self.window // max(1, int(self.num_ranks())))  # this rank's part of the window
        costs = torch.tensor(list(self.costs)[-share:], dtype=torch.float64)
        if self.mode == "rectified":
            costs = (costs - self.threshold).clamp(min=0.0)
        return costs.mean()

    def update(self, episode_costs: torch.Tensor) -> dict[str, Any]:
        """Add a batch of raw episode costs ``[B]`` to the window, then take one dual step.

        Returns ``{"lambda": float, "J_C": float, "updated": bool}`` (lambda after the step).
        """
        new = torch.as_tensor(episode_costs).detach().reshape(-1).to("cpu", torch.float64)
        # NaN/inf costs (a numerical fault upstream) never enter the window: one would poison J_C, and
        # so lambda, for the next `window` samples. The host counts the faulty iteration.
        new = new[torch.isfinite(new)]
        self.costs.extend(new.tolist())
        self.calls += 1
        if not self.costs:
            return {"lambda": self.value, "J_C": math.nan, "updated": False}

        j_c = self.all_reduce_mean(self.constraint_value()).to("cpu", torch.float64)
        target = self.rectified_slack if self.mode == "rectified" else self.threshold
        updated = self.calls > self.delay and bool(torch.isfinite(j_c))
        if updated:
            # d loss / d log_lambda for loss = -(J_C - target) * exp(log_lambda)
            grad = -(j_c - target) * torch.exp(self.log_lambda)
            self.log_lambda = self.log_lambda - self.lr * grad
            if self.lambda_max is not None:
                self.log_lambda = self.log_lambda.clamp(max=math.log(self.lambda_max))
        return {"lambda": self.value, "J_C": float(j_c), "updated": updated}

    def state_dict(self) -> dict[str, Any]:
        """Everything needed for an exact resume (the hook is not state; pass it again)."""
        return {
            "log_lambda": self.log_lambda.clone(),
            "costs": list(self.costs),
            "calls": self.calls,
            "window": self.window,
            "mode": self.mode,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore ``state_dict()``; the window keeps this instance's ``window`` length."""
        self.log_lambda = torch.as_tensor(state["log_lambda"], dtype=torch.float64).clone()
        self.costs = deque((float(c) for c in state["costs"]), maxlen=self.window)
        self.calls = int(state["calls"])

    def __repr__(self) -> str:
        return (
            f"LagrangeMultiplier(lambda={self.value:.4g}, mode={self.mode}, d={self.threshold}, "
            f"window={len(self.costs)}/{self.window}, calls={self.calls})"
        )
