"""Training curves from ``history.jsonl``: against RL iteration and against training compute.

Only RL rows count (``stage == "rl"``): the shared stages (SFT, reward and cost models, warm-up stages)
log under their own stage names and restart their own iteration counts, so they never enter an RL curve.
A component's in-fit warm-up (TriPlay's supervised warm-up: rows with ``train/triplay_phase == 0`` or a
``train/warmup/...`` key) is dropped too, and the RL iteration counts from its end:
``x = iteration - (last warm-up iteration)``; the warm-up's last row stays, at x = 0, since it holds the
measurement RL starts from (TriPlay's held-out metrics after the warm-up). The compute axis is ``perf/flops``, the job's training FLOPs
so far (every stage and role, ``alignbench.models.compute``), logged with every row.

Each group's curve is the mean over its seeds at every x with a 95% t-band (``stats.mean_ci``); the
compute axis takes, at each RL iteration, the seeds' mean FLOPs.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from alignbench.report.stats import finite_values, mean_ci

CURVE_METRICS = (
    "train/reward", "train/episode_cost", "train/lambda", "train/violation_rate",  # PPO family
    "train/feedback_trigger_rate", "train/feedback_label_accuracy",  # WaltzRL
    "triplay/attack_success_rate", "triplay/attack_diversity", "triplay/defender/unsafe_rate",  # TriPlay
)
RL_STAGE = "rl"
COMPUTE_KEY = "perf/flops"


@dataclass
class Curve:
    """One group's curve: x, seed mean, 95% band (None where one seed) and seeds per x."""

    x: list[float]
    mean: list[float]
    low: list[float | None]
    high: list[float | None]
    counts: list[int]

    def to_dict(self) -> dict[str, Any]:
        return {"x": self.x, "mean": self.mean, "low": self.low, "high": self.high, "seeds": self.counts}


def _warmup_row(row: dict[str, Any]) -> bool:
    return row.get("train/triplay_phase") == 0.0 or any(key.startswith("train/warmup/") for key in row)


def rl_rows(history: list[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    """(RL iteration, row) for the RL rows of one job, warm-up excluded (module docstring)."""
    rows = [row for row in history if row.get("stage") == RL_STAGE and isinstance(row.get("iteration"), int)]
    warm = [row["iteration"] for row in rows if _warmup_row(row)]
    offset = max(warm) if warm else 0
    return [(row["iteration"] - offset, row) for row in rows
            if not _warmup_row(row) or row["iteration"] == offset]


def _curve(points: dict[int, list[float]], xs: dict[int, list[float]] | None = None) -> Curve:
    keys = sorted(points)
    estimates = [mean_ci(points[k]) for k in keys]
    x = [sum(xs[k]) / len(xs[k]) for k in keys] if xs is not None else [float(k) for k in keys]
    return Curve(x=x, mean=[e.mean for e in estimates], low=[e.low for e in estimates],
                 high=[e.high for e in estimates], counts=[e.n for e in estimates])


def build_curves(groups: list[tuple[str, list[Any]]]) -> dict[str, dict[str, dict[str, Curve]]]:
    """``{"iteration"|"compute": {metric: {group: Curve}}}`` for the (group name, jobs) given."""
    out: dict[str, dict[str, dict[str, Curve]]] = {"iteration": {}, "compute": {}}
    for metric in CURVE_METRICS:
        for name, jobs in groups:
            values: dict[int, list[float]] = defaultdict(list)
            flops: dict[int, list[float]] = defaultdict(list)
            for job in jobs:
                for iteration, row in rl_rows(job.history):
                    if finite_values([row.get(metric)]):
                        values[iteration].append(float(row[metric]))
                        if finite_values([row.get(COMPUTE_KEY)]):
                            flops[iteration].append(float(row[COMPUTE_KEY]))
            if not values:
                continue
            out["iteration"].setdefault(metric, {})[name] = _curve(values)
            with_compute = {k: v for k, v in values.items() if flops.get(k)}
            if with_compute:
                out["compute"].setdefault(metric, {})[name] = _curve(with_compute, flops)
    return out
