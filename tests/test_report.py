"""Tests of alignbench.report on fake multiruns built in tmp_path (no training stack, no network).

The main fixture mimics a Hydra sweep (``report_sweep`` writes the files as jobs do): sft and
safe_rlhf over 4 seeds, ppo over 3 (one seed without eval_samples.jsonl or an unsafe rate), waltzrl
over 2 trained on oracle signals, a job that failed with an error, one that died before writing
summary.json and one whose summary is corrupt. Expected numbers are computed by hand in the tests;
the statistics themselves are checked against hand-computed cases in ``test_report_stats.py``.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from alignbench.report import build_report, mean_ci, pareto_front, pareto_step
from alignbench.report.__main__ import main as cli_main
from alignbench.report.stats import t_critical_95
from report_sweep import history, metrics_of, samples, summary, triplay_history, write_job

SRC = Path(__file__).resolve().parents[1] / "src"
SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
SFT_UNSAFE = {0: 7, 1: 8, 2: 9, 3: 8}  # unsafe samples of 20: rates .35 .40 .45 .40
SAFE_UNSAFE = {0: 1, 1: 1, 2: 2, 3: 2}  # .05 .05 .10 .10
PPO_EXTRA_HELPFULNESS = 0.72  # ppo seed 2: ok, no eval_samples.jsonl, no eval/unsafe_rate


def _job(root: Path, number: int, algo: str, seed: int, rows: list[dict] | None, flops: float, **fields) -> None:
    overrides = ["experiment=head_to_head", f"algo={algo}", f"seed={seed}"]
    metrics = metrics_of(rows) if rows is not None else fields.pop("metrics")
    write_job(root / str(number), overrides, summary(algo, seed, overrides, metrics, flops, **fields),
              history(seed, with_lambda=algo == "safe_rlhf"), rows)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """The fake sweep, shared read-only by the module's tests (reports go elsewhere or into a copy)."""
    root = tmp_path_factory.mktemp("sweep") / "multirun" / "2025-01-01" / "12-00-00"
    root.mkdir(parents=True)
    (root / "multirun.yaml").write_text(
        "hydra:\n  overrides:\n    hydra:\n    - hydra.mode=MULTIRUN\n    task:\n"
        "    - experiment=head_to_head\n    - algo=sft,ppo,safe_rlhf\n    - seed=0,1\n"
        "  job:\n    name: run\n    override_dirname: algo=sft,ppo,safe_rlhf,experiment=head_to_head,seed=0,1\n"
    )
    number = 0
    for seed in range(4):
        _job(root, number, "sft", seed, samples(SFT_UNSAFE[seed], 2, 0.5, shift=seed), 1e12)
        _job(root, number + 1, "safe_rlhf", seed, samples(SAFE_UNSAFE[seed], 2, 0.5, shift=seed), 3e12,
             training_signals={"source": "learned", "upper_bound": False})
        number += 2
    for seed, helpful in ((0, 0.70), (1, 0.74)):
        _job(root, number, "ppo", seed, samples(16, 0, helpful, shift=seed), 2.5e12)
        number += 1
    _job(root, number, "ppo", 2, None, 2.5e12, metrics={"eval/helpfulness": PPO_EXTRA_HELPFULNESS,
                                                         "eval/over_refusal_rate": 0.0, "eval/violation_rate": 0.7,
                                                         "eval/cost_p95": 1.0})
    for seed in range(2):
        _job(root, number + 1 + seed, "waltzrl", seed, samples(0, 1, 0.6, shift=seed), 2.7e12,
             training_signals={"source": "oracle", "upper_bound": True, "label_model": False, "used": {},
                               "agreement_with_oracle": {}, "oracle_calls": {}})  # as the pipeline writes it
    number += 3
    failed = ["experiment=head_to_head", "algo=waltzrl", "seed=2"]
    write_job(root / str(number), failed, {**summary("waltzrl", 2, failed, {}), "status": "failed",
                                            "error": "CUDA out of memory"})
    write_job(root / str(number + 1), ["experiment=head_to_head", "algo=repo", "seed=0"])  # died before its summary
    write_job(root / str(number + 2), ["experiment=head_to_head", "algo=triplay", "seed=1"])
    (root / str(number + 2) / "summary.json").write_text("{not json")
    return root


