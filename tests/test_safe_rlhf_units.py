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


def _cost_side_advantages(rectification: str, costs: list[float], value: float, lam: float = 1.0) -> list[float]:
    """The cost term of the actor advantage, -lam * u * A_C / (1 + lam), for one-token responses with a
    critic that predicts ``value`` for all of them (KL 0), through the real PPO/RePO code path."""
    from alignbench.algorithms.repo import RePO, RePOConfig
    from alignbench.rl.advantages import combine_lagrangian, gae
    from alignbench.rl.shaping import shape_token_rewards

    repo = RePO.__new__(RePO)
    repo.cfg = RePOConfig(rectification=rectification)
    c = torch.tensor(costs)
    mask = torch.ones(len(costs), 1)
    stream = shape_token_rewards(repo.cost_stream_score(c), torch.zeros(len(costs), 1), mask, 0.0, -1.0, 50.0)
    cost_adv, _ = gae(stream, torch.full((len(costs), 1), value), mask, 1.0, 0.95)
    return combine_lagrangian(torch.zeros_like(cost_adv), cost_adv, lam, repo.violation_mask(c))[:, 0].tolist()


def test_repo_gradient_forms_by_hand():
    from alignbench.algorithms.repo import RePO, RePOConfig

    repo = RePO.__new__(RePO)
    costs = torch.tensor([-2.0, 0.5, 0.0, 3.0])
    repo.cfg = RePOConfig()  # default: critic on the rectified cost {C - d}+, no mask
    assert repo.cfg.rectification == "critic" and repo.violation_mask(costs) is None
    assert repo.cost_stream_score(costs).tolist() == [0.0, 0.5, 0.0, 3.0]
    repo.cfg = RePOConfig(rectification="mask")
    assert repo.violation_mask(costs).tolist() == [0.0, 1.0, 0.0, 1.0]  # C > d = 0
    assert repo.cost_stream_score(costs).tolist() == costs.tolist()
    assert RePOConfig().lagrange.mode == "rectified"


def test_mask_form_pays_a_mild_violation_a_bonus_the_critic_form_never_does():
    safe, mild, severe = -2.0, 0.2, 3.0  # d = 0
    # mask: A_C = C - V_C with V_C = 1; u = [0, 1, 1]; cost term -u A_C / 2 = [0, +0.4, -1.0]
    masked = _cost_side_advantages("mask", [safe, mild, severe], value=1.0)
    assert masked == pytest.approx([0.0, 0.4, -1.0])
    assert masked[1] > masked[0]  # the mildly unsafe answer beats the safe one on the cost side
    # critic: A_C = {C}+ - V with V = 0.5: [-0.5, -0.3, 2.5]; cost term [0.25, 0.15, -1.25]
    rectified = _cost_side_advantages("critic", [safe, mild, severe], value=0.5)
    assert rectified == pytest.approx([0.25, 0.15, -1.25])
    assert rectified[0] > rectified[1] > rectified[2]  # never a bonus for violating over a safe answer


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
                    "losses/policy/approx_kl", "losses/policy/clipfrac", "losses/policy/entropy",
                    "losses/reward_critic/value_loss", "optim/policy/grad_norm", "optim/policy/lr",
                    "optim/reward_critic/lr", "timing/generation"):
            assert key in rl_rows[-1], (summary["algo"], key)
        lagrangian = summary["algo"] in ("safe_rlhf", "repo")
        assert ("train/lambda" in rl_rows[-1]) == lagrangian
        assert any(k.startswith("train/category/") for k in rl_rows[-1])
        assert summary["perf"]["train_tokens"] > 0
