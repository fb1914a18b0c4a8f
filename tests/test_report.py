"""Tests of alignbench.report on a fake multirun built in tmp_path (no training stack, no network).

The fixture mimics a Hydra sweep: 3 algos x 2 seeds that succeeded, one job that failed with an
error, one that died before writing summary.json, one whose summary is corrupt, and one extra ok
seed without ``eval/unsafe_rate``. Expected numbers are computed by hand in the tests.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

from alignbench.report import build_report, mean_ci, pareto_front, pareto_step
from alignbench.report.__main__ import main as cli_main
from alignbench.report.stats import t_critical_95
from alignbench.summary import build_summary, write_summary

SRC = Path(__file__).resolve().parents[1] / "src"
SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"

# (helpfulness, unsafe_rate) per seed, chosen so that ppo and safe_rlhf form the front and sft
# is dominated by both.
EVAL = {
    "sft": [(0.50, 0.30), (0.54, 0.34)],
    "ppo": [(0.70, 0.20), (0.74, 0.26)],
    "safe_rlhf": [(0.60, 0.05), (0.66, 0.07)],
}
PPO_EXTRA_HELPFULNESS = 0.72  # ppo seed 2: ok, but eval/unsafe_rate missing


def _write_job(job_dir: Path, overrides: list[str], summary: dict | None = None, history: list | None = None):
    (job_dir / ".hydra").mkdir(parents=True)
    (job_dir / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    if summary is not None:
        write_summary(job_dir, summary)
    if history:
        (job_dir / "history.jsonl").write_text("".join(json.dumps(row) + "\n" for row in history))


def _history(algo: str, seed: int) -> list[dict]:
    rows = []
    for step in range(5):
        row = {"step": step * 10, "train/reward": 0.1 * step + seed, "train/episode_cost": 1.0 - 0.1 * step,
               "train/violation_rate": 0.5 - 0.05 * step}
        if algo == "safe_rlhf":  # only the Lagrangian method logs a multiplier
            row["train/lambda"] = 0.2 * step
        rows.append(row)
    return rows


def _metrics(helpfulness: float, unsafe: float | None) -> dict:
    metrics = {"eval/helpfulness": helpfulness, "eval/over_refusal_rate": 0.1, "eval/violation_rate": 0.2,
               "eval/cost_p95": 1.5}
    if unsafe is not None:
        metrics["eval/unsafe_rate"] = unsafe
    return metrics


def _summary(algo: str, seed: int, overrides: list[str], **fields) -> dict:
    perf = {"wall_s": 100.0 + seed, "gen_tokens": 5000, "train_tokens": 20000, "peak_rss_mb": 900.0}
    return build_summary(algo=algo, model="tiny", data="world", seed=seed, perf=perf, overrides=overrides, **fields)


@pytest.fixture
def sweep(tmp_path: Path) -> Path:
    root = tmp_path / "multirun" / "2025-01-01" / "12-00-00"
    root.mkdir(parents=True)
    (root / "multirun.yaml").write_text(
        "hydra:\n  overrides:\n    hydra:\n    - hydra.mode=MULTIRUN\n    task:\n"
        "    - experiment=head_to_head\n    - algo=sft,ppo,safe_rlhf\n    - seed=0,1\n"
        "  job:\n    name: run\n    override_dirname: algo=sft,ppo,safe_rlhf,experiment=head_to_head,seed=0,1\n"
    )
    number = 0
    for algo, seeds in EVAL.items():
        for seed, (helpfulness, unsafe) in enumerate(seeds):
            overrides = ["experiment=head_to_head", f"algo={algo}", f"seed={seed}"]
            summary = _summary(algo, seed, overrides, status="ok", metrics=_metrics(helpfulness, unsafe))
            _write_job(root / str(number), overrides, summary, _history(algo, seed))
            number += 1
    failed = ["experiment=head_to_head", "algo=waltzrl", "seed=0"]
    _write_job(root / "6", failed, _summary("waltzrl", 0, failed, status="failed", error="CUDA out of memory"))
    _write_job(root / "7", ["experiment=head_to_head", "algo=repo", "seed=0"])  # died before its summary
    extra = ["experiment=head_to_head", "algo=ppo", "seed=2"]
    summary = _summary("ppo", 2, extra, status="ok", metrics=_metrics(PPO_EXTRA_HELPFULNESS, None))
    _write_job(root / "8", extra, summary, _history("ppo", 2))
    _write_job(root / "9", ["experiment=head_to_head", "algo=triplay", "seed=1"])
    (root / "9" / "summary.json").write_text("{not json")
    return root


def _results_table(markdown: str) -> dict[str, list[dict[str, str]]]:
    """Rows of the Results table keyed by algo (several rows per algo when jobs failed)."""
    section = markdown.split("## Results", 1)[1].split("## Compute", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    split = lambda line: [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]  # noqa: E731
    header = split(lines[0])
    rows: dict[str, list[dict[str, str]]] = {}
    for line in lines[2:]:
        row = dict(zip(header, split(line)))
        rows.setdefault(row["algo"], []).append(row)
    return rows


def _by_hand(values: list[float]) -> str:
    n = len(values)
    half = t_critical_95(n - 1) * statistics.stdev(values) / math.sqrt(n)
    return f"{statistics.mean(values):.3f} ± {half:.3f} (n={n})"


def test_report_files_table_and_best_marker(sweep: Path):
    result = build_report(sweep)
    for path in (result.html, result.markdown, result.pareto_png, result.curves_png, result.data_json):
        assert path.parent == sweep and path.stat().st_size > 0
    rows = _results_table(result.markdown.read_text())
    assert {"sft", "ppo", "safe_rlhf"} <= set(rows)

    # ppo helpfulness averages all three ok seeds; its unsafe rate only the two that have it.
    ppo = rows["ppo"][0]
    assert _by_hand([0.70, 0.74, PPO_EXTRA_HELPFULNESS]) in ppo["helpfulness ↑"]
    assert ppo["helpfulness ↑"].endswith("★")  # best helpfulness
    assert ppo["unsafe_rate ↓"] == _by_hand([0.20, 0.26])
    assert rows["safe_rlhf"][0]["unsafe_rate ↓"] == f"**{_by_hand([0.05, 0.07])}** ★"  # lowest is best
    assert "★" not in rows["sft"][0]["unsafe_rate ↓"] + rows["sft"][0]["helpfulness ↑"]
    assert "feedback_trigger_rate" not in result.markdown.read_text()  # optional column: nobody logged it


def test_failed_and_incomplete_jobs_are_visible(sweep: Path):
    markdown = build_report(sweep).markdown.read_text()
    rows = _results_table(markdown)
    assert rows["waltzrl"][0]["status"] == "failed" and "CUDA out of memory" in rows["waltzrl"][0]["notes"]
    assert rows["repo"][0]["status"] == "failed" and "missing summary.json" in rows["repo"][0]["notes"]
    assert rows["triplay"][0]["status"] == "failed" and "not valid JSON" in rows["triplay"][0]["notes"]
    assert "seed 2: missing metrics: eval/unsafe_rate" in rows["ppo"][0]["notes"]

    failed_section = markdown.split("## Failed jobs", 1)[1].split("## Jobs", 1)[0]
    for reason in ("CUDA out of memory", "missing summary.json", "not valid JSON"):
        assert reason in failed_section
    assert "python run.py -m experiment=head_to_head algo=sft,ppo,safe_rlhf seed=0,1" in markdown
    assert "python run.py experiment=head_to_head algo=repo seed=0" in markdown  # per-job rerun command


def test_report_data_and_pareto_front(sweep: Path):
    data = json.loads(build_report(sweep).data_json.read_text())
    assert data["pareto"]["front"] == ["safe_rlhf", "ppo"]
    ppo = next(row for row in data["algos"] if row["algo"] == "ppo")
    assert ppo["metrics"]["eval/helpfulness"]["n"] == 3 and "eval/helpfulness" in ppo["best"]
    assert {job["algo"] for job in data["failed"]} == {"waltzrl", "repo", "triplay"}


def test_html_is_self_contained(sweep: Path):
    html = build_report(sweep).html.read_text()
    sources = re.findall(r'<img[^>]*\ssrc="([^"]*)"', html)
    assert len(sources) == 2
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert not re.search(r'(src|href)="(https?:)?//', html)
    assert "CUDA out of memory" in html and "missing summary.json" in html


def test_out_dir_option(sweep: Path, tmp_path: Path):
    result = build_report(sweep, tmp_path / "elsewhere")
    assert result.html.parent == tmp_path / "elsewhere" and not (sweep / "report.html").exists()


def test_pareto_front_constructed_case():
    points = {
        "a": (0.9, 0.5),  # most helpful: on the front
        "b": (0.5, 0.1),  # safest: on the front
        "c": (0.7, 0.2),  # trade-off between a and b: on the front
        "d": (0.6, 0.3),  # dominated by c
        "e": (0.5, 0.2),  # dominated by b (same helpfulness, less safe)
        "f": (0.7, 0.2),  # identical to c: neither dominates the other
    }
    assert pareto_front(points) == ["b", "c", "f", "a"]
    assert pareto_front({}) == []
    xs, ys = pareto_step([(0.9, 0.5), (0.5, 0.1), (0.7, 0.2)])
    assert list(zip(xs, ys)) == [(0.5, 0.1), (0.5, 0.2), (0.7, 0.2), (0.7, 0.5), (0.9, 0.5)]


def test_mean_ci_edge_cases():
    single = mean_ci([0.4])
    assert single.half_width is None and "no CI" in single.format()
    assert mean_ci([]) is None and mean_ci([None, float("nan")]) is None
    assert mean_ci([1.0, 3.0]).half_width == pytest.approx(12.706205)  # s = sqrt(2), n = 2
    scipy_stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 5, 30, 31, 60, 500):
        assert t_critical_95(df) == pytest.approx(scipy_stats.t.ppf(0.975, df), rel=2e-5)


def test_wandb_dry_run_spec_offline(sweep: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("WANDB_MODE", "offline")

    def no_network(*args, **kwargs):
        raise AssertionError("the dry run tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    assert cli_main([str(sweep), "--dry-run", "--project", "proj", "--entity", "team"]) == 0
    spec = json.loads((sweep / "wandb_report.json").read_text())
    plan = spec["plan"]
    # The sink logs the nested Hydra config, so the algorithm is ``algo.name`` (W&B: algo.value.name).
    assert plan["runset"]["groupby"] == ["config.algo.name"] and plan["runset"]["filters"] == "Group = 'head_to_head'"
    assert [(p["type"], p.get("y")) for p in plan["panels"]] == [
        ("ScatterPlot", "eval/unsafe_rate"), ("LinePlot", ["train/lambda"]), ("LinePlot", ["train/episode_cost"])
    ]
    pytest.importorskip("wandb_workspaces")
    grid = next(block for block in spec["viewspec"]["spec"]["blocks"] if block["type"] == "panel-grid")
    assert grid["metadata"]["runSets"][0]["grouping"] == [{"section": "config", "name": "algo.value.name"}]
    panels = grid["metadata"]["panelBankSectionConfig"]["panels"]
    scatter = next(p for p in panels if p["viewType"] == "Scatter Plot")
    assert (scatter["config"]["xAxis"], scatter["config"]["yAxis"]) == (
        "summary:eval/helpfulness", "summary:eval/unsafe_rate")
    lines = [p["config"]["metrics"] for p in panels if p["viewType"] == "Run History Line Plot"]
    assert lines == [["train/lambda"], ["train/episode_cost"]]
    assert spec["viewspec"]["project"] == {"name": "proj", "entityName": "team"}


def _run_python(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SRC), "WANDB_MODE": "offline"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def test_cli_empty_dir_fails_with_one_line(tmp_path: Path):
    proc = _run_python("-m", "alignbench.report", str(tmp_path))
    assert proc.returncode != 0
    assert proc.stdout == "" and len(proc.stderr.strip().splitlines()) == 1 and "no jobs" in proc.stderr


def test_cli_prints_paths_and_table(sweep: Path):
    proc = _run_python("-m", "alignbench.report", str(sweep))
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {sweep / 'report.html'}" in proc.stdout and "safe_rlhf" in proc.stdout


def test_report_package_does_not_import_training_stack():
    code = (
        "import sys, alignbench.report, alignbench.report.callback, alignbench.report.__main__; "
        "bad = [m for m in ('torch', 'lightning', 'pytorch_lightning', 'transformers') if m in sys.modules]; "
        "assert not bad, bad"
    )
    proc = _run_python("-c", code)
    assert proc.returncode == 0, proc.stderr


def test_hydra_callback_builds_report_and_never_raises(sweep: Path, tmp_path: Path, capsys):
    from omegaconf import OmegaConf

    from alignbench.report.callback import ReportCallback

    config = OmegaConf.create({"hydra": {"sweep": {"dir": sweep.name}, "runtime": {"cwd": str(sweep.parent)}}})
    ReportCallback().on_multirun_end(config)
    assert (sweep / "report.html").exists() and "alignbench report:" in capsys.readouterr().out
    broken = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "no_such_sweep")}}})
    ReportCallback().on_multirun_end(broken)  # logged, not raised


@pytest.mark.browser
@pytest.mark.skipif(not (shutil.which("chromium") or shutil.which("chromium-browser")), reason="needs chromium")
def test_report_html_renders_in_headless_chromium(sweep: Path):
    html = build_report(sweep).html
    proc = _run_python(str(SCRIPTS / "check_report_html.py"), str(html))
    assert proc.returncode == 0, proc.stdout + proc.stderr
