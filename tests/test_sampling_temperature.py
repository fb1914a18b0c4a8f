"""Log-probs, ratios and KL use the distribution the rollout sampled from: softmax(z / T)."""

from __future__ import annotations

import pytest
import torch

T = 0.7


def _context(composed, overrides):
    from alignbench.config import validate_config
    from alignbench.registry import ALGORITHMS
    from alignbench.training.pipeline import build_context

    import alignbench.algorithms  # noqa: F401 - registers every algorithm

    cfg = composed(["experiment=smoke", "logger=none", *overrides])
    rc = validate_config(cfg, ALGORITHMS.get(cfg.algo.name).config_class)
    return rc, build_context(rc, sink=None)


class _Host:
    """Takes no optimiser step: the policy stays pi_old, as on the first minibatch."""

    iteration = 0

    def optimize(self, name, loss):
        assert torch.isfinite(loss)
        return {"grad_norm": 0.0}


def test_collect_scores_the_tempered_policy_ratio_one_and_kl_zero(composed):
    """At T = 0.7: old log-probs are log_softmax(z / 0.7) of the sampled tokens (computed here by hand),
    the first minibatch's ratio is 1, and KL to an identical reference (a fresh LoRA adapter) is 0."""
    from alignbench.config import GenerationConfig
    from alignbench.models.roles import RoleSet, RoleSpec
    from alignbench.rl.experience import actor_loss, collect
    from alignbench.rl.losses import kl_penalty, masked_mean

    rc, ctx = _context(composed, ["algo=ppo"])
    roles = RoleSet(ctx.base, [RoleSpec("policy", "lm", True)], rc.model)
    prompts = [r.prompt for r in ctx.data.train_prompts[:6]]
    exp = collect(ctx, roles, "policy", prompts, GenerationConfig(max_new_tokens=12, temperature=T),
                  generator=torch.Generator().manual_seed(0))
    assert exp.temperature == T

    r = exp.rollout
    with torch.no_grad(), roles.use("policy") as model:
        logits = model(input_ids=r.sequences, attention_mask=r.attention_mask).logits.float()
    P = r.response_start
    by_hand = torch.log_softmax(logits[:, P - 1:-1] / T, -1).gather(-1, r.response_ids.unsqueeze(-1)).squeeze(-1)
    mask = exp.mask.bool()
    assert torch.allclose(exp.old_logp[mask], by_hand[mask], atol=1e-4)
    at_one = torch.log_softmax(logits[:, P - 1:-1], -1).gather(-1, r.response_ids.unsqueeze(-1)).squeeze(-1)
    assert (exp.old_logp[mask] - at_one[mask]).abs().max() > 0.05  # T = 1 would be a different policy

    kl = masked_mean(kl_penalty(exp.old_logp, exp.ref_logp, "k3"), exp.mask)
    assert abs(float(kl)) < 1e-6
    _, stats = actor_loss(roles, "policy", exp, torch.ones_like(exp.old_logp), clip_eps=0.2, kl_loss_coef=0.1)
    assert stats["ratio_mean"] == pytest.approx(1.0, abs=1e-5)
    assert stats["kl_loss"] == pytest.approx(0.0, abs=1e-5)
    assert stats["clipfrac"] == 0.0


@pytest.mark.parametrize("algo, overrides, ratio_key, kl_key", [
    ("ppo", ["algo.rollout.temperature=0.7"], "losses/policy/ratio_mean", "train/kl"),
    ("single_rl", ["algo.rollout.temperature=0.7"], "losses/policy/ratio_mean", "train/kl"),
    ("waltzrl", ["algo.conversation_rollout.temperature=0.7", "algo.feedback_rollout.temperature=0.7",
                 "algo.stage1_steps=0"], "losses/conversation/ratio_mean", "train/conversation/kl"),
])
def test_every_algorithm_scores_its_rollout_temperature(composed, monkeypatch, algo, overrides, ratio_key, kl_key):
    """One training step of each algorithm family at T = 0.7: every log-prob pass is at 0.7, the first
    minibatch's ratio is 1 and the KL to the (identical) reference is 0."""
    import alignbench.rl.experience as experience
    from alignbench.algorithms.base import StageOutputs
    from alignbench.models.roles import RoleSet, RoleSpec
    from alignbench.registry import ALGORITHMS

    from alignbench.training.pipeline import prepare_component
    from alignbench.utils.oracle import oracle_allowed_in_training

    rc, ctx = _context(composed, [f"algo={algo}", "signals=oracle", *overrides])
    score_states = RoleSet(ctx.base, [RoleSpec(r, "score", False) for r in ("reward_model", "cost_model")], rc.model)
    states = {role: score_states.role_state_dict(role) for role in ("reward_model", "cost_model")}
    ctx.base = score_states.peft.unload()
    component, _, _ = prepare_component(ctx, ALGORITHMS.get(algo), StageOutputs(states=states))

    temperatures = []
    original = experience.sequence_logprobs

    def spy(*args, temperature=1.0, **kwargs):
        temperatures.append(temperature)
        return original(*args, temperature=temperature, **kwargs)

    monkeypatch.setattr(experience, "sequence_logprobs", spy)
    torch.manual_seed(0)
    with oracle_allowed_in_training(True):  # signals=oracle: the rewards need no trained stage
        metrics = component.training_step(ctx.data.train_prompts[:4], _Host())
    assert temperatures and set(temperatures) == {T}
    assert metrics[ratio_key] == pytest.approx(1.0, abs=1e-5)
    assert metrics[kl_key] == pytest.approx(0.0, abs=1e-5)