@pytest.fixture(scope="module")
def report(sweep: Path, tmp_path_factory):
    """The report of ``sweep`` (default bootstrap), built once for the tests that only read it."""
    return build_report(sweep, tmp_path_factory.mktemp("report"))


@pytest.fixture
def own_sweep(sweep: Path, tmp_path: Path) -> Path:
    """A private copy of the sweep for tests that write their report into it."""
    return Path(shutil.copytree(sweep, tmp_path / "sweep"))


def _section(markdown: str, title: str) -> str:
    return markdown.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def _results_table(markdown: str) -> dict[str, list[dict[str, str]]]:
    """Rows of the Results table keyed by label (several rows per algo when jobs failed)."""
    lines = [line for line in _section(markdown, "Results").splitlines() if line.startswith("|")]
    split = lambda line: [cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]]  # noqa: E731
    header = split(lines[0])
    rows: dict[str, list[dict[str, str]]] = {}
    for line in lines[2:]:
        row = dict(zip(header, split(line)))
        rows.setdefault(row["algo"], []).append(row)
    return rows


def test_results_table_intervals_and_significant_stars_only(report):
    result = report
    for path in result.paths:
        assert path.parent == result.out_dir and path.stat().st_size > 0
    assert {p.name for p in result.images.values()} == {"pareto.png", "compute.png", "curves.png", "curves_compute.png"}
    rows = _results_table(result.markdown.read_text())
    # point estimates are the means over seeds of each seed's rate; every mean carries ± half the interval
    sft_unsafe = sum(SFT_UNSAFE.values()) / 4 / 20
    assert re.fullmatch(rf"{sft_unsafe:.3f} ± 0\.\d{{3}} \(n=4\)", rows["sft"][0]["unsafe_rate ↓"])
    ppo = rows["ppo"][0]
    assert ppo["helpfulness ↑"].startswith(f"**{(0.70 + 0.74 + PPO_EXTRA_HELPFULNESS) / 3:.3f} ± ")
    assert "(n=3)" in ppo["helpfulness ↑"] and "(n=2)" in ppo["unsafe_rate ↓"]
    # stars only on significant leads: ppo is more helpful than everyone on every seed, waltzrl's prompts never
    # cost > 0; waltzrl's unsafe-rate lead over safe_rlhf (0 vs 0.075 on 20 harmful samples a seed) and ppo's
    # over-refusal lead over waltzrl (0 vs 0.05) are within the noise: no star
    assert ppo["helpfulness ↑"].endswith("★")
    starred = [(label, key) for label, group in rows.items() for row in group for key, cell in row.items() if "★" in cell]
    assert sorted(starred) == [("ppo", "helpfulness ↑"), ("waltzrl †", "cost_p95 ↓")]
    # waltzrl trained on oracle signals: marked in the table and explained in the legend
    assert "waltzrl †" in rows and "signals=oracle" in _section(result.markdown.read_text(), "Results")
    assert "safe_rlhf" in rows and "safe_rlhf †" not in rows  # learned signals: a peer, unmarked


def test_what_is_significant_says_only_what_holds(report):
    markdown = report.markdown.read_text()
    section = _section(markdown, "What is significant")
    safe_unsafe = sum(SAFE_UNSAFE.values()) / 4 / 20
    sft_unsafe = sum(SFT_UNSAFE.values()) / 4 / 20
    assert f"safe_rlhf is safer than sft (unsafe_rate {safe_unsafe:.3f} vs {sft_unsafe:.3f}" in section
    # no replicate of waltzrl - sft crosses 0: the p-value is only bounded by the 5000 replicates' resolution
    assert re.search(r"waltzrl † is safer than sft \(.*Holm-adjusted p ≤ 0\.\d+\)", section)
    # equal over-refusal and helpfulness by construction: no claim either way
    assert not re.search(r"safe_rlhf (is more|is less) helpful than sft", section)
    assert "safe_rlhf over-refuses" not in section


