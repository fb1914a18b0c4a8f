"""bf16 end to end: every registered algorithm trains and evaluates a few iterations with the model in
bfloat16 (``model.dtype=bfloat16``) and under autocast (``trainer.precision=bf16-mixed``, the default
of ``trainer=gpu``), with finite losses.

bf16 matmuls are slow on CPUs without AVX-512, so the model is a 1-layer, 32-wide Llama and every
stage, rollout and evaluation is a few steps / tokens long: this checks that the code paths run (no
bf16 tensor reaches numpy, no statistic is taken in bf16), not what bf16 training learns.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import alignbench.algorithms  # noqa: F401 - registers the algorithms
from alignbench.config import LoggerConfig, validate_config
from alignbench.registry import ALGORITHMS
from alignbench.summary import read_history
from alignbench.training import checkpoint as ckpt
from conftest import compose

TINY = ["experiment=smoke", "logger=none", "trainer.num_threads=1", "model.arch.hidden_size=32",
        "model.arch.intermediate_size=64", "model.arch.num_hidden_layers=1", "model.arch.num_attention_heads=2",
        "model.arch.num_key_value_heads=2", "stages.sft.steps=2", "stages.sft.batch_size=4",
        "stages.reward_model.steps=2", "stages.reward_model.batch_size=4", "stages.cost_model.steps=2",
        "stages.cost_model.batch_size=4", "data.eval_prompts=4", "eval.samples_per_prompt=1",
        "eval.generation.max_new_tokens=4", "eval.table_rows=2"]
PPO = ["algo.steps=2", "algo.batch_size=2", "algo.rollout.max_new_tokens=4"]
WALTZ_EVAL = ["algo.feedback_eval.max_new_tokens=6", "algo.warmup.steps=2", "algo.warmup.batch_size=2"]
CASES = {
    "sft": [], "ppo": PPO, "safe_rlhf": PPO, "repo": PPO, "reward_shaping": PPO, "single_rl": PPO,
    "safeguard": [], "eval_only": [], "waltzrl_untrained": WALTZ_EVAL,
    "waltzrl": ["algo.steps=2", "algo.batch_size=2", "algo.conversation_rollout.max_new_tokens=4",
                "algo.feedback_rollout.max_new_tokens=6", *WALTZ_EVAL],
    "triplay": ["algo.iterations=1", "algo.phase_steps={red: 1, blue: 1, eval: 1}", "algo.attacker_warmup_steps=1",
                "algo.evaluator_warmup_steps=1", "algo.warmup_batch_size=2", "algo.batch_size=2", "algo.group_size=2",
                "algo.eval_replay=2", "algo.phase_metrics=false", "algo.warmup_cache=false",
                "algo.attacker_rollout.max_new_tokens=6", "algo.defender_rollout.max_new_tokens=4"],
}
MODES = {"bf16-weights": ["model.dtype=bfloat16"], "bf16-mixed": ["trainer.precision=bf16-mixed"]}
#: algorithms that train nothing of their own (their stages are SFT only, or none)
NO_RL_FIT = ("sft", "safeguard", "eval_only", "waltzrl_untrained")


def test_every_registered_algorithm_has_a_bf16_case():
    assert sorted(CASES) == sorted(ALGORITHMS.names())


def _run(name: str, mode: str, out: Path, cache: Path) -> dict:
    from alignbench.training.pipeline import run_job
    from alignbench.training.sink import MetricsSink

    cfg = compose([f"algo={name}", *TINY, *CASES[name], *MODES[mode]], out, cache)
    rc = validate_config(cfg, ALGORITHMS.get(name).config_class)
    out.mkdir(parents=True, exist_ok=True)
    sink = MetricsSink(LoggerConfig(name="none"), str(out), run_name="t", group="t", job_type="t", config={})
    try:
        return run_job(rc, sink)
    finally:
        sink.finish()


@pytest.mark.parametrize("mode", sorted(MODES))
@pytest.mark.parametrize("name", sorted(CASES))
def test_algorithm_runs_in_bf16_with_finite_losses(name, mode, tmp_path):
    # a cache of its own: stages trained in bf16 must not be mixed with anything else
    result = _run(name, mode, tmp_path / "run", tmp_path / "cache")
    rows = read_history(tmp_path / "run")
    losses = {(row["stage"], key): row[key] for row in rows for key in row if key.endswith("loss")}
    # every logged loss is a number (NaN/inf are logged as null) and finite
    assert all(value is not None and math.isfinite(value) for value in losses.values()), losses
    assert all(row.get(key) in (None, 0.0) for row in rows for key in row if key.endswith("nan_skipped"))
    if name not in NO_RL_FIT:
        assert any(stage == "rl" for stage, _ in losses), sorted(losses)
        final = ckpt.load_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt")
        assert final["iteration"] == final["num_iterations"] >= 2
    if mode == "bf16-weights" and name != "eval_only":  # the SFT model (all weights trained) really is bf16
        from safetensors.torch import load_file

        (entry,) = (tmp_path / "cache" / "stages").glob("sft-*")
        assert {t.dtype for t in load_file(str(entry / "weights.safetensors")).values()} == {torch.bfloat16}
    evaluation = {k: v for k, v in result["metrics"].items() if k.startswith("eval/") and k.count("/") == 1}
    assert evaluation and all(v is None or math.isfinite(v) for v in evaluation.values()), evaluation
    assert 0.0 <= evaluation["eval/unsafe_rate"] <= 1.0
