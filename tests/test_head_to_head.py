"""experiment=head_to_head: per-algorithm budgets compose, and a real (shrunk) sweep ends in a report.

The full overlay (8 algorithms x 2 seeds at their head_to_head budgets) takes about 10 minutes on 2
cores — its figure is in the README; here the same overlay runs with smoke-sized stages and a subset
of algorithms, so what is checked is the plumbing: every job runs once, the Hydra callback builds the
report when the multirun ends, and the report aggregates every algorithm over its seeds.
"""

from __future__ import annotations

import json

import pytest

from conftest import run_cli

ALGOS = ("sft", "ppo", "reward_shaping", "safe_rlhf", "repo", "waltzrl", "safeguard", "triplay")


def test_overlay_sweeps_every_algorithm_over_two_seeds(composed):
    from hydra import compose as hydra_compose, initialize_config_dir

    from conftest import CONF

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra_compose("config", overrides=["experiment=head_to_head"], return_hydra_config=True)
    params = cfg.hydra.sweeper.params
    assert tuple(params.algo.split(",")) == ALGOS and params.seed == "1,2"
    assert cfg.hydra.mode.name == "MULTIRUN"


@pytest.mark.parametrize("algo,key,budget,default", [
    ("ppo", "steps", 30, 80), ("safe_rlhf", "steps", 30, 80), ("repo", "steps", 30, 80),
    ("reward_shaping", "steps", 30, 80), ("waltzrl", "steps", 24, 0), ("triplay", "iterations", 2, 3),
])
def test_budgets_apply_only_under_head_to_head(composed, algo, key, budget, default):
    assert composed([f"algo={algo}", "experiment=head_to_head"]).algo[key] == budget
    assert composed([f"algo={algo}"]).algo[key] == default  # the algorithm's own default elsewhere
    assert composed([f"algo={algo}", "experiment=head_to_head", f"algo.{key}=7"]).algo[key] == 7  # CLI wins


@pytest.mark.slow
def test_shrunk_head_to_head_writes_a_report_over_algorithms_and_seeds(tmp_path, stage_cache):
    algos = "sft,safe_rlhf,repo,safeguard"
    result = run_cli(["experiment=head_to_head", f"hydra.sweeper.params.algo='{algos}'", "logger=none",
                      "stages.sft.steps=40", "stages.reward_model.steps=10", "stages.cost_model.steps=10",
                      "stages.sft.batch_size=16", "stages.reward_model.batch_size=16",
                      "stages.cost_model.batch_size=16", "algo.steps=2", "algo.batch_size=4",
                      "data.eval_prompts=24", f"hydra.sweep.dir={tmp_path}"])
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("*/summary.json"))]
    assert len(summaries) == 8 and all(s["status"] == "ok" for s in summaries)
    for name in ("report.html", "report.md", "pareto.png", "curves.png", "report_data.json"):
        assert (tmp_path / name).stat().st_size > 0, name
    data = json.loads((tmp_path / "report_data.json").read_text())
    rows = {row["algo"]: row for row in data["algos"]}
    assert set(rows) == set(algos.split(","))
    assert all(sorted(row["seeds"]) == [1, 2] and row["n_failed"] == 0 for row in rows.values())
    assert set(data["pareto"]["means"]) == set(rows)
    markdown = (tmp_path / "report.md").read_text()
    assert "experiment=head_to_head" in markdown and all(algo in markdown for algo in rows)