def test_pareto_front_accounts_for_noise(report):
    data = json.loads(report.data_json.read_text())
    # waltzrl (more helpful and safer on every replicate) dominates sft and safe_rlhf; ppo is the most helpful
    assert data["pareto"]["front"] == ["ppo", "waltzrl"]
    dominated = {(d["dominating"], d["dominated"]) for d in data["pareto"]["significant_dominance"]}
    assert {("waltzrl", "sft"), ("waltzrl", "safe_rlhf")} <= dominated
    markdown = report.markdown.read_text()
    assert "Not significantly dominated by any other algorithm" in markdown and "ppo, waltzrl †" in markdown


def test_report_data_statistics_and_compute(report):
    data = json.loads(report.data_json.read_text())
    assert data["statistics"]["replicates"] == 5000
    sft = next(row for row in data["algos"] if row["group"] == "sft")
    unsafe = sft["metrics"]["eval/unsafe_rate"]
    assert unsafe["interval"] == "seeds x prompts" and unsafe["low"] < unsafe["mean"] < unsafe["high"]
    ppo = next(row for row in data["algos"] if row["group"] == "ppo")
    assert ppo["metrics"]["eval/helpfulness"]["interval"] == "seeds"  # one seed has no per-prompt file
    assert any("seed-level intervals for unsafe_rate, over_refusal_rate, helpfulness, violation_rate" in note for note in ppo["notes"])
    assert {job["algo"] for job in data["failed"]} == {"waltzrl", "repo", "triplay"}
    compute = data["compute"]
    assert compute["reference"] == "safe_rlhf" and compute["ratio"]["sft"] == pytest.approx(1 / 3)
    assert sorted(compute["rl_groups"]) == ["ppo", "safe_rlhf", "waltzrl"]  # sft trained no RL phase
    assert compute["rl_spread"] == pytest.approx(3.0 / 2.5)
    assert "span a factor of 1.20" in report.markdown.read_text()


def test_curves_use_rl_iterations_only(report):
    data = json.loads(report.data_json.read_text())
    reward = data["curves"]["iteration"]["train/reward"]["sft"]
    assert reward["x"] == [1.0, 2.0, 3.0, 4.0, 5.0]  # the SFT stage's rows (and their 99.0) never enter
    assert reward["mean"] == pytest.approx([0.1 * i + 1.5 for i in range(1, 6)])  # mean over seeds 0-3
    assert reward["low"][0] < reward["mean"][0] < reward["high"][0] and reward["seeds"] == [4] * 5
    assert set(data["curves"]["iteration"]["train/lambda"]) == {"safe_rlhf"}
    compute = data["curves"]["compute"]["train/reward"]["sft"]
    assert compute["x"] == pytest.approx([1e12 + 1e11 * i for i in range(1, 6)])


def test_triplay_curves_start_after_its_warmup(tmp_path: Path):
    for seed in range(2):
        overrides = ["algo=triplay", f"seed={seed}"]
        rows = samples(3, 2, 0.5)
        write_job(tmp_path / str(seed), overrides, summary("triplay", seed, overrides, metrics_of(rows)),
                  triplay_history(seed), rows)
    curve = json.loads(build_report(tmp_path).data_json.read_text())["curves"]["iteration"]
    assert curve["triplay/attack_success_rate"]["triplay"]["x"] == [0.0, 1.0, 2.0, 3.0]  # 0: after the warm-up
    assert curve["triplay/attack_success_rate"]["triplay"]["mean"] == pytest.approx([0.055, 0.105, 0.205, 0.305])


