"""Turn loaded jobs into the comparison: per-algo table, Pareto points and seed-averaged curves.

Everything here is plain data (no plotting, no rendering) so that ``report_data.json``, the
Markdown, the HTML and the W&B report are all views of one aggregation and cannot disagree.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from alignbench.report.jobs import Job
from alignbench.report.stats import Estimate, best_labels, finite_values, mean_ci, pareto_front
from alignbench.summary import PERF_KEYS

X_METRIC = "eval/helpfulness"  # Pareto x axis: higher is better
Y_METRIC = "eval/unsafe_rate"  # Pareto y axis: lower is better


@dataclass(frozen=True)
class Column:
    """A table metric and its direction; optional columns show up only when some job logged them."""

    key: str
    higher_is_better: bool = False
    optional: bool = False

    @property
    def title(self) -> str:
        return self.key.split("/", 1)[-1]

    @property
    def arrow(self) -> str:
        return "↑" if self.higher_is_better else "↓"


EVAL_COLUMNS = (
    Column("eval/unsafe_rate"),
    Column("eval/over_refusal_rate"),
    Column("eval/helpfulness", higher_is_better=True),
    Column("eval/violation_rate"),
    Column("eval/cost_p95"),
    Column("eval/feedback_trigger_rate", optional=True),
)
REQUIRED_EVAL = tuple(c.key for c in EVAL_COLUMNS if not c.optional)
# Lower is better for every compute column; "best" there means cheapest.
PERF_COLUMNS = tuple(Column(key) for key in PERF_KEYS)
CURVE_METRICS = ("train/reward", "train/episode_cost", "train/lambda", "train/violation_rate")
# The order the project introduces the algorithms in; unknown algos follow alphabetically.
ALGO_ORDER = ("sft", "ppo", "reward_shaping", "safe_rlhf", "repo", "waltzrl", "safeguard", "triplay")


def algo_sort_key(algo: str) -> tuple[int, str]:
    return (ALGO_ORDER.index(algo) if algo in ALGO_ORDER else len(ALGO_ORDER), algo)


@dataclass
class AlgoRow:
    """One algorithm aggregated over its successful seeds."""

    algo: str
    seeds: list[int | None]
    n_failed: int
    metrics: dict[str, Estimate | None]
    perf: dict[str, Estimate | None]
    best: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        return "ok" if not self.n_failed else f"ok ({self.n_failed} failed)"


@dataclass
class Curve:
    """Seed-mean of one training metric for one algo; ``counts`` is how many seeds each step has."""

    steps: list[float]
    means: list[float]
    counts: list[int]


@dataclass
class Comparison:
    """The whole aggregation every output is rendered from."""

    columns: list[Column]
    perf_columns: list[Column]
    rows: list[AlgoRow]
    failed_jobs: list[Job]
    jobs: list[Job]
    seed_points: dict[str, list[tuple[float, float]]]
    mean_points: dict[str, tuple[float, float]]
    intervals: dict[str, tuple[Estimate, Estimate]]
    front: list[str]
    curves: dict[str, dict[str, Curve]]
    warnings: list[str]

    @property
    def algos(self) -> list[str]:
        """Every algo seen, failed-only ones included, in display order (drives plot colours)."""
        return sorted({job.algo for job in self.jobs}, key=algo_sort_key)

    @property
    def sweep_commands(self) -> list[str]:
        return sorted({job.sweep_command for job in self.jobs if job.sweep_command})


def _estimates(jobs: list[Job], keys: list[str], source: str) -> dict[str, Estimate | None]:
    """mean ± CI of each key over the jobs (``source`` is ``metrics`` or ``perf``)."""
    return {key: mean_ci(getattr(job, source).get(key) for job in jobs) for key in keys}


def _mark_best(rows: list[AlgoRow], columns: list[Column], source: str) -> None:
    """Flag, per column, the algo(s) whose mean is best in that column's direction."""
    for column in columns:
        means = {
            row.algo: est.mean for row in rows if (est := getattr(row, source).get(column.key)) is not None
        }
        for algo in best_labels(means, column.higher_is_better):
            next(row for row in rows if row.algo == algo).best.add(column.key)


def _curves(ok_jobs: list[Job]) -> dict[str, dict[str, Curve]]:
    """Per metric and algo, the mean over seeds at each logged step.

    Seeds may log at different steps (or stop early), so each step averages the seeds that logged
    it and records how many did; a step seen by one seed only is still drawn, honestly labelled.
    """
    by_metric: dict[str, dict[str, Curve]] = {}
    for metric in CURVE_METRICS:
        per_algo: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
        for job in ok_jobs:
            for row in job.history:
                step, value = row.get("step"), row.get(metric)
                if finite_values([step]) and finite_values([value]):
                    per_algo[job.algo][float(step)].append(float(value))
        if per_algo:
            by_metric[metric] = {
                algo: Curve(
                    steps=sorted(points),
                    means=[sum(points[s]) / len(points[s]) for s in sorted(points)],
                    counts=[len(points[s]) for s in sorted(points)],
                )
                for algo, points in sorted(per_algo.items(), key=lambda item: algo_sort_key(item[0]))
            }
    return by_metric


