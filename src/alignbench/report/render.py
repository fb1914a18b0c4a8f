"""Render the comparison as Markdown, self-contained HTML (jinja2) and a terminal table.

All three read one view model built by :func:`view`, so a cell reads the same everywhere:
``mean ± half-width (n=k)`` (half the 95% bootstrap interval's width) with a ★ only on a column's
significant leader.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from alignbench.report.aggregate import ORACLE_MARK, X_METRIC, Y_METRIC, Column, Comparison, value_text
from alignbench.report.bootstrap import Interval
from alignbench.report.significance import ALPHA, format_p

BEST = "★"
MISSING = "—"
TEMPLATE = "report.html.j2"
PHASE_TITLES = {"sft": "SFT", "reward_model": "reward model", "cost_model": "cost model", "rl": "RL",
                "label_model": "label model", "eval": "eval (not training)",
                "monitor": "monitoring (not training)", "export": "export samples (not training)"}


@dataclass
class Cell:
    text: str
    best: bool = False


@dataclass
class Row:
    """One table line: a group aggregated over seeds, or one failed job."""

    label: str
    status: str
    seeds: str
    cells: list[Cell]
    perf: list[Cell]
    notes: list[str] = field(default_factory=list)
    failed: bool = False


def _count(value: float) -> str:
    """Large counts in engineering form (FLOPs 1.23e+12), small ones plain."""
    return f"{value:.3g}" if abs(value) >= 1e6 else f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"


def _perf_text(est: Interval | None) -> str:
    if est is None:
        return MISSING
    if est.half_width is None:
        return f"{_count(est.mean)} (n={est.n})"
    return f"{_count(est.mean)} ± {_count(est.half_width)}"


def _one_line(text: str | None, limit: int = 160) -> str:
    """First line of an error, shortened for a table cell (the failed-jobs section has it whole)."""
    first = (text or "").strip().splitlines()[0] if (text or "").strip() else ""
    return first if len(first) <= limit else first[: limit - 1] + "…"


def _rows(comparison: Comparison) -> list[Row]:
    rows = [
        Row(
            label=g.label, status=g.status, seeds=", ".join(str(s) for s in g.seeds),
            cells=[Cell(est.format() if (est := g.metrics.get(c.key)) else MISSING, c.key in g.stars)
                   for c in comparison.columns],
            perf=[Cell(_perf_text(g.perf.get(c.key))) for c in comparison.perf_columns],
            notes=g.notes,
        )
        for g in comparison.groups
    ]
    rows += [
        Row(label=job.algo, status="failed", seeds=str(job.seed) if job.seed is not None else "?",
            cells=[Cell(MISSING) for _ in comparison.columns], perf=[Cell(MISSING) for _ in comparison.perf_columns],
            notes=[_one_line(job.error)], failed=True)
        for job in comparison.failed_jobs
    ]
    return rows


def _compute_view(comparison: Comparison) -> dict[str, Any]:
    compute = comparison.compute
    reference = compute["reference"]
    label = {g.name: g.label for g in comparison.groups}
    ratio = compute["ratio"]
    rows = [[label[g.name], _perf_text(g.perf.get("flops")), f"{ratio[g.name]:.2f}×" if g.name in ratio else MISSING,
             *(_perf_text(compute["breakdown"].get(g.name, {}).get(p)) if p in compute["breakdown"].get(g.name, {})
               else "0" for p in compute["phases"])]
            for g in comparison.groups]
    spread = compute["rl_spread"]
    if spread is not None:
        rl = [label[name] for name in compute["rl_groups"]]
        lines = [f"Training FLOPs of the {len(rl)} RL groups ({', '.join(rl)}) span a factor of {spread:.2f} "
                 f"(largest / smallest mean); ratios are to {label.get(reference, reference)}."]
    else:
        lines = ["Fewer than two groups trained an RL phase: no compute spread to state."]
    return {"header": ["algo", "training FLOPs", f"× {reference or '—'}",
                       *(PHASE_TITLES.get(p, p) for p in compute["phases"])], "rows": rows, "lines": lines}


def _frontier_view(comparison: Comparison) -> dict[str, Any]:
    rows = []
    for frontier in comparison.frontiers:
        values = ", ".join(value_text(p.value) for p in frontier.points)
        hv = [frontier.hypervolume.get(plane) for plane in ("helpfulness", "refusal")]
        seeds = "/".join(str(p.n) for p in frontier.points)
        rows.append([frontier.algo, frontier.knob.removeprefix("algo."), values, seeds,
                     *(est.format(3).split(" (")[0] if est else MISSING for est in hv)])
    return {"header": ["algo", "knob", "values (sweep order)", "seeds per value", "HV helpfulness × safety",
                       "HV answering × safety"], "rows": rows,
            "tests": [t.sentence() for t in comparison.hypervolume_tests if t.significant],
            "n_tests": len(comparison.hypervolume_tests)}


def view(comparison: Comparison, root: Path) -> dict[str, Any]:
    """Everything a renderer needs, as plain strings: no formatting decisions left to templates."""
    label = {g.name: g.label for g in comparison.groups}
    significant = [f for f in comparison.findings if f.significant]
    stars = [f"{BEST} {c.title}: {label[g.name]}" for c in comparison.columns for g in comparison.groups
             if c.key in g.stars]
    return {
        "root": str(root),
        "n_jobs": len(comparison.jobs),
        "n_ok": len(comparison.jobs) - len(comparison.failed_jobs),
        "n_failed": len(comparison.failed_jobs),
        "columns": comparison.columns,
        "perf_columns": comparison.perf_columns,
        "rows": _rows(comparison),
        "replicates": comparison.replicates,
        "alpha": ALPHA,
        "oracle": [g.label for g in comparison.groups if g.oracle],
        "oracle_mark": ORACLE_MARK,
        "significant": [f.sentence(label) for f in significant],
        "n_tests": len(comparison.findings),
        "references": sorted({f.other for f in comparison.findings}),
        "stars": stars,
        "front": [label[name] for name in comparison.front],
        "front_means": [label[name] for name in comparison.front_means],
        "dominance": [f"{label[d['dominating']]} dominates {label[d['dominated']]} (Holm-adjusted p "
                      f"{'≤' if d['resolution_limited'] else '='} {format_p(d['p_holm'])})" for d in comparison.dominance],
        "n_front_groups": len({g for g in comparison.front} | {d["dominated"] for d in comparison.dominance}),
        "has_frontiers": bool(comparison.frontiers),
        "frontier": _frontier_view(comparison),
        "compute": _compute_view(comparison),
        "x_metric": X_METRIC,
        "y_metric": Y_METRIC,
        "sweep_commands": comparison.sweep_commands,
        "failed": [
            {"path": job.label(root), "algo": job.algo, "seed": job.seed, "error": job.error or "unknown error"}
            for job in comparison.failed_jobs
        ],
        "jobs": [
            {"path": job.label(root), "algo": job.algo, "seed": job.seed, "status": job.status,
             "command": job.command, "notes": job.notes}
            for job in comparison.jobs
        ],
        "notes": [f"{g.label}: {note}" for g in comparison.groups for note in g.notes],
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


def legend(model: dict[str, Any]) -> str:
    """What a cell and a star mean (shared by the Markdown, the HTML and the W&B report)."""
    text = (f"Mean over seeds ± half the width of its 95% interval (hierarchical bootstrap: seeds, then prompts "
            f"within each seed; {model['replicates']} replicates; n = seeds). {BEST} = the column's best mean, marked "
            f"only when its lead over every other row is significant (Holm-adjusted bootstrap test, "
            f"{model['alpha']:.0%}); a column without {BEST} has no significant leader. ↑ higher is better, ↓ lower "
            f"is better.")
    if model["oracle"]:
        text += (f" {model['oracle_mark']} trained on the world's ground truth (signals=oracle): an upper bound, not "
                 f"a like-for-like competitor.")
    return text


def results_markdown(model: dict[str, Any]) -> str:
    """The results table with its legend (also the table block of the W&B report)."""
    header = ["algo", "seeds", *(_column_header(c) for c in model["columns"])]
    lines = [[r.label, r.seeds if not r.failed else f"{r.seeds} (failed)", *(_md_cell(c) for c in r.cells)]
             for r in model["rows"]]
    return "\n".join([legend(model), "", *_md_table(header, lines)])


def significance_markdown(model: dict[str, Any]) -> list[str]:
    """The "What is significant" section's lines."""
    refs = " and ".join(model["references"]) or "no reference (neither sft nor safe_rlhf ran)"
    md = [f"Every algorithm against {refs} on unsafe rate, over-refusal, helpfulness, violation rate and 95th-percentile prompt cost: "
          f"{model['n_tests']} two-sided bootstrap tests, Holm-adjusted together ({model['alpha']:.0%} family-wise).", ""]
    md += [f"- {s}" for s in model["significant"]] or ["- None of these differences is significant."]
    md += ["", "Stars (a column's significant leader): " + ("; ".join(model["stars"]) if model["stars"] else "none."), ""]
    return md


