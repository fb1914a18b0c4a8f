"""``build_report``: jobs on disk in, report files out. The one entry point the CLI and callback use."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from alignbench.report.aggregate import REQUIRED_EVAL, Comparison, compare, to_data
from alignbench.report.bootstrap import DEFAULT_REPLICATES
from alignbench.report.jobs import load_jobs
from alignbench.report.plots import plot_compute, plot_curves, plot_frontiers, plot_pareto
from alignbench.report.render import render_html, render_markdown, render_text_table, view

HTML_FILE = "report.html"
MARKDOWN_FILE = "report.md"
DATA_FILE = "report_data.json"
# figure name -> file; frontier.png only when the sweep has trade-off knobs
IMAGE_FILES = {"pareto": "pareto.png", "compute": "compute.png", "frontier": "frontier.png", "curves": "curves.png",
               "curves_compute": "curves_compute.png"}


class NoJobsError(ValueError):
    """The directory holds no job at all: nothing to report (the CLI turns this into exit 1)."""


@dataclass
class ReportResult:
    """Where the report went and what it says; ``comparison`` is the aggregated data itself."""

    root: Path
    out_dir: Path
    html: Path
    markdown: Path
    images: dict[str, Path]
    data_json: Path
    comparison: Comparison
    text_table: str

    @property
    def pareto_png(self) -> Path:
        return self.images["pareto"]

    @property
    def curves_png(self) -> Path:
        return self.images["curves"]

    @property
    def paths(self) -> list[Path]:
        return [self.html, self.markdown, *self.images.values(), self.data_json]


def build_report(root: Path, out_dir: Path | None = None, replicates: int = DEFAULT_REPLICATES) -> ReportResult:
    """Read every job under ``root`` and write the report into ``out_dir`` (default: ``root``).

    Failed or summary-less jobs are part of the report, not errors; only a directory without any
    job raises :class:`NoJobsError`. ``replicates``: bootstrap replicates behind every interval and test.
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise NoJobsError(f"{root} is not a directory")
    jobs = load_jobs(root, REQUIRED_EVAL)
    if not jobs:
        raise NoJobsError(f"no jobs under {root} (no folder with summary.json or .hydra/)")
    out = Path(out_dir).resolve() if out_dir is not None else root
    out.mkdir(parents=True, exist_ok=True)

    comparison = compare(jobs, replicates=replicates)
    images = {"pareto": plot_pareto(comparison, out / IMAGE_FILES["pareto"]),
              "compute": plot_compute(comparison, out / IMAGE_FILES["compute"])}
    if comparison.frontiers:
        images["frontier"] = plot_frontiers(comparison, out / IMAGE_FILES["frontier"])
    images["curves"] = plot_curves(comparison, out / IMAGE_FILES["curves"], "iteration")
    images["curves_compute"] = plot_curves(comparison, out / IMAGE_FILES["curves_compute"], "compute")
    model = view(comparison, root)

    markdown = out / MARKDOWN_FILE
    markdown.write_text(render_markdown(model, {name: path.name for name, path in images.items()}), encoding="utf-8")
    html = out / HTML_FILE
    html.write_text(render_html(model, images), encoding="utf-8")
    data = out / DATA_FILE
    data.write_text(json.dumps(to_data(comparison, str(root)), indent=2) + "\n", encoding="utf-8")
    return ReportResult(root=root, out_dir=out, html=html, markdown=markdown, images=images, data_json=data,
                        comparison=comparison, text_table=render_text_table(model))