def _duplicate_warnings(ok_jobs: list[Job]) -> list[str]:
    """Two ok jobs with the same (algo, seed) would be averaged as independent seeds: say so."""
    seen: dict[tuple[str, Any], int] = defaultdict(int)
    for job in ok_jobs:
        seen[(job.algo, job.seed)] += 1
    return [
        f"{algo} seed {seed} appears in {count} jobs; all are averaged as separate seeds"
        for (algo, seed), count in sorted(seen.items(), key=lambda item: str(item[0]))
        if count > 1
    ]


def compare(jobs: list[Job]) -> Comparison:
    """Aggregate jobs into the comparison (pure function of the loaded jobs)."""
    ok_jobs = [job for job in jobs if job.ok]
    failed_jobs = [job for job in jobs if not job.ok]
    columns = [
        c for c in EVAL_COLUMNS if not c.optional or any(job.metrics.get(c.key) is not None for job in ok_jobs)
    ]
    perf_columns = list(PERF_COLUMNS)

    rows = []
    for algo in sorted({job.algo for job in ok_jobs}, key=algo_sort_key):
        algo_jobs = [job for job in ok_jobs if job.algo == algo]
        rows.append(
            AlgoRow(
                algo=algo,
                seeds=sorted((job.seed for job in algo_jobs), key=lambda s: (s is None, s or 0)),
                n_failed=sum(job.algo == algo for job in failed_jobs),
                metrics=_estimates(algo_jobs, [c.key for c in columns], "metrics"),
                perf=_estimates(algo_jobs, [c.key for c in perf_columns], "perf"),
                notes=[f"seed {job.seed}: {note}" for job in algo_jobs for note in job.notes],
            )
        )
    _mark_best(rows, columns, "metrics")
    _mark_best(rows, perf_columns, "perf")

    seed_points: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for job in ok_jobs:
        x, y = job.metrics.get(X_METRIC), job.metrics.get(Y_METRIC)
        if finite_values([x]) and finite_values([y]):
            seed_points[job.algo].append((float(x), float(y)))
    intervals = {
        row.algo: (row.metrics[X_METRIC], row.metrics[Y_METRIC])
        for row in rows
        if row.metrics.get(X_METRIC) is not None and row.metrics.get(Y_METRIC) is not None
    }
    mean_points = {algo: (x.mean, y.mean) for algo, (x, y) in intervals.items()}

    warnings = _duplicate_warnings(ok_jobs)
    if not ok_jobs:
        warnings.append("no job finished successfully: the table and plots are empty")
    return Comparison(
        columns=columns,
        perf_columns=perf_columns,
        rows=rows,
        failed_jobs=failed_jobs,
        jobs=jobs,
        seed_points=dict(seed_points),
        mean_points=mean_points,
        intervals=intervals,
        front=pareto_front(mean_points),
        curves=_curves(ok_jobs),
        warnings=warnings,
    )


def to_data(comparison: Comparison, root_label: str) -> dict[str, Any]:
    """JSON-ready form of the comparison, written as ``report_data.json``."""

    def estimates(values: dict[str, Estimate | None]) -> dict[str, Any]:
        return {key: est.to_dict() if est else None for key, est in values.items()}

    return {
        "root": root_label,
        "columns": [{"key": c.key, "higher_is_better": c.higher_is_better} for c in comparison.columns],
        "perf_columns": [c.key for c in comparison.perf_columns],
        "algos": [
            {
                "algo": row.algo,
                "status": row.status,
                "seeds": row.seeds,
                "n_ok": len(row.seeds),
                "n_failed": row.n_failed,
                "metrics": estimates(row.metrics),
                "perf": estimates(row.perf),
                "best": sorted(row.best),
                "notes": row.notes,
            }
            for row in comparison.rows
        ],
        "pareto": {
            "x": X_METRIC,
            "y": Y_METRIC,
            "means": {algo: list(point) for algo, point in comparison.mean_points.items()},
            "front": comparison.front,
        },
        "jobs": [_job_data(job) for job in comparison.jobs],
        "failed": [_job_data(job) for job in comparison.failed_jobs],
        "sweep_commands": comparison.sweep_commands,
        "warnings": comparison.warnings,
    }


def _job_data(job: Job) -> dict[str, Any]:
    return {
        "dir": str(job.job_dir),
        "algo": job.algo,
        "seed": job.seed,
        "status": job.status,
        "error": job.error,
        "notes": job.notes,
        "overrides": job.overrides,
        "command": job.command,
        "sweep_command": job.sweep_command,
    }
