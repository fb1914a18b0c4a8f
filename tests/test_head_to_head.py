"""experiment=head_to_head and experiment=frontier: budgets and knobs compose, and real (shrunk) sweeps end in
a report.

The full overlays (head_to_head: 8 algorithms x 5 seeds; frontier: 6 algorithms x 4 knob values x 3 seeds)
take minutes to tens of minutes on 2 cores — their figures are in the README; here the same overlays run
with smoke-sized stages and a subset of algorithms, so what is checked is the plumbing: every job runs
once, the Hydra callback builds the report when the multirun ends, the report aggregates every algorithm
over its seeds and, for a frontier, every knob value into a frontier with its hypervolume.
"""

from __future__ import annotations

import json

import pytest

from conftest import run_cli

ALGOS = ("sft", "ppo", "reward_shaping", "safe_rlhf", "repo", "waltzrl", "safeguard", "triplay")


def test_overlay_sweeps_every_algorithm_over_five_seeds(tmp_path, stage_cache):
    from conftest import compose

    cfg = compose(["experiment=head_to_head"], tmp_path, stage_cache, keep_hydra=True)
    params = cfg.hydra.sweeper.params
    assert tuple(params.algo.split(",")) == ALGOS and params.seed == "1,2,3,4,5"
    assert cfg.hydra.mode.name == "MULTIRUN"


@pytest.mark.parametrize("algo,key,budget,default", [
    ("ppo", "steps", 16, 80), ("safe_rlhf", "steps", 16, 80), ("repo", "steps", 16, 80),
    ("reward_shaping", "steps", 16, 80), ("waltzrl", "steps", 12, 0), ("triplay", "iterations", 2, 3),
    ("triplay", "metric_samples", 4, 8),
])
def test_budgets_apply_only_under_head_to_head(composed, algo, key, budget, default):
    assert composed([f"algo={algo}", "experiment=head_to_head"]).algo[key] == budget
    assert composed([f"algo={algo}"]).algo[key] == default  # the algorithm's own default elsewhere
    assert composed([f"algo={algo}", "experiment=head_to_head", f"algo.{key}=7"]).algo[key] == 7  # CLI wins


@pytest.mark.slow
def test_shrunk_head_to_head_writes_a_report_over_algorithms_and_seeds(tmp_path, stage_cache):
    algos = "sft,safe_rlhf,repo,safeguard"
    result = run_cli(["experiment=head_to_head", f"hydra.sweeper.params.algo='{algos}'", "seed=1,2", "logger=none",
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


FRONTIER = {"safe_rlhf": ("lagrange", "threshold"), "repo": ("lagrange", "threshold"),
            "reward_shaping": ("cost_penalty",), "safeguard": ("prompt_keywords",), "waltzrl": ("kl_coef",),
            "triplay": ("defender_label_scores", "rejective")}


@pytest.mark.parametrize("algo", sorted(FRONTIER))
def test_frontier_sets_each_algorithms_knob_from_the_point(composed, algo):
    import alignbench.algorithms  # noqa: F401 - registers the algorithms
    from alignbench.cli import tradeoff_point
    from alignbench.config import validate_config
    from alignbench.registry import ALGORITHMS

    values = []
    for point in range(4):
        cfg = composed([f"algo={algo}", "experiment=frontier", f"frontier.point={point}"])
        node = validate_config(cfg, ALGORITHMS.get(algo).config_class).algo
        for part in FRONTIER[algo]:
            node = node[part] if isinstance(node, dict) else getattr(node, part)
        values.append(node)
        assert tradeoff_point(cfg) == {"knob": "algo." + ".".join(FRONTIER[algo]), "value": node, "point": point}
    assert values == list(cfg.frontier["values"][algo]) and len({str(v) for v in values}) == 4
    head_to_head = composed([f"algo={algo}", "experiment=head_to_head"])
    assert all(cfg.algo[k] == head_to_head.algo[k] for k in ("steps", "batch_size"))  # the head_to_head budget
    assert tradeoff_point(head_to_head) is None  # no frontier node outside experiment=frontier


def test_frontier_point_out_of_range_is_one_line(tmp_path):
    result = run_cli(["algo=reward_shaping", "experiment=frontier", "frontier.point=4", "hydra.mode=RUN",
                      f"hydra.run.dir={tmp_path}", "logger=none"])
    assert result.returncode != 0
    assert "frontier.point must be an integer in [0, 3]" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_shrunk_frontier_writes_frontiers_and_hypervolumes(tmp_path, stage_cache):
    result = run_cli(["experiment=frontier", "algo=reward_shaping,safeguard", "frontier.point=0,3", "seed=1",
                      "logger=none", "stages.sft.steps=40", "stages.reward_model.steps=10", "stages.cost_model.steps=10",
                      "stages.sft.batch_size=16", "stages.reward_model.batch_size=16", "stages.cost_model.batch_size=16",
                      "algo.steps=2", "algo.batch_size=4", "data.eval_prompts=24", f"hydra.sweep.dir={tmp_path}"])
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = [json.loads(p.read_text()) for p in sorted(tmp_path.glob("*/summary.json"))]
    assert len(summaries) == 4 and all(s["status"] == "ok" for s in summaries)
    assert sorted((s["algo"], s["tradeoff"]["point"]) for s in summaries) == [
        ("reward_shaping", 0), ("reward_shaping", 3), ("safeguard", 0), ("safeguard", 3)]
    assert {s["tradeoff"]["value"] for s in summaries if s["algo"] == "reward_shaping"} == {4.0, 0.25}
    assert (tmp_path / "frontier.png").stat().st_size > 0
    data = json.loads((tmp_path / "report_data.json").read_text())
    frontiers = {f["algo"]: f for f in data["frontiers"]}
    assert set(frontiers) == {"reward_shaping", "safeguard"}
    assert all(len(f["points"]) == 2 and f["hypervolume"]["helpfulness"]["mean"] >= 0 for f in frontiers.values())
    assert "## Trade-off frontiers" in (tmp_path / "report.md").read_text()
