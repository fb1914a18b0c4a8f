"""Render the comparison as Markdown, self-contained HTML (jinja2) and a terminal table.

All three read one view model built by :func:`view`, so a cell reads the same everywhere:
``mean ± half-width (n=k)`` with a ★ on the best algo per column.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from alignbench.report.aggregate import X_METRIC, Y_METRIC, Column, Comparison
from alignbench.report.stats import Estimate

BEST = "★"
MISSING = "—"
TEMPLATE = "report.html.j2"


@dataclass
class Cell:
    text: str
    best: bool = False


@dataclass
class Row:
    """One table line: an algo aggregated over seeds, or one failed job."""

    algo: str
    status: str
    seeds: str
    cells: list[Cell]
    perf: list[Cell]
    notes: list[str] = field(default_factory=list)
    failed: bool = False


def _perf_text(est: Estimate | None) -> str:
    """Compute columns read best as plain means; large counts get thousands separators."""
    if est is None:
        return MISSING
    value = f"{est.mean:,.0f}" if abs(est.mean) >= 1000 else f"{est.mean:.4g}"
    return f"{value} (n={est.n})"


def _one_line(text: str | None, limit: int = 160) -> str:
    """First line of an error, shortened for a table cell (the failed-jobs section has it whole)."""
    first = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return first if len(first) <= limit else first[: limit - 1] + "…"


def view(comparison: Comparison, root: Path) -> dict[str, Any]:
    """Everything a renderer needs, as plain strings: no formatting decisions left to templates."""
    rows = [
        Row(
            algo=row.algo,
            status=row.status,
            seeds=", ".join(str(s) for s in row.seeds),
            cells=[
                Cell(est.format() if (est := row.metrics.get(c.key)) else MISSING, c.key in row.best)
                for c in comparison.columns
            ],
            perf=[Cell(_perf_text(row.perf.get(c.key)), c.key in row.best) for c in comparison.perf_columns],
            notes=row.notes,
        )
        for row in comparison.rows
    ]
    rows += [
        Row(
            algo=job.algo,
            status="failed",
            seeds=str(job.seed) if job.seed is not None else "?",
            cells=[Cell(MISSING) for _ in comparison.columns],
            perf=[Cell(MISSING) for _ in comparison.perf_columns],
            notes=[_one_line(job.error)],
            failed=True,
        )
        for job in comparison.failed_jobs
    ]
    single_seed = [row.algo for row in comparison.rows if len(row.seeds) == 1]
    return {
        "root": str(root),
        "n_jobs": len(comparison.jobs),
        "n_ok": len(comparison.jobs) - len(comparison.failed_jobs),
        "n_failed": len(comparison.failed_jobs),
        "columns": comparison.columns,
        "perf_columns": comparison.perf_columns,
        "rows": rows,
        "front": comparison.front,
        "single_seed": single_seed,
        "x_metric": X_METRIC,
        "y_metric": Y_METRIC,
        "sweep_commands": comparison.sweep_commands,
        "failed": [
            {"path": job.label(root), "algo": job.algo, "seed": job.seed, "error": job.error or "unknown error"}
            for job in comparison.failed_jobs
        ],
        "jobs": [
            {
                "path": job.label(root),
                "algo": job.algo,
                "seed": job.seed,
                "status": job.status,
                "command": job.command,
                "overrides": " ".join(job.overrides),
                "notes": job.notes,
            }
            for job in comparison.jobs
        ],
        "warnings": comparison.warnings,
        "best_mark": BEST,
    }


def _column_header(column: Column) -> str:
    return f"{column.title} {column.arrow}"


def _md_escape(text: str) -> str:
    """Keep user text (errors, overrides) from breaking a Markdown table row."""
    return text.replace("\\", "\\\\").replace("|", "\\|").replace("\n", " ")


def _md_cell(cell: Cell) -> str:
    return f"**{cell.text}** {BEST}" if cell.best else cell.text


def _md_table(header: list[str], lines: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_md_escape(cell) for cell in line) + " |" for line in lines]
    return out


def results_markdown(model: dict[str, Any]) -> str:
    """The results table with its legend (also the table block of the W&B report)."""
    legend = (f"Mean ± 95% t-interval over seeds (n = seeds with the metric); {BEST} = best per column "
              "(↑ higher is better, ↓ lower is better).")
    header = ["algo", "status", "seeds", *(_column_header(c) for c in model["columns"]), "notes"]
    lines = [[r.algo, r.status, r.seeds, *(_md_cell(c) for c in r.cells), "; ".join(r.notes)] for r in model["rows"]]
    return "\n".join([legend, "", *_md_table(header, lines)])


def render_markdown(model: dict[str, Any], images: dict[str, str]) -> str:
    """``report.md``: the same sections as the HTML, with images linked next to the file."""
    md = ["# alignbench head-to-head report", ""]
    md.append(f"Root: `{model['root']}` · {model['n_jobs']} jobs ({model['n_ok']} ok, {model['n_failed']} failed)")
    md.append("")
    if model["sweep_commands"]:
        md += ["## Command", "", "```", *model["sweep_commands"], "```", ""]
    md += ["## Helpfulness vs unsafe rate", "", f"![Pareto plot]({images['pareto']})", ""]
    md.append("Pareto front over algo means (max helpfulness, min unsafe rate): " + (", ".join(model["front"]) or MISSING))
    if model["single_seed"]:
        md.append(f"Single seed, so no confidence interval: {', '.join(model['single_seed'])}.")
    md += ["", "## Results", "", results_markdown(model), "", "## Compute", ""]
    header = ["algo", "status", *(_column_header(c) for c in model["perf_columns"])]
    md += _md_table(header, [[r.algo, r.status, *(_md_cell(c) for c in r.perf)] for r in model["rows"]])
    md += ["", "## Training curves", "", f"![Training curves]({images['curves']})", ""]
    md += ["## Failed jobs", ""]
    if not model["failed"]:
        md.append("None.")
    for job in model["failed"]:
        md += [f"- `{job['path']}` ({job['algo']}, seed {job['seed']}):", "", "  ```", f"  {job['error']}", "  ```"]
    md.append("")
    if model["warnings"]:
        md += ["## Warnings", "", *(f"- {w}" for w in model["warnings"]), ""]
    md += ["## Jobs", ""]
    header = ["job", "algo", "seed", "status", "command", "notes"]
    lines = [
        [f"`{j['path']}`", j["algo"], str(j["seed"]), j["status"], f"`{j['command']}`", "; ".join(j["notes"])]
        for j in model["jobs"]
    ]
    md += _md_table(header, lines)
    return "\n".join(md) + "\n"


def data_uri(png: Path) -> str:
    """Embed a PNG so the HTML is one file that opens anywhere, offline, attachments and all."""
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")


def render_html(model: dict[str, Any], images: dict[str, Path]) -> str:
    """``report.html`` from the packaged jinja2 template, images inlined as data URIs."""
    import jinja2

    source = resources.files("alignbench.report").joinpath("templates", TEMPLATE).read_text(encoding="utf-8")
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True)
    template = env.from_string(source)
    return template.render(**model, images={name: data_uri(path) for name, path in images.items()})


def render_text_table(model: dict[str, Any]) -> str:
    """Short fixed-width table for the terminal: the two Pareto axes and the job status."""
    keys = [c.key for c in model["columns"]]
    picks = [keys.index(key) for key in (Y_METRIC, X_METRIC) if key in keys]
    header = ["algo", "status", "seeds", *(model["columns"][i].title for i in picks)]
    lines = [header] + [
        [r.algo, r.status, r.seeds, *((r.cells[i].text + (f" {BEST}" if r.cells[i].best else "")) for i in picks)]
        for r in model["rows"]
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines)
