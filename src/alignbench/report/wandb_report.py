"""The local comparison as a W&B Report (``wandb_workspaces.reports.v2``), or its offline spec.

The report is first described by a plain, JSON-ready *plan* (:func:`plan_report`): title, the
runset filter and grouping, the panels, the Markdown table. :func:`to_report` turns the plan into
``wandb_workspaces`` objects; ``--dry-run`` writes both the plan and the library's own
serialisation (``Report._to_model().model_dump()``, the viewspec W&B stores) without going online.

Network facts checked in wandb-workspaces 0.4.13 (``reports/v2/interface.py``):

* importing the package imports ``wandb`` but does not log in;
* ``Report(entity=...)`` left unset calls ``wandb.Api()`` for the default entity, so the dry run
  always passes an entity (``""`` when unknown);
* ``Runset._to_model`` looks the project's internal id up over GraphQL whenever the runset has
  both entity and project, so the dry run leaves them empty on the runset -- the report-level
  project still names them, and the online path fills them in;
* ``Base._spec`` is broken in this version (name-mangled ``__to_model``), hence ``_to_model()``.

Assumption shared with the training code (``training/sink.py``): each W&B run's config holds the
composed Hydra config, so the algorithm is config key ``algo.name``, and its run *group* is the
experiment name (``experiment=head_to_head`` gives group ``head_to_head``); ``--group`` and
``--group-by`` override both.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

from alignbench.report.aggregate import X_METRIC, Y_METRIC
from alignbench.report.build import ReportResult
from alignbench.report.curves import CURVE_METRICS
from alignbench.report.jobs import override_value
from alignbench.report.render import frontier_markdown, results_markdown, significance_markdown, view

SPEC_FILE = "wandb_report.json"
DEFAULT_PROJECT = "alignbench"
# Runset grouping: one colour per algorithm. The training sink logs the composed config, where
# ``algo`` is a nested node (``AlgoConfig``: name, steps, ...), so the algorithm is ``algo.name``;
# override with ``--group-by algo`` if runs carry a flat ``algo`` key instead.
DEFAULT_GROUP_KEY = "algo.name"
# training curves on the RL iteration (the sink logs ``iteration/rl`` with every RL row), never the global step
RL_ITERATION = "iteration/rl"
COMPUTE_METRIC = "perf/flops"  # training FLOPs so far (the run summary holds the job's total)


class WandbUnavailable(RuntimeError):
    """wandb-workspaces is not installed (or fails to import): no W&B report, local one unaffected."""


def default_group(result: ReportResult) -> str:
    """The W&B run group to filter on: the ``experiment=`` override shared by the jobs, else the
    sweep folder's name."""
    for job in result.comparison.jobs:
        experiment = override_value(job.overrides, "experiment_name") or override_value(job.overrides, "experiment")
        if experiment:
            return experiment
    return result.root.name


def plan_report(
    result: ReportResult,
    project: str | None = None,
    entity: str | None = None,
    group: str | None = None,
    group_by: str | None = None,
) -> dict[str, Any]:
    """JSON-ready description of the W&B report; the single source both outputs are built from."""
    group = group or default_group(result)
    group_by = group_by or DEFAULT_GROUP_KEY
    model = view(result.comparison, result.root)
    logged = {metric for by_metric in result.comparison.curves.values() for metric in by_metric}
    markdown = ["## Results (local aggregation)", "", results_markdown(model), "", "## What is significant", "",
                *significance_markdown(model)]
    if model["has_frontiers"]:
        markdown += ["## Trade-off frontiers", "", *frontier_markdown(model)]
    return {
        "entity": entity if entity is not None else os.environ.get("WANDB_ENTITY", ""),
        "project": project or os.environ.get("WANDB_PROJECT", DEFAULT_PROJECT),
        "title": f"alignbench head-to-head: {group}"[:128],
        "description": f"Safety-alignment algorithms compared on {X_METRIC} vs {Y_METRIC}, grouped by algo.",
        "runset": {"name": group, "filters": f"Group = '{group}'", "groupby": [f"config.{group_by}"]},
        "panels": [
            {"type": "ScatterPlot", "title": "Helpfulness vs unsafe rate (a frontier sweep: every knob value)",
             "x": X_METRIC, "y": Y_METRIC},
            {"type": "ScatterPlot", "title": "Unsafe rate vs training FLOPs", "x": COMPUTE_METRIC, "y": Y_METRIC},
            {"type": "ScatterPlot", "title": "Helpfulness vs training FLOPs", "x": COMPUTE_METRIC, "y": X_METRIC},
            *({"type": "ScatterPlot", "title": "Over-refusal vs unsafe rate (frontier, second panel)",
               "x": "eval/over_refusal_rate", "y": Y_METRIC} for _ in range(model["has_frontiers"])),
            *(
                {"type": "LinePlot", "title": f"{metric} by RL iteration", "x": RL_ITERATION, "y": [metric],
                 "groupby": group_by}
                for metric in CURVE_METRICS if metric in logged
            ),
        ],
        "pareto_front": result.comparison.front,
        "markdown": "\n".join(markdown),
    }