def frontier_markdown(model: dict[str, Any]) -> list[str]:
    """The hypervolume table and its tests (the frontier section's text)."""
    frontier = model["frontier"]
    md = ["Dominated hypervolume (reference point (0, 0); mean ± half the 95% bootstrap interval):", ""]
    md += _md_table(frontier["header"], frontier["rows"])
    md += ["", f"Hypervolume against safe_rlhf's ({frontier['n_tests']} tests, Holm-adjusted):", ""]
    md += [f"- {t}" for t in frontier["tests"]] or ["- No difference is significant."]
    return md + [""]


def render_markdown(model: dict[str, Any], images: dict[str, str]) -> str:
    """``report.md``: the same sections as the HTML, with images linked next to the file."""
    md = ["# alignbench head-to-head report", ""]
    md.append(f"Root: `{model['root']}` · {model['n_jobs']} jobs ({model['n_ok']} ok, {model['n_failed']} failed)")
    md.append("")
    if model["sweep_commands"]:
        md += ["## Command", "", "```", *model["sweep_commands"], "```", ""]
    md += ["## Results", "", results_markdown(model), ""]
    if model["notes"]:
        md += ["Notes:", "", *(f"- {_md_escape(n)}" for n in model["notes"]), ""]
    md += ["## What is significant", "", *significance_markdown(model)]
    md += ["## Helpfulness vs unsafe rate", "", f"![Pareto plot]({images['pareto']})", ""]
    md.append("Not significantly dominated by any other algorithm (joint bootstrap dominance test over every ordered "
              "pair, Holm-adjusted): " + (", ".join(model["front"]) or MISSING) + ".")
    md.append("")
    md.append("Front of the means alone (ignores the noise): " + (", ".join(model["front_means"]) or MISSING) + ".")
    md += ["", *(f"- {d}" for d in model["dominance"])] if model["dominance"] else []
    md.append("")
    if model["has_frontiers"]:
        md += ["## Trade-off frontiers", "", f"![Frontiers]({images['frontier']})", "", *frontier_markdown(model)]
    compute = model["compute"]
    md += ["## Compute", "", f"![Safety and helpfulness against compute]({images['compute']})", "",
           *compute["lines"], ""]
    header = ["algo", "status", *(_column_header(c) for c in model["perf_columns"])]
    md += _md_table(header, [[r.label, r.status, *(_md_cell(c) for c in r.perf)] for r in model["rows"]])
    md += ["", "FLOPs per phase (cached stages at their recorded cost; training = every phase but eval, "
           "monitoring and the export's samples):", ""]
    md += _md_table(compute["header"], compute["rows"])
    md += ["", "## Training curves", "", f"![Training curves against RL iteration]({images['curves']})", "",
           f"![Training curves against compute]({images['curves_compute']})", "", "## Failed jobs", ""]
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
    return template.render(**model, legend=legend(model), images={name: data_uri(path) for name, path in images.items()})


def render_text_table(model: dict[str, Any]) -> str:
    """Short fixed-width table for the terminal: the two Pareto axes and the job status."""
    keys = [c.key for c in model["columns"]]
    picks = [keys.index(key) for key in (Y_METRIC, X_METRIC) if key in keys]
    header = ["algo", "status", "seeds", *(model["columns"][i].title for i in picks)]
    lines = [header] + [
        [r.label, r.status, r.seeds, *((r.cells[i].text + (f" {BEST}" if r.cells[i].best else "")) for i in picks)]
        for r in model["rows"]
    ]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines)
