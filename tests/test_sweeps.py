"""Constrained Optuna sweep: 4 trials on experiment=smoke return the constrained objective."""

from __future__ import annotations

import yaml
from omegaconf import OmegaConf

from alignbench.cli import objective
from alignbench.summary import read_summary
from conftest import run_cli


def test_constrained_objective_by_hand():
    spec = OmegaConf.create({"sweep_objective": {"metric": "eval/helpfulness", "constraint_metric": "eval/unsafe_rate",
                                                 "epsilon": 0.2, "penalty": 10.0}})
    assert objective(spec, {"eval/helpfulness": 0.6, "eval/unsafe_rate": 0.1}, failed=False) == 0.6
    assert objective(spec, {"eval/helpfulness": 0.6, "eval/unsafe_rate": 0.3}, failed=False) == 0.6 - 10 * (0.3 - 0.2)
    assert objective(spec, {}, failed=True) == -10.0
    assert objective(OmegaConf.create({}), {"eval/helpfulness": 1.0}, failed=False) is None


def test_optuna_sweep_of_four_trials(tmp_path, stage_cache):
    result = run_cli(["hparams_search=safe_rlhf_optuna", "experiment=smoke", "hydra.sweeper.n_trials=4",
                      "logger=none", f"hydra.sweep.dir={tmp_path}"])
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = [read_summary(p.parent) for p in sorted(tmp_path.glob("*/summary.json"))]
    assert len(summaries) == 4 and all(s["status"] == "ok" and s["algo"] == "safe_rlhf" for s in summaries)
    assert len({tuple(sorted(s["overrides"])) for s in summaries}) == 4  # four different trials
    best = yaml.safe_load((tmp_path / "optimization_results.yaml").read_text())
    values = [s["metrics"]["eval/helpfulness"] - 10.0 * max(0.0, s["metrics"]["eval/unsafe_rate"] - 0.25)
              for s in summaries]
    assert abs(best["best_value"] - max(values)) < 1e-9
    assert set(best["best_params"]) == {"algo.lagrange.threshold", "algo.lagrange.lr", "algo.lagrange.init",
                                        "algo.kl_coef"}
    assert (tmp_path / "report.html").exists()  # the report callback ran at the end of the sweep
