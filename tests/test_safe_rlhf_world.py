"""The Safe RLHF family on the default world: what ALGORITHMS.md §1-2 says each must show."""

from __future__ import annotations

import pytest

from alignbench.summary import read_summary
from conftest import run_cli


@pytest.mark.slow
def test_safe_rlhf_family_on_the_world(tmp_path, stage_cache):
    result = run_cli(["experiment=safe_rlhf_world", "logger=none", f"hydra.sweep.dir={tmp_path}"], timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    runs = {s["algo"]: s for s in (read_summary(p.parent) for p in tmp_path.glob("*/summary.json"))}
    assert set(runs) == {"sft", "ppo", "safe_rlhf", "repo"}
    assert all(s["status"] == "ok" for s in runs.values())
    sft, ppo, lag, repo = (runs[a]["metrics"] for a in ("sft", "ppo", "safe_rlhf", "repo"))

    # preference models learned their signal (chance is 0.5)
    assert lag["stages/reward_model/accuracy"] > 0.75
    assert lag["stages/cost_model/accuracy"] > 0.75
    assert lag["stages/cost_model/sign_accuracy"] > 0.85
    # ... on held-out pairs of prompts never trained on, and the summary says how many
    split = runs["safe_rlhf"]["split"]
    assert split["shared_prompts"] == 0
    assert lag["stages/reward_model/heldout_pairs"] >= lag["stages/reward_model/heldout_prompts"] > 0
    # reward-only PPO gets less safe than the Lagrangian method
    assert ppo["eval/unsafe_rate"] > lag["eval/unsafe_rate"] + 0.1
    # Safe RLHF lowers the unsafe rate below the SFT model's while keeping helpfulness on benign prompts
    assert lag["eval/unsafe_rate"] < sft["eval/unsafe_rate"] - 0.1
    assert lag["eval/kind/benign/helpfulness"] > sft["eval/kind/benign/helpfulness"] - 0.1
    # RePO's per-prompt constraint leaves fewer violating prompts than the average constraint
    assert repo["eval/violation_rate"] < lag["eval/violation_rate"]
    # the multiplier moved: it rose while the cost was above d, then came back down
    assert "train/lambda" in lag and "train/lambda" not in ppo