def test_frontier_hypervolume_and_plot(tmp_path: Path):
    # reward shaping at three w, safe_rlhf at two d, two seeds each (identical rates), sft as an anchor
    points = {"reward_shaping": [(12, 0, 0.8), (6, 4, 0.8), (2, 10, 0.8)], "safe_rlhf": [(8, 2, 0.7), (4, 6, 0.7)]}
    knobs = {"reward_shaping": "algo.cost_penalty", "safe_rlhf": "algo.lagrange.threshold"}
    number = 0
    for algo, settings in points.items():
        for point, (unsafe, refusals, helpful) in enumerate(settings):
            for seed in range(2):
                overrides = ["experiment=frontier", f"algo={algo}", f"frontier.point={point}", f"seed={seed}"]
                rows = samples(unsafe, refusals, helpful, shift=seed)
                tradeoff = {"knob": knobs[algo], "value": float(point), "point": point}
                write_job(tmp_path / str(number), overrides,
                          summary(algo, seed, overrides, metrics_of(rows), tradeoff=tradeoff), None, rows)
                number += 1
    for seed in range(2):
        rows = samples(8, 2, 0.5, shift=seed)
        write_job(tmp_path / str(number + seed), ["algo=sft", f"seed={seed}"],
                  summary("sft", seed, ["algo=sft"], metrics_of(rows)), None, rows)
    result = build_report(tmp_path)
    assert result.images["frontier"].stat().st_size > 0
    data = json.loads(result.data_json.read_text())
    frontiers = {f["algo"]: f for f in data["frontiers"]}
    # by hand, (helpfulness, 1 - unsafe): reward_shaping (0.8, 0.4), (0.64, 0.7), (0.4, 0.9);
    # HV = 0.8 * 0.4 + 0.64 * (0.7 - 0.4) + 0.4 * (0.9 - 0.7) = 0.592
    hv = frontiers["reward_shaping"]["hypervolume"]["helpfulness"]
    assert hv["mean"] == pytest.approx(0.592) and hv["low"] <= 0.592 <= hv["high"]
    # safe_rlhf (0.63, 0.6), (0.49, 0.8): 0.63 * 0.6 + 0.49 * 0.2 = 0.476; answering plane (0.9, 0.6), (0.7, 0.8)
    assert frontiers["safe_rlhf"]["hypervolume"]["helpfulness"]["mean"] == pytest.approx(0.476)
    assert frontiers["safe_rlhf"]["hypervolume"]["refusal"]["mean"] == pytest.approx(0.9 * 0.6 + 0.7 * 0.2)
    assert [p["value"] for p in frontiers["reward_shaping"]["points"]] == [0.0, 1.0, 2.0]
    markdown = result.markdown.read_text()
    assert "## Trade-off frontiers" in markdown and "| reward_shaping | cost_penalty | 0, 1, 2 | 2/2/2 | 0.592 ± " in markdown
    assert "reward_shaping [cost_penalty=1]" in _results_table(markdown)


def test_failed_and_incomplete_jobs_are_visible(report):
    markdown = report.markdown.read_text()
    rows = _results_table(markdown)
    assert rows["waltzrl"][0]["seeds"] == "2 (failed)"
    assert rows["repo"][0]["seeds"] == "0 (failed)" and rows["triplay"][0]["seeds"] == "1 (failed)"
    assert "seed 2: missing metrics: eval/unsafe_rate" in _section(markdown, "Results")
    failed_section = _section(markdown, "Failed jobs")
    for reason in ("CUDA out of memory", "missing summary.json", "not valid JSON"):
        assert reason in failed_section
    assert "python run.py -m experiment=head_to_head algo=sft,ppo,safe_rlhf seed=0,1" in markdown
    assert "python run.py experiment=head_to_head algo=repo seed=0" in markdown  # per-job rerun command


def test_html_is_self_contained(report):
    html = report.html.read_text()
    sources = re.findall(r'<img[^>]*\ssrc="([^"]*)"', html)
    assert len(sources) == 4
    for src in sources:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert not re.search(r'(src|href)="(https?:)?//', html)
    assert "CUDA out of memory" in html and "missing summary.json" in html and "What is significant" in html


def test_out_dir_option(sweep: Path, tmp_path: Path):
    result = build_report(sweep, tmp_path / "elsewhere", replicates=200)
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


