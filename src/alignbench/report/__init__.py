"""Comparison report over a sweep's job folders: ``report.html``, ``report.md``, plots, JSON data.

Reads files only (``summary.json``, ``history.jsonl``, Hydra's YAML) and must never import torch,
lightning, transformers or training code: reports are built on laptops without the training stack.
matplotlib and jinja2 are imported lazily, when a figure or the HTML is actually produced.

Entry points: :func:`build_report` (library), ``python -m alignbench.report DIR`` (CLI),
:class:`alignbench.report.callback.ReportCallback` (Hydra, after a multirun) and
:mod:`alignbench.report.wandb_report` (the same comparison as a W&B Report).
"""

from alignbench.report.aggregate import Comparison, compare
from alignbench.report.build import NoJobsError, ReportResult, build_report
from alignbench.report.jobs import Job, find_job_dirs, load_jobs
from alignbench.report.bootstrap import Interval, holm
from alignbench.report.stats import Estimate, hypervolume, mean_ci, pareto_front, pareto_step

__all__ = [
    "Comparison",
    "Estimate",
    "Interval",
    "Job",
    "NoJobsError",
    "ReportResult",
    "build_report",
    "compare",
    "find_job_dirs",
    "holm",
    "hypervolume",
    "load_jobs",
    "mean_ci",
    "pareto_front",
    "pareto_step",
]
