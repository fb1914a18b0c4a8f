"""Turn loaded jobs into the comparison: groups with intervals, tests, fronts, frontiers, curves, compute.

Everything here is plain data (no plotting, no rendering) so that ``report_data.json``, the Markdown,
the HTML and the W&B report are all views of one aggregation and cannot disagree.

A *group* is what a table row shows: an algorithm, or in a frontier sweep an (algorithm, knob value)
pair (``summary.json["tradeoff"]``), over its successful seeds. Every mean in the report comes with
its 95% interval from the hierarchical bootstrap of ``report.bootstrap`` (seeds, then prompts within
each seed, from ``eval_samples.jsonl``), and every claim of a difference from ``report.significance``.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from alignbench.report import significance
from alignbench.report.bootstrap import DEFAULT_REPLICATES, Interval, Plan, estimate
from alignbench.report.curves import build_curves
from alignbench.report.frontier import Frontier, HypervolumeTest, build_frontiers, hypervolume_tests
from alignbench.report.jobs import Job
from alignbench.report.outcomes import PROMPT_METRICS, consistent
from alignbench.report.stats import finite_values, pareto_front

X_METRIC = "eval/helpfulness"  # Pareto x axis: higher is better
Y_METRIC = "eval/unsafe_rate"  # Pareto y axis: lower is better
ORACLE_MARK = "†"


@dataclass(frozen=True)
class Column:
    """A table metric and its direction; optional columns show up only when some job logged them;
    ``ranked``: a star may mark its significant leader (not for rates whose direction is a design choice)."""

    key: str
    higher_is_better: bool = False
    optional: bool = False
    ranked: bool = True
    directed: bool = True  # False: neither direction is "better" (no arrow)

    @property
    def title(self) -> str:
        return self.key.split("/", 1)[-1]

    @property
    def arrow(self) -> str:
        return ("↑" if self.higher_is_better else "↓") if self.directed else ""


EVAL_COLUMNS = (
    Column("eval/unsafe_rate"),
    Column("eval/over_refusal_rate"),
    Column("eval/helpfulness", higher_is_better=True),
    Column("eval/violation_rate"),
    Column("eval/cost_p95"),
    Column("eval/feedback_trigger_rate", optional=True, ranked=False, directed=False),
)
REQUIRED_EVAL = tuple(c.key for c in EVAL_COLUMNS if not c.optional)
# compute columns: training FLOPs (every stage and role), tokens, wall time, memory; no stars
PERF_COLUMNS = tuple(Column(key, ranked=False)
                     for key in ("flops", "gen_tokens", "train_tokens", "wall_s", "cpu_s", "peak_rss_mb"))
# phases of the per-phase compute table, in pipeline order (unknown ones after RL, the non-training ones last)
PHASE_ORDER = ("sft", "reward_model", "cost_model", "label_model")
LAST_PHASES = ("rl", "eval", "monitor", "export")
# The order the project introduces the algorithms in; unknown algos follow alphabetically.
ALGO_ORDER = ("sft", "ppo", "reward_shaping", "safe_rlhf", "repo", "waltzrl", "safeguard", "triplay")


def algo_sort_key(algo: str) -> tuple[int, str]:
    return (ALGO_ORDER.index(algo) if algo in ALGO_ORDER else len(ALGO_ORDER), algo)


@dataclass
class Group:
    """One table row: an algorithm (at one trade-off knob value) over its successful seeds."""

    name: str
    algo: str
    tradeoff: dict[str, Any] | None
    jobs: list[Job]
    n_failed: int
    metrics: dict[str, Interval | None] = field(default_factory=dict)
    perf: dict[str, Interval | None] = field(default_factory=dict)
    stars: set[str] = field(default_factory=set)
    notes: list[str] = field(default_factory=list)
    seed_level: list[str] = field(default_factory=list)  # prompt-level metrics bootstrapped over seeds only

    @property
    def seeds(self) -> list[int | None]:
        return sorted((job.seed for job in self.jobs), key=lambda s: (s is None, s or 0))

    @property
    def n(self) -> int:
        return len(self.jobs)

    @property
    def oracle(self) -> bool:
        return any(job.oracle for job in self.jobs)

    @property
    def label(self) -> str:
        """``safe_rlhf``, ``safe_rlhf [lagrange.threshold=-1.5]``; `` †`` when trained on oracle signals."""
        text = self.name if not self.tradeoff else f"{self.algo} [{knob_text(self.tradeoff)}]"
        return f"{text} {ORACLE_MARK}" if self.oracle else text

    @property
    def status(self) -> str:
        return "ok" if not self.n_failed else f"ok ({self.n_failed} failed)"


def value_text(value: Any) -> str:
    """A knob value for a label: numbers in short form, a list by its length (the safeguard's keyword lists)."""
    return f"{len(value)} items" if isinstance(value, list) else f"{value:g}" if isinstance(value, float) else str(value)


def knob_text(tradeoff: dict[str, Any]) -> str:
    """``lagrange.threshold=-1.5`` (the ``algo.`` prefix dropped)."""
    return f"{str(tradeoff.get('knob', '?')).removeprefix('algo.')}={value_text(tradeoff.get('value'))}"


@dataclass
class Comparison:
    """The whole aggregation every output is rendered from."""

    columns: list[Column]
    perf_columns: list[Column]
    groups: list[Group]
    failed_jobs: list[Job]
    jobs: list[Job]
    replicates: int
    findings: list[significance.Finding]
    star_tests: list[significance.Finding]
    front_means: list[str]
    front: list[str]
    dominance: list[dict[str, Any]]
    seed_points: dict[str, list[tuple[float, float]]]
    frontiers: list[Frontier]
    hypervolume_tests: list[HypervolumeTest]
    curves: dict[str, dict[str, dict[str, Any]]]
    compute: dict[str, Any]
    warnings: list[str]

    @property
    def algos(self) -> list[str]:
        """Every algo seen, failed-only ones included, in display order (drives plot colours)."""
        return sorted({job.algo for job in self.jobs}, key=algo_sort_key)

    @property
    def plain_groups(self) -> list[Group]:
        """Groups without a trade-off knob: the head-to-head rows."""
        return [g for g in self.groups if not g.tradeoff]

    @property
    def sweep_commands(self) -> list[str]:
        return sorted({job.sweep_command for job in self.jobs if job.sweep_command})


def _group_key(job: Job) -> str:
    point = (job.tradeoff or {}).get("point")
    return job.algo if not job.tradeoff else f"{job.algo}@{point}"


def _universe(jobs: list[Job]) -> tuple[list[str], list[str]]:
    """Prompt ids (sorted) seen in any job's outcomes and each one's kind."""
    kinds: dict[str, str] = {}
    for job in jobs:
        if job.outcomes is not None:
            for pid, kind in job.outcomes.kinds.items():
                kinds.setdefault(pid, kind)
    ids = sorted(kinds)
    return ids, [kinds[pid] for pid in ids]


def _values(group: Group, metric: str, source: str, ids: list[str], index: dict[str, int]) -> np.ndarray | None:
    """``V[s, p]`` of one metric: per prompt when every seed's outcomes reproduce its summary, else the
    seed-level values as one column (``report.bootstrap``)."""
    jobs = group.jobs
    if source == "metrics" and metric in PROMPT_METRICS and ids and all(
            job.outcomes is not None and consistent(job.outcomes, job.metrics, metric) for job in jobs):
        values = np.full((len(jobs), len(ids)), np.nan)
        for row, job in enumerate(jobs):
            for pid, value in job.outcomes.values[metric].items():
                values[row, index[pid]] = value
        return values
    seed_level = [getattr(job, source).get(metric) for job in jobs]
    kept = [float(v) if finite_values([v]) else np.nan for v in seed_level]
    if all(np.isnan(kept)):
        return None
    if source == "metrics" and metric in PROMPT_METRICS:
        group.seed_level.append(metric)
    return np.array(kept)[:, None]


def _compute_summary(groups: list[Group], plan: Plan) -> dict[str, Any]:
    """Training FLOPs per group against the reference (safe_rlhf, else the first RL group) and the
    spread among the groups that trained an RL phase; per-phase FLOPs (over seeds, with their interval)
    for the breakdown table."""
    phases: list[str] = []
    breakdown: dict[str, dict[str, Interval]] = {}
    rl_groups = []
    for group in groups:
        per_phase: dict[str, list[float]] = defaultdict(list)
        for job in group.jobs:
            for phase, counts in job.compute.items():
                if isinstance(counts, dict) and finite_values([counts.get("flops")]):
                    per_phase[phase].append(float(counts["flops"]))
                    if phase not in phases:
                        phases.append(phase)
        breakdown[group.name] = {phase: estimate(plan, group.name, np.array(values)[:, None])[0]
                                 for phase, values in per_phase.items()}
        if "rl" in breakdown[group.name] and breakdown[group.name]["rl"].mean > 0:
            rl_groups.append(group)
    flops = {g.name: g.perf["flops"].mean for g in groups if g.perf.get("flops") is not None and g.perf["flops"].mean > 0}
    reference = "safe_rlhf" if "safe_rlhf" in flops else next((g.name for g in rl_groups if g.name in flops), None)
    rl_flops = [flops[g.name] for g in rl_groups if g.name in flops]
    def position(phase: str) -> tuple[int, int]:
        if phase in PHASE_ORDER:
            return (0, PHASE_ORDER.index(phase))
        return (2, LAST_PHASES.index(phase)) if phase in LAST_PHASES else (1, phases.index(phase))

    return {
        "reference": reference,
        "ratio": {name: value / flops[reference] for name, value in flops.items()} if reference else {},
        "rl_groups": [g.name for g in rl_groups],
        "rl_spread": max(rl_flops) / min(rl_flops) if len(rl_flops) > 1 else None,
        "phases": sorted(phases, key=position),
        "breakdown": breakdown,
    }


def compare(jobs: list[Job], replicates: int = DEFAULT_REPLICATES, seed: int = 0) -> Comparison:
    """Aggregate jobs into the comparison (pure function of the loaded jobs and the bootstrap seed).

    ``replicates`` is raised when the family of tests is large (``significance.replicates_for``)."""
    ok_jobs = [job for job in jobs if job.ok]
    failed_jobs = [job for job in jobs if not job.ok]
    columns = [c for c in EVAL_COLUMNS if not c.optional or any(job.metrics.get(c.key) is not None for job in ok_jobs)]
    perf_columns = list(PERF_COLUMNS)

    members: dict[str, list[Job]] = defaultdict(list)
    for job in ok_jobs:
        members[_group_key(job)].append(job)
    order = sorted(members, key=lambda k: (algo_sort_key(members[k][0].algo), (members[k][0].tradeoff or {}).get("point") or 0))
    groups = [Group(name=key, algo=members[key][0].algo, tradeoff=members[key][0].tradeoff, jobs=members[key],
                    n_failed=sum(_group_key(job) == key for job in failed_jobs),
                    notes=[f"seed {job.seed}: {note}" for job in members[key] for note in job.notes]) for key in order]

    ids, kinds = _universe(ok_jobs)
    index = {pid: i for i, pid in enumerate(ids)}
    plain = [g.name for g in groups if not g.tradeoff]
    tested = [m for m in significance.TESTED if any(c.key == m for c in columns)]
    ranked = [c for c in columns if c.ranked]
    # the most tests the report may make: every group against two references, every column's leader
    family = 2 * max(0, len(plain) - 1) * len(tested) + len(ranked) * max(0, len(groups) - 1)
    replicates = significance.replicates_for(family, replicates)
    plan = Plan(kinds, slots=max((g.n for g in groups), default=1), replicates=replicates, seed=seed)
    means: dict[tuple[str, str], float] = {}
    samples: dict[tuple[str, str], np.ndarray] = {}
    estimates: dict[tuple[str, str], Interval] = {}
    for group in groups:
        for source, cols in (("metrics", columns), ("perf", perf_columns)):
            for column in cols:
                values = _values(group, column.key, source, ids, index)
                # one seed stream per group: a replicate's metrics come from the same drawn seeds (joint)
                result = estimate(plan, group.name, values) if values is not None else None
                getattr(group, source)[column.key] = result[0] if result else None
                if result and source == "metrics":
                    estimates[(group.name, column.key)] = result[0]
                    means[(group.name, column.key)], samples[(group.name, column.key)] = result[0].mean, result[1]

    for group in groups:
        if group.seed_level:
            group.notes.append(f"seed-level intervals for {', '.join(m.split('/', 1)[-1] for m in group.seed_level)} "
                               f"(eval_samples.jsonl missing or not matching the summary in some seed)")
    names = [g.name for g in groups]
    best = significance.leaders(names, [(c.key, c.higher_is_better) for c in ranked], means)
    reference_requests = significance.reference_requests(plain, tested)
    star_requests = significance.star_requests(names, best, means)
    tests = significance.family(reference_requests + star_requests, means, samples)
    findings = [tests[r] for r in reference_requests if r in tests]
    star_tests = [tests[r] for r in star_requests if r in tests]
    for metric, name in significance.stars(best, star_requests, tests).items():
        next(g for g in groups if g.name == name).stars.add(metric)
    mean_points = {g: (means[(g, X_METRIC)], means[(g, Y_METRIC)]) for g in plain
                   if (g, X_METRIC) in means and (g, Y_METRIC) in means}
    front, dominance = significance.significant_front(list(mean_points), X_METRIC, Y_METRIC, samples)
    frontiers = build_frontiers(groups, means, samples, estimates)

    seed_points: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for group in groups:
        for job in group.jobs:
            x, y = job.metrics.get(X_METRIC), job.metrics.get(Y_METRIC)
            if finite_values([x]) and finite_values([y]):
                seed_points[group.name].append((float(x), float(y)))

    warnings = _duplicate_warnings(ok_jobs)
    if not ok_jobs:
        warnings.append("no job finished successfully: the table and plots are empty")
    curve_groups = [(g.name, g.jobs) for g in groups if not g.tradeoff] or [(g.name, g.jobs) for g in groups]
    return Comparison(
        columns=columns, perf_columns=perf_columns, groups=groups, failed_jobs=failed_jobs, jobs=jobs,
        replicates=replicates, findings=findings, star_tests=star_tests, front_means=pareto_front(mean_points),
        front=front, dominance=dominance, seed_points=dict(seed_points), frontiers=frontiers,
        hypervolume_tests=hypervolume_tests(frontiers), curves=build_curves(curve_groups),
        compute=_compute_summary(groups, plan), warnings=warnings,
    )


def _duplicate_warnings(ok_jobs: list[Job]) -> list[str]:
    """Two ok jobs with the same (group, seed) would be averaged as independent seeds: say so."""
    seen: dict[tuple[str, Any], int] = defaultdict(int)
    for job in ok_jobs:
        seen[(_group_key(job), job.seed)] += 1
    return [
        f"{group} seed {seed} appears in {count} jobs; all are averaged as separate seeds"
        for (group, seed), count in sorted(seen.items(), key=lambda item: str(item[0]))
        if count > 1
    ]


def to_data(comparison: Comparison, root_label: str) -> dict[str, Any]:
    """JSON-ready form of the comparison, written as ``report_data.json``."""

    def estimates(values: dict[str, Interval | None]) -> dict[str, Any]:
        return {key: est.to_dict() if est else None for key, est in values.items()}

    return {
        "root": root_label,
        "statistics": {"interval": "95% percentile bootstrap, seeds then prompts within each seed (stratified by "
                                   "prompt kind)", "replicates": comparison.replicates,
                       "tests": "two-sided bootstrap p-values; Holm-adjusted over the reference and star tests together, "
                                "the dominance tests and the hypervolume tests each a family of their own",
                       "alpha": significance.ALPHA},
        "columns": [{"key": c.key, "higher_is_better": c.higher_is_better} for c in comparison.columns],
        "perf_columns": [c.key for c in comparison.perf_columns],
        "algos": [
            {
                "group": g.name, "algo": g.algo, "label": g.label, "tradeoff": g.tradeoff, "oracle": g.oracle,
                "status": g.status, "seeds": g.seeds, "n_ok": g.n, "n_failed": g.n_failed,
                "metrics": estimates(g.metrics), "perf": estimates(g.perf), "best": sorted(g.stars), "notes": g.notes,
            }
            for g in comparison.groups
        ],
        "significance": {"against_references": [f.to_dict() for f in comparison.findings],
                         "stars": [f.to_dict() for f in comparison.star_tests]},
        "pareto": {"x": X_METRIC, "y": Y_METRIC,
                   "means": {g.name: [g.metrics[X_METRIC].mean, g.metrics[Y_METRIC].mean]
                             for g in comparison.plain_groups if g.metrics.get(X_METRIC) and g.metrics.get(Y_METRIC)},
                   "front_of_means": comparison.front_means, "front": comparison.front,
                   "significant_dominance": comparison.dominance},
        "frontiers": [f.to_dict() for f in comparison.frontiers],
        "hypervolume_tests": [t.to_dict() for t in comparison.hypervolume_tests],
        "compute": {**comparison.compute,
                    "breakdown": {group: {phase: est.to_dict() for phase, est in phases.items()}
                                  for group, phases in comparison.compute["breakdown"].items()}},
        "curves": {axis: {metric: {group: curve.to_dict() for group, curve in by_group.items()}
                          for metric, by_group in by_metric.items()} for axis, by_metric in comparison.curves.items()},
        "jobs": [_job_data(job) for job in comparison.jobs],
        "failed": [_job_data(job) for job in comparison.failed_jobs],
        "sweep_commands": comparison.sweep_commands,
        "warnings": comparison.warnings,
    }


def _job_data(job: Job) -> dict[str, Any]:
    return {
        "dir": str(job.job_dir), "algo": job.algo, "seed": job.seed, "status": job.status, "error": job.error,
        "notes": job.notes, "overrides": job.overrides, "command": job.command, "sweep_command": job.sweep_command,
        "tradeoff": job.tradeoff, "training_signals": job.training_signals,
    }