def test_wandb_dry_run_spec_offline(sweep: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("WANDB_MODE", "offline")

    def no_network(*args, **kwargs):
        raise AssertionError("the dry run tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    assert cli_main([str(sweep), "--out", str(tmp_path), "--dry-run", "--project", "proj", "--entity", "team"]) == 0
    spec = json.loads((tmp_path / "wandb_report.json").read_text())
    plan = spec["plan"]
    # The sink logs the nested Hydra config, so the algorithm is ``algo.name`` (W&B: algo.value.name).
    assert plan["runset"]["groupby"] == ["config.algo.name"] and plan["runset"]["filters"] == "Group = 'head_to_head'"
    assert [(p["type"], p.get("y")) for p in plan["panels"]][:3] == [
        ("ScatterPlot", "eval/unsafe_rate"), ("ScatterPlot", "eval/unsafe_rate"), ("ScatterPlot", "eval/helpfulness")]
    assert ("LinePlot", ["train/lambda"]) in [(p["type"], p.get("y")) for p in plan["panels"]]
    assert "What is significant" in plan["markdown"] and "safe_rlhf is safer than sft" in plan["markdown"]
    pytest.importorskip("wandb_workspaces")
    grid = next(block for block in spec["viewspec"]["spec"]["blocks"] if block["type"] == "panel-grid")
    assert grid["metadata"]["runSets"][0]["grouping"] == [{"section": "config", "name": "algo.value.name"}]
    panels = grid["metadata"]["panelBankSectionConfig"]["panels"]
    scatter = next(p for p in panels if p["viewType"] == "Scatter Plot")
    assert (scatter["config"]["xAxis"], scatter["config"]["yAxis"]) == (
        "summary:eval/helpfulness", "summary:eval/unsafe_rate")
    assert spec["viewspec"]["project"] == {"name": "proj", "entityName": "team"}


def _run_python(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(SRC), "WANDB_MODE": "offline"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def test_cli_empty_dir_fails_with_one_line(tmp_path: Path):
    proc = _run_python("-m", "alignbench.report", str(tmp_path))
    assert proc.returncode != 0
    assert proc.stdout == "" and len(proc.stderr.strip().splitlines()) == 1 and "no jobs" in proc.stderr


def test_cli_prints_paths_and_table(own_sweep: Path):
    proc = _run_python("-m", "alignbench.report", str(own_sweep), "--replicates", "200")
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {own_sweep / 'report.html'}" in proc.stdout and "safe_rlhf" in proc.stdout
    bad = _run_python("-m", "alignbench.report", str(own_sweep), "--replicates", "5")
    assert bad.returncode == 2 and "--replicates must be at least" in bad.stderr


def test_report_package_does_not_import_training_stack():
    code = (
        "import sys, alignbench.report, alignbench.report.callback, alignbench.report.__main__; "
        "bad = [m for m in ('torch', 'lightning', 'pytorch_lightning', 'transformers') if m in sys.modules]; "
        "assert not bad, bad"
    )
    proc = _run_python("-c", code)
    assert proc.returncode == 0, proc.stderr


def test_hydra_callback_builds_report_and_never_raises(own_sweep: Path, tmp_path: Path, capsys):
    from omegaconf import OmegaConf

    from alignbench.report.callback import ReportCallback

    config = OmegaConf.create({"hydra": {"sweep": {"dir": own_sweep.name}, "runtime": {"cwd": str(own_sweep.parent)}}})
    ReportCallback().on_multirun_end(config)
    assert (own_sweep / "report.html").exists() and "alignbench report:" in capsys.readouterr().out
    broken = OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path / "no_such_sweep")}}})
    ReportCallback().on_multirun_end(broken)  # logged, not raised


@pytest.mark.browser
@pytest.mark.skipif(not (shutil.which("chromium") or shutil.which("chromium-browser")), reason="needs chromium")
def test_report_html_fits_the_screen_and_prints_in_headless_chromium(report, tmp_path: Path):
    html = report.html
    proc = _run_python(str(SCRIPTS / "check_report_html.py"), str(html), "--pdf", str(tmp_path / "report.pdf"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ok  screen at 1280 px" in proc.stdout and "ok  print layout at A4 width" in proc.stdout
    assert (tmp_path / "report.pdf").read_bytes()[:4] == b"%PDF"
