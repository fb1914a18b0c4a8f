"""Find the jobs under a directory and load each one into a :class:`Job`, failures included.

A job is any folder holding ``summary.json`` (Hydra multirun ``multirun/DATE/TIME/<n>/`` or a
single run ``outputs/DATE/TIME/``). A folder with a ``.hydra/`` but no summary is a job that died
before writing one: it becomes a failed job rather than vanishing, because a silently missing
seed is exactly the bias a head-to-head comparison must not hide.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignbench.report.outcomes import PromptOutcomes, read_outcomes
from alignbench.summary import HISTORY_FILE, SUMMARY_FILE, SummaryError, read_history, read_summary

log = logging.getLogger(__name__)

HYDRA_DIR = ".hydra"
MULTIRUN_FILE = "multirun.yaml"
# Folders never worth descending into: Hydra metadata, logger output, checkpoints, caches.
_SKIP_DIRS = {HYDRA_DIR, "wandb", "lightning_logs", "checkpoints", "__pycache__", ".git"}


@dataclass
class Job:
    """One job as the report sees it; ``status`` is ``ok`` or ``failed`` and ``error`` says why."""

    job_dir: Path
    algo: str
    seed: int | None
    status: str
    error: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    perf: dict[str, Any] = field(default_factory=dict)
    overrides: list[str] = field(default_factory=list)
    history: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    sweep_command: str | None = None  # the multirun command line this job came from, if known
    script: str = "run.py"
    tradeoff: dict[str, Any] | None = None  # experiment=frontier: {"knob", "value", "point"}
    training_signals: dict[str, Any] | None = None  # where its training signals came from (issue 19)
    outcomes: PromptOutcomes | None = None  # per-prompt evaluation outcomes (eval_samples.jsonl)
    compute: dict[str, Any] = field(default_factory=dict)  # summary.json's per-phase compute counts

    @property
    def oracle(self) -> bool:
        """Trained on the world's ground truth (``signals=oracle``, summary.json's ``upper_bound``): an
        upper bound, not a peer."""
        signals = self.training_signals if isinstance(self.training_signals, dict) else {}
        return signals_source(signals) == "oracle" or bool(signals.get("upper_bound"))

    @property
    def command(self) -> str:
        """Command that reruns exactly this job: the script with this job's own overrides."""
        return " ".join(["python", self.script, *self.overrides])

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def label(self, root: Path) -> str:
        """Job path relative to the report root: short, and unique within one report."""
        try:
            return str(self.job_dir.relative_to(root)) or "."
        except ValueError:
            return str(self.job_dir)


def signals_source(signals: Any) -> str | None:
    """``training_signals["source"]`` ("learned", "oracle", ...); "oracle" when any signal is the oracle."""
    if not isinstance(signals, dict):
        return None
    source = signals.get("source")
    if isinstance(source, dict):  # one source per signal
        values = {str(v) for v in source.values()}
        return "oracle" if "oracle" in values else ", ".join(sorted(values)) or None
    return None if source is None else str(source)


def eval_threshold(job_dir: Path) -> float:
    """The job's ``eval.threshold`` (d of the violation rate) from ``.hydra/config.yaml``; 0.0 by default."""
    config = _load_yaml(job_dir / HYDRA_DIR / "config.yaml")
    value = (config.get("eval") or {}).get("threshold") if isinstance(config, dict) else None
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


def find_job_dirs(root: Path) -> list[Path]:
    """Every job folder under ``root`` (``root`` itself included), in a stable order.

    The walk stops at a job folder: what lies below one (checkpoints, logger files) is the job's
    own business, and skipping it keeps the scan fast on big output trees.
    """
    found = []
    for current, dirnames, filenames in os.walk(root):
        here = Path(current)
        if SUMMARY_FILE in filenames or HYDRA_DIR in dirnames:
            found.append(here)
            dirnames[:] = []
            continue
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
    return sorted(found, key=_natural_key)


def _natural_key(path: Path) -> list[Any]:
    """Sort ``.../10`` after ``.../9``: Hydra numbers multirun jobs without zero padding."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in path.parts]


def _load_yaml(path: Path) -> Any:
    """Parse a Hydra YAML file; ``None`` when absent or unreadable (the report degrades, not dies)."""
    if not path.is_file():
        return None
    try:
        import yaml  # PyYAML ships with hydra/omegaconf; imported lazily to keep the module light

        return yaml.safe_load(path.read_text())
    except Exception as exc:  # a broken YAML must not take the report down
        log.warning("could not read %s: %s", path, exc)
        return None


def hydra_overrides(job_dir: Path) -> list[str]:
    """The job's own overrides from ``.hydra/overrides.yaml`` (e.g. ``["algo=ppo", "seed=1"]``)."""
    data = _load_yaml(job_dir / HYDRA_DIR / "overrides.yaml")
    return [str(item) for item in data] if isinstance(data, list) else []


