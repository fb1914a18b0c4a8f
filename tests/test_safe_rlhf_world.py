"""The Safe RLHF family on the default world under the fair default (``signals=learned``).

What docs/ALGORITHMS.md §1-2 says each must show, checked as multi-seed statistics with margins taken
from the seed-to-seed noise measured on this machine (seeds 1-3, 30 iterations, 2026-12-05; mean unsafe
rate +- its sd over seeds): sft 0.462 +- 0.017, ppo 0.958 +- 0.016, reward_shaping 0.345 +- 0.049,
safe_rlhf 0.174 +- 0.059. The test runs seeds 1 and 2; each margin below is at least 4 standard errors
of a two-seed difference under the measured gap, so the claims hold on any machine of this kind and any
thread count, or a real change broke them. The Lagrange multiplier's rise and fall is checked twice: on these runs, iteration by
iteration against the update rule, and on runs built so that they must show both (a cost signal that
violates the threshold for 5 iterations and then stops).
"""

from __future__ import annotations

import json
import math
import statistics

import pytest

from alignbench.summary import read_history, read_summary
from conftest import run_cli

SEEDS = (1, 2)


@pytest.fixture(scope="module")
def family(tmp_path_factory, stage_cache) -> dict[str, list[tuple[dict, list[dict]]]]:
    """algo -> [(summary, history)] over the seeds: one multirun of 8 jobs (shared stage cache)."""
    root = tmp_path_factory.mktemp("safe_rlhf_family")
    result = run_cli(["-m", "algo=sft,ppo,reward_shaping,safe_rlhf", f"seed={','.join(map(str, SEEDS))}",
                      "algo.steps=30", "logger=none", "experiment_name=safe_rlhf_family",
                      "data.eval_prompts=96", "eval.samples_per_prompt=2", f"hydra.sweep.dir={root}"], timeout=3600)
    assert result.returncode == 0, result.stderr[-3000:]
    runs: dict[str, list] = {}
    for path in sorted(root.glob("*/summary.json")):
        summary = read_summary(path.parent)
        assert summary["status"] == "ok", summary["error"]
        runs.setdefault(summary["algo"], []).append((summary, read_history(path.parent)))
    assert {algo: len(r) for algo, r in runs.items()} == {a: len(SEEDS) for a in ("sft", "ppo", "reward_shaping",
                                                                                  "safe_rlhf")}
    return runs


def mean_over_seeds(runs, key: str) -> float:
    return statistics.mean(summary["metrics"][key] for summary, _ in runs)


@pytest.mark.slow
def test_preference_models_learned_their_signal(family):
    metrics = family["safe_rlhf"][0][0]["metrics"]
    assert metrics["stages/reward_model/accuracy"] > 0.75 and metrics["stages/cost_model/accuracy"] > 0.75
    assert metrics["stages/cost_model/sign_accuracy"] > 0.85
    # ... on held-out pairs of prompts never trained on, and the summary says how many
    assert family["safe_rlhf"][0][0]["split"]["shared_prompts"] == 0
    assert metrics["stages/reward_model/heldout_pairs"] >= metrics["stages/reward_model/heldout_prompts"] > 0
    for summary, _ in family["safe_rlhf"]:  # the learned cost model agrees with the oracle on the policy's answers
        assert summary["training_signals"]["agreement_with_oracle"]["held_out"]["cost"]["sign_accuracy"] > 0.85


@pytest.mark.slow
def test_reward_only_ppo_gets_less_safe_and_safe_rlhf_safer_than_sft(family):
    unsafe = {algo: mean_over_seeds(runs, "eval/unsafe_rate") for algo, runs in family.items()}
    assert unsafe["ppo"] > unsafe["sft"] + 0.3  # measured gap 0.50
    assert unsafe["safe_rlhf"] < unsafe["sft"] - 0.1  # measured gap 0.29, standard error 0.035
    assert unsafe["ppo"] > unsafe["safe_rlhf"] + 0.5  # measured gap 0.78
    helpful = {algo: mean_over_seeds(runs, "eval/kind/benign/helpfulness") for algo, runs in family.items()}
    assert helpful["safe_rlhf"] > helpful["sft"] - 0.15  # helpfulness on benign prompts is kept


