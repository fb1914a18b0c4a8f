"""``build_report``: jobs on disk in, report files out. The one entry point the CLI and callback use."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from alignbench.report.aggregate import REQUIRED_EVAL, Comparison, compare, to_data
from alignbench.report.jobs import load_jobs
from alignbench.report.plots import plot_curves, plot_pareto
from alignbench.report.render import render_html, render_markdown, render_text_table, view

HTML_FILE = "report.html"
MARKDOWN_FILE = "report.md"
PARETO_FILE = "pareto.png"
CURVES_FILE = "curves.png"
DATA_FILE = "report_data.json"


class NoJobsError(ValueError):
    """The directory holds no job at all: nothing to report (the CLI turns this into exit 1)."""


@dataclass
class ReportResult:
    """Where the report went and what it says; ``comparison`` is the aggregated data itself."""

    root: Path
    out_dir: Path
    html: Path
    markdown: Path
    pareto_png: Path
    curves_png: Path
    data_json: Path
    comparison: Comparison
    text_table: str

    @property
    def paths(self) -> list[Path]:
        return [self.html, self.markdown, self.pareto_png, self.curves_png, self.data_json]


def build_report(root: Path, out_dir: Path | None = None) -> ReportResult:
    """Read every job under ``root`` and write the report into ``out_dir`` (default: ``root``).

    Failed or summary-less jobs are part of the report, not errors; only a directory without any
    job raises :class:`NoJobsError`.
    """
    root = Path(root).resolve()
    if not root.is_dir():
        raise NoJobsError(f"{root} is not a directory")
    jobs = load_jobs(root, REQUIRED_EVAL)
    if not jobs:
        raise NoJobsError(f"no jobs under {root} (no folder with summary.json or .hydra/)")
    out = Path(out_dir).resolve() if out_dir is not None else root
    out.mkdir(parents=True, exist_ok=True)

    comparison = compare(jobs)
    pareto = plot_pareto(comparison, out / PARETO_FILE)
    curves = plot_curves(comparison, out / CURVES_FILE)
    model = view(comparison, root)

    markdown = out / MARKDOWN_FILE
    markdown.write_text(render_markdown(model, {"pareto": PARETO_FILE, "curves": CURVES_FILE}), encoding="utf-8")
    html = out / HTML_FILE
    html.write_text(render_html(model, {"pareto": pareto, "curves": curves}), encoding="utf-8")
    data = out / DATA_FILE
    data.write_text(json.dumps(to_data(comparison, str(root)), indent=2) + "\n", encoding="utf-8")
    return ReportResult(
        root=root,
        out_dir=out,
        html=html,
        markdown=markdown,
        pareto_png=pareto,
        curves_png=curves,
        data_json=data,
        comparison=comparison,
        text_table=render_text_table(model),
    )