def _wr():
    """Import the reports API lazily: it pulls in wandb, which the local report never needs."""
    try:
        with warnings.catch_warnings():  # its pydantic-v1 validators warn on import: noise for users
            warnings.simplefilter("ignore", DeprecationWarning)
            import wandb_workspaces.reports.v2 as wr
    except Exception as exc:  # ImportError, or wandb failing at import on a broken install
        raise WandbUnavailable(f"wandb-workspaces is unavailable ({exc}); pip install wandb-workspaces") from exc
    return wr


def _panel(wr, spec: dict[str, Any]):
    """One plan panel as a ``wandb_workspaces`` panel object."""
    if spec["type"] == "ScatterPlot":
        return wr.ScatterPlot(title=spec["title"], x=wr.SummaryMetric(spec["x"]), y=wr.SummaryMetric(spec["y"]))
    return wr.LinePlot(
        title=spec["title"],
        x=spec["x"],
        y=list(spec["y"]),
        groupby=wr.Config(spec["groupby"]),
        groupby_aggfunc="mean",
        groupby_rangefunc="stderr",
    )


def to_report(plan: dict[str, Any], online: bool):
    """Build the ``wr.Report``; with ``online=False`` the runset carries no entity/project so that
    serialising it stays offline (see the module docstring)."""
    wr = _wr()
    runset = wr.Runset(
        entity=plan["entity"] if online else "",
        project=plan["project"] if online else "",
        name=plan["runset"]["name"],
        filters=plan["runset"]["filters"],
        groupby=list(plan["runset"]["groupby"]),
    )
    kwargs = {"entity": plan["entity"]} if plan["entity"] or not online else {}
    return wr.Report(
        project=plan["project"],
        title=plan["title"],
        description=plan["description"],
        blocks=[
            wr.H1(plan["title"]),
            wr.P(plan["description"]),
            wr.PanelGrid(runsets=[runset], panels=[_panel(wr, p) for p in plan["panels"]]),
            wr.MarkdownBlock(text=plan["markdown"]),
        ],
        **kwargs,
    )


def write_dry_run(result: ReportResult, out_path: Path | None = None, **plan_args: Any) -> Path:
    """Write ``wandb_report.json`` (plan + library viewspec) without any network access.

    If wandb-workspaces is missing the plan is still written, with ``viewspec: null`` and the
    reason, so a dry run is useful on any machine.
    """
    plan = plan_report(result, **plan_args)
    spec: dict[str, Any] = {"format": "alignbench-wandb-report/1", "plan": plan}
    try:
        report = to_report(plan, online=False)
        spec["viewspec"] = report._to_model().model_dump(by_alias=True, exclude_none=True, mode="json")
    except WandbUnavailable as exc:
        spec["viewspec"], spec["viewspec_error"] = None, str(exc)
    out_path = Path(out_path) if out_path is not None else result.out_dir / SPEC_FILE
    out_path.write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")
    return out_path


def publish(result: ReportResult, **plan_args: Any) -> str:
    """Create the report on W&B (network, login required) and return its URL."""
    report = to_report(plan_report(result, **plan_args), online=True)
    report.save()
    return report.url