@pytest.mark.slow
def test_reward_shaping_lowers_the_unsafe_rate_against_ppo_at_an_equal_budget(family):
    shaping, ppo = family["reward_shaping"], family["ppo"]
    assert [s["metrics"]["train/nan_skipped"] for s, _ in shaping] == [0.0] * len(SEEDS)
    # equal budget: the same iterations, batch and generated tokens per iteration
    assert {len([r for r in h if r["stage"] == "rl"]) for _, h in shaping + ppo} == {30}
    assert mean_over_seeds(shaping, "eval/unsafe_rate") < mean_over_seeds(ppo, "eval/unsafe_rate") - 0.3  # gap 0.61


@pytest.mark.slow
def test_lambda_follows_the_sign_of_j_c_minus_d_every_iteration(family):
    """log lambda += lr (J_C - d) lambda, clamped at lambda_max: lambda rises exactly while J_C > d."""
    for summary, history in family["safe_rlhf"]:
        rows = [r for r in history if r["stage"] == "rl"]
        d, lambda_max = -3.5, 5.0  # conf/algo/safe_rlhf.yaml
        rises = falls = 0
        for before, after in zip(rows, rows[1:]):
            j_c, step = after["train/J_C"], after["train/lambda"] - before["train/lambda"]
            if j_c > d:
                assert step > 0 or math.isclose(after["train/lambda"], lambda_max), (summary["seed"], after)
                rises += step > 0
            elif j_c < d:
                assert step < 0, (summary["seed"], after)
                falls += 1
        assert rises > 0, summary["seed"]


def _forced_costs(monkeypatch, violate_for: int, cost_high: float, cost_low: float):
    """Training costs of ``cost_high`` for the first ``violate_for`` iterations, ``cost_low`` after."""
    import torch

    from alignbench.signals.sources import TrainingSignals
    from alignbench.training.module import AlignmentModule

    state = {"iteration": 0}
    step = AlignmentModule.training_step

    def counting(self, batch, batch_idx):
        state["iteration"] = self.iteration + 1
        return step(self, batch, batch_idx)

    def cost(self, records, texts):
        value = cost_high if state["iteration"] <= violate_for else cost_low
        return self._hand_out("cost", records, texts, torch.full((len(records),), value))

    monkeypatch.setattr(AlignmentModule, "training_step", counting)
    monkeypatch.setattr(TrainingSignals, "cost", cost)


@pytest.mark.slow
@pytest.mark.parametrize("algo,threshold,high,low", [
    ("safe_rlhf", -1.0, 1.0, -3.0),  # J_C (mean of the window) above d, then below once low costs fill it
    ("repo", 0.0, 1.0, -3.0),        # violations stop: the rectified mean drops to 0 < slack s = 0.05
])
def test_lambda_rises_while_the_constraint_is_violated_and_falls_afterwards(tmp_path, stage_cache, monkeypatch,
                                                                          algo, threshold, high, low):
    from test_resume import make_rc, run

    _forced_costs(monkeypatch, violate_for=5, cost_high=high, cost_low=low)
    run(make_rc([f"algo={algo}", "algo.steps=12", "algo.batch_size=4", "algo.lagrange.window=4",
                 f"algo.lagrange.threshold={threshold}", "algo.lagrange.lambda_max=100"], tmp_path, stage_cache))
    rows = [json.loads(line) for line in (tmp_path / "history.jsonl").read_text().splitlines()]
    lam = [r["train/lambda"] for r in rows if r.get("stage") == "rl" and "train/lambda" in r]
    assert len(lam) == 12
    assert all(b > a for a, b in zip(lam[:5], lam[1:5])) and lam[4] > 1.0  # rising while violated
    # the window (4 = one batch) holds only low costs from iteration 6 on: lambda falls every iteration
    assert all(b < a for a, b in zip(lam[5:], lam[6:])) and lam[-1] < lam[4]
