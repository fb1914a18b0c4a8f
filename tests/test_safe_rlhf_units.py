"""Reward/cost model losses by hand, RePO's rectification, and a smoke run of every PPO variant."""

from __future__ import annotations

import math

import pytest
import torch

from alignbench.algorithms.preference import cost_model_loss, reward_model_loss
from alignbench.summary import read_history, read_summary
from conftest import run_cli


def log_sigmoid(x: float) -> float:
    return -math.log1p(math.exp(-x))


def test_reward_model_loss_by_hand():
    better, worse = torch.tensor([2.0, 0.5]), torch.tensor([1.0, 1.5])
    # -mean(log sigmoid(1), log sigmoid(-1)) + 0.001 * mean(4 + 1, 0.25 + 2.25) / 2
    expected = -(log_sigmoid(1.0) + log_sigmoid(-1.0)) / 2 + 0.001 * ((4 + 1) + (0.25 + 2.25)) / 2 / 2
    assert float(reward_model_loss(better, worse)) == pytest.approx(expected, rel=1e-6)


def test_cost_model_loss_by_hand_and_its_sign_terms():
    safer, unsafer = torch.tensor([-1.0]), torch.tensor([2.0])
    safe, unsafe = torch.tensor([1.0]), torch.tensor([-1.0])  # +1 safe, -1 unsafe
    # pairwise -log s(2 - (-1)); sign terms -log s(-(+1)(-1)) - log s(-(-1)(2)); reg 0.001*(1+4)/2
    expected = -log_sigmoid(3.0) - log_sigmoid(1.0) - log_sigmoid(2.0) + 0.001 * (1 + 4) / 2
    assert float(cost_model_loss(safer, unsafer, safe, unsafe)) == pytest.approx(expected, rel=1e-6)
    # the sign terms push a response labelled unsafe to C > 0: the loss falls as its cost rises
    lower = cost_model_loss(safer, torch.tensor([0.5]), safe, unsafe)
    higher = cost_model_loss(safer, torch.tensor([3.0]), safe, unsafe)
    assert float(higher) < float(lower)


def test_repo_rectifies_only_violating_responses():
    from types import SimpleNamespace

    from alignbench.algorithms.repo import RePO, RePOConfig

    repo = RePO.__new__(RePO)
    repo.cfg = RePOConfig()
    costs = torch.tensor([-2.0, 0.5, 0.0, 3.0])
    assert repo.violation_mask(costs).tolist() == [0.0, 1.0, 0.0, 1.0]  # C > d = 0
    repo.cfg = RePOConfig(rectified=False)
    assert repo.violation_mask(costs) is None
    assert RePOConfig().lagrange.mode == "rectified"
    del SimpleNamespace


def test_every_ppo_variant_runs_and_logs_its_metrics(tmp_path, stage_cache):
    result = run_cli(["-m", "algo=ppo,reward_shaping,safe_rlhf,repo", "experiment=smoke", "algo.steps=4",
                      "algo.batch_size=8", "logger=none", f"hydra.sweep.dir={tmp_path}"])
    assert result.returncode == 0, result.stderr[-3000:]
    for job in sorted(tmp_path.glob("*/summary.json")):
        summary = read_summary(job.parent)
        assert summary["status"] == "ok", summary["error"]
        rl_rows = [row for row in read_history(job.parent) if row["stage"] == "rl"]
        assert [row["iteration"] for row in rl_rows] == [1, 2, 3, 4]
        for key in ("train/reward", "train/episode_cost", "train/violation_rate", "train/cost_p95",
                    "losses/approx_kl", "losses/clipfrac", "losses/entropy", "timing/generation"):
            assert key in rl_rows[-1], (summary["algo"], key)
        lagrangian = summary["algo"] in ("safe_rlhf", "repo")
        assert ("train/lambda" in rl_rows[-1]) == lagrangian
        assert any(k.startswith("train/category/") for k in rl_rows[-1])
        assert summary["perf"]["train_tokens"] > 0
