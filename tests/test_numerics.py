"""Numerical faults: NaN/inf in a loss, reward, cost or lambda is detected, the step skipped and counted
(``train/nan_skipped``); ``max_nan_steps`` faulty iterations in a row stop the run with one line
(``NumericalFaultError``) and leave its last good checkpoint in place."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from alignbench.algorithms.base import AlgorithmComponent, OptimizerSpec
from alignbench.config import OptimConfig, TrainerConfig
from alignbench.errors import NumericalFaultError
from alignbench.rl.lagrange import LagrangeMultiplier
from alignbench.training import checkpoint as ckpt
from alignbench.training.callbacks import metric_faults
from test_resume import make_rc, run

SAFE_RLHF = ["algo=safe_rlhf", "algo.steps=4", "algo.batch_size=8"]


def test_which_metrics_are_faults():
    metrics = {"losses/policy/policy_loss": math.nan, "train/reward": math.inf, "train/lambda": -math.inf,
               "train/episode_cost": math.nan, "sft/loss": math.nan, "train/feedback_reward": math.nan,
               "losses/reward_critic/explained_variance": math.nan, "losses/cost_critic/explained_variance": math.nan,
               "timing/generation": math.nan, "train/violation_rate": math.nan, "train/kl": 0.1,
               "losses/reward_critic/value_loss": 1.0, "optim/policy/grad_norm": math.nan}
    assert sorted(metric_faults(metrics)) == ["losses/policy/policy_loss", "sft/loss", "train/episode_cost",
                                              "train/feedback_reward", "train/lambda", "train/reward"]


def test_lagrange_multiplier_ignores_non_finite_costs():
    lagrange = LagrangeMultiplier(init=1.0, lr=0.1, threshold=0.0, window=8)
    lagrange.update(torch.tensor([1.0, 1.0]))
    before = lagrange.value
    out = lagrange.update(torch.tensor([math.nan, math.inf, 1.0]))
    assert math.isfinite(out["lambda"]) and math.isfinite(out["J_C"]) and lagrange.value > before
    assert list(lagrange.costs) == [1.0, 1.0, 1.0]  # the NaN/inf never entered the window
    out = lagrange.update(torch.tensor([math.nan]))
    assert out["updated"] and math.isfinite(lagrange.value)


# ---------------------------------------------------------------------------------- the host, directly
class _Roles(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(3))

    def trainable_state_dict(self):
        return {"w/x": self.w.detach().clone()}

    def load_trainable_state_dict(self, state):
        with torch.no_grad():
            self.w.copy_(state["w/x"])


class _Quadratic(AlgorithmComponent):
    """Minimises |w|^2; the loss is NaN at the iterations listed in ``bad``."""

    def __init__(self, bad: set[int], steps: int) -> None:
        super().__init__(SimpleNamespace(steps=steps, batch_size=1), SimpleNamespace(counters=None, signals=None, judge=None))
        self.bad, self.seen = bad, []

    def train_items(self):
        return [0]

    def optimizer_specs(self):
        return {"w": OptimizerSpec([self.roles.w], OptimConfig(lr=0.1), self.num_iterations)}

    def training_step(self, batch, host):
        loss = (self.roles.w ** 2).sum() * (math.nan if host.iteration + 1 in self.bad else 1.0)
        stats = host.optimize("w", loss)
        self.seen.append(self.roles.w.detach().clone())
        return {"quad/loss": float(loss.detach()), "quad/grad_norm": stats["grad_norm"]}


def _fit(tmp_path: Path, bad: set[int], steps: int, max_nan_steps: int):
    from alignbench.training.pipeline import fit_component

    component, roles = _Quadratic(bad, steps), _Roles()
    component.attach(roles)
    rc = SimpleNamespace(raw=None, output_dir=str(tmp_path), resume=False, max_nan_steps=max_nan_steps,
                         trainer=TrainerConfig(checkpoint_every=1))
    ctx = SimpleNamespace(rc=rc, sink=None, device=torch.device("cpu"), data=None)
    return component, lambda: fit_component(component, roles, ctx, "quad", seed=0)


def test_nan_loss_skips_the_optimiser_step_and_training_goes_on(tmp_path):
    component, fit = _fit(tmp_path, bad={2, 3}, steps=5, max_nan_steps=3)
    fit()
    w = component.seen
    assert torch.equal(w[1], w[0]) and torch.equal(w[2], w[0])  # iterations 2, 3: no step at all
    assert not torch.equal(w[3], w[2]) and bool(torch.isfinite(w[4]).all())
    saved = ckpt.load_checkpoint(tmp_path / "checkpoints" / "quad" / "last.ckpt")
    assert saved["iteration"] == 5 and saved["nan"] == {"skipped": 2, "consecutive": 0}
    assert saved["optimizers"]["w"]["state"][0]["step"].item() == 3  # 5 iterations, 3 real steps


def test_consecutive_faults_stop_the_run_and_keep_the_last_good_checkpoint(tmp_path):
    component, fit = _fit(tmp_path, bad={3, 4, 5}, steps=6, max_nan_steps=2)
    with pytest.raises(NumericalFaultError) as info:
        fit()
    message = str(info.value)
    assert "\n" not in message and "2 consecutive" in message and "max_nan_steps=2" in message
    assert "w loss" in message and "quad/loss" in message and "last.ckpt" in message
    saved = ckpt.load_checkpoint(tmp_path / "checkpoints" / "quad" / "last.ckpt")
    assert saved["iteration"] == 2  # the faulty iterations 3 and 4 were never checkpointed
    assert torch.equal(saved["roles"]["w/x"], component.seen[-1])  # and changed no weight


# ---------------------------------------------------------------------------------- a real RL run
def _nan_scores(monkeypatch, *, role: str, iterations: set[int] | None):
    """Make the ``role`` scores NaN at the given RL iterations (every iteration when None)."""
    import alignbench.rl.experience as experience  # what the training signals score with
    from alignbench.training.module import AlignmentModule

    original, calls = experience.score_texts, {"iteration": 0}
    step = AlignmentModule.training_step

    def counting(self, batch, batch_idx):
        calls["iteration"] = self.iteration + 1
        return step(self, batch, batch_idx)

    def score_texts(ctx, roles, name, prompts, texts):
        scores = original(ctx, roles, name, prompts, texts)
        if name == role and (iterations is None or calls["iteration"] in iterations):
            return torch.full_like(scores, math.nan)
        return scores

    monkeypatch.setattr(AlignmentModule, "training_step", counting)
    monkeypatch.setattr(experience, "score_texts", score_texts)


def test_nan_costs_in_safe_rlhf_are_skipped_counted_and_lambda_stays_finite(tmp_path, stage_cache, monkeypatch):
    _nan_scores(monkeypatch, role="cost_model", iterations={2})
    result = run(make_rc(SAFE_RLHF, tmp_path, stage_cache))
    assert result["metrics"]["train/nan_skipped"] == 1.0
    assert math.isfinite(result["metrics"]["train/lambda"])
    final = ckpt.load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    steps = {name: state["state"][0]["step"].item() for name, state in final["optimizers"].items()}
    # the NaN cost reaches the actor (combined advantage) and the cost critic, not the reward critic
    assert steps == {"policy": 3, "reward_critic": 4, "cost_critic": 3}
    assert math.isfinite(float(final["component"]["lagrange"]["log_lambda"]))
    assert all(math.isfinite(c) for c in final["component"]["lagrange"]["costs"])


def test_persistent_nan_rewards_stop_the_cli_with_one_line(tmp_path, stage_cache, monkeypatch, capsys):
    from alignbench import cli
    from alignbench.summary import read_summary
    from conftest import compose

    _nan_scores(monkeypatch, role="reward_model", iterations={3, 4})
    overrides = [*SAFE_RLHF, "experiment=smoke", "logger=none", "eval.enabled=false", "trainer.num_threads=1",
                 "trainer.checkpoint_every=1", "max_nan_steps=2"]
    monkeypatch.setattr(cli, "_hydra_info", lambda: (str(tmp_path), False, overrides, "run"))
    with pytest.raises(SystemExit) as info:
        cli.main(compose(overrides, tmp_path, stage_cache))
    assert info.value.code == 1
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("alignbench:")]
    assert len(lines) == 1 and "NumericalFaultError" in lines[0] and "max_nan_steps=2" in lines[0]
    assert "Traceback" not in lines[0]
    summary = read_summary(tmp_path)
    assert summary["status"] == "failed" and "NumericalFaultError" in summary["error"]
    assert ckpt.load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["iteration"] == 2