def override_value(overrides: list[str], key: str) -> str | None:
    """Value of ``key`` in a Hydra override list, tolerating ``+key=`` / ``++key=`` forms."""
    for item in overrides:
        name, sep, value = item.partition("=")
        if sep and name.lstrip("+~") == key:
            return value
    return None


@dataclass(frozen=True)
class Sweep:
    """What ``multirun.yaml`` tells about a sweep: the script name and the launching command."""

    script: str
    command: str


def read_sweep(sweep_dir: Path) -> Sweep | None:
    """Rebuild the command that launched a sweep from its ``multirun.yaml``.

    Hydra stores the user's overrides under ``hydra.overrides.task`` and its own (always
    ``hydra.mode=MULTIRUN`` for a sweep, which is the ``-m`` flag) under ``hydra.overrides.hydra``;
    ``hydra.job.name`` is the script name. ``hydra.job.override_dirname`` is the fallback when the
    override lists are absent.
    """
    data = _load_yaml(sweep_dir / MULTIRUN_FILE)
    hydra = data.get("hydra") if isinstance(data, dict) else None
    if not isinstance(hydra, dict):
        return None
    job = hydra.get("job") or {}
    overrides = hydra.get("overrides") or {}
    hydra_args = [str(o) for o in overrides.get("hydra") or [] if str(o) != "hydra.mode=MULTIRUN"]
    task = [str(o) for o in overrides.get("task") or []]
    if not task and job.get("override_dirname"):
        task = [str(job["override_dirname"])]
    script = f"{job.get('name') or 'run'}.py"
    return Sweep(script=script, command=" ".join(["python", script, "-m", *hydra_args, *task]))


def _sweep_dir_of(job_dir: Path, root: Path) -> Path | None:
    """Nearest ancestor (up to ``root``) holding ``multirun.yaml``: the sweep the job belongs to."""
    for candidate in [job_dir, *job_dir.parents]:
        if (candidate / MULTIRUN_FILE).is_file():
            return candidate
        if candidate == root:
            break
    return None


def _failed_without_summary(job_dir: Path, reason: str) -> Job:
    """A job whose summary is missing or unreadable: identify it from its Hydra overrides."""
    overrides = hydra_overrides(job_dir)
    seed = override_value(overrides, "seed")
    return Job(
        job_dir=job_dir,
        algo=override_value(overrides, "algo") or "unknown",
        seed=int(seed) if seed and seed.lstrip("-").isdigit() else None,
        status="failed",
        error=reason,
        overrides=overrides,
    )


def load_job(job_dir: Path, expected_metrics: tuple[str, ...] = ()) -> Job:
    """Load one job; every problem becomes a failed job or a note, never an exception."""
    if not (job_dir / SUMMARY_FILE).exists():
        return _failed_without_summary(job_dir, f"missing {SUMMARY_FILE}")
    try:
        summary = read_summary(job_dir)
    except SummaryError as exc:
        return _failed_without_summary(job_dir, str(exc))
    job = Job(
        job_dir=job_dir,
        algo=str(summary["algo"]),
        seed=summary["seed"],
        status=summary["status"],
        error=summary["error"],
        metrics=dict(summary["metrics"]),
        perf=dict(summary["perf"]),
        overrides=[str(o) for o in summary["overrides"]] or hydra_overrides(job_dir),
        tradeoff=summary.get("tradeoff") if isinstance(summary.get("tradeoff"), dict) else None,
        training_signals=summary.get("training_signals"),
        compute=summary.get("compute") if isinstance(summary.get("compute"), dict) else {},
    )
    if job.ok:
        job.outcomes = read_outcomes(job_dir, eval_threshold(job_dir))
    try:
        job.history = read_history(job_dir)
    except SummaryError as exc:
        job.notes.append(f"unreadable {HISTORY_FILE}: {exc}")
    if job.ok:
        missing = [name for name in expected_metrics if job.metrics.get(name) is None]
        if missing:
            job.notes.append("missing metrics: " + ", ".join(missing))
    return job


def load_jobs(root: Path, expected_metrics: tuple[str, ...] = ()) -> list[Job]:
    """Load every job under ``root`` and attach the command of the sweep each belongs to."""
    root = Path(root).resolve()
    jobs = []
    for job_dir in find_job_dirs(root):
        job = load_job(job_dir, expected_metrics)
        sweep_dir = _sweep_dir_of(job_dir, root)
        sweep = read_sweep(sweep_dir) if sweep_dir else None
        if sweep:
            job.sweep_command, job.script = sweep.command, sweep.script
        jobs.append(job)
    return jobs
