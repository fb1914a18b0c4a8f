"""Compute accounting (alignbench.models.compute): FLOPs of a pass by hand, every role counted, phases and
cached stages.

The hand-computed model: a Llama with d = 8, ffn = 16, 2 layers, 2 heads, vocabulary 10 (untied). Its
layer parameters are N = 2 x (4 x 8 x 8 attention + 3 x 8 x 16 MLP + 2 x 8 norms) + 8 final norm = 1320.
"""

from __future__ import annotations

import json

import pytest
import torch

from alignbench.models.compute import METER, ComputeMeter, Counts, model_shape
from conftest import run_cli

N = 2 * (4 * 8 * 8 + 3 * 8 * 16 + 2 * 8) + 8


@pytest.fixture
def llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2,
                         num_key_value_heads=2, vocab_size=10, max_position_embeddings=32, tie_word_embeddings=False)
    return LlamaForCausalLM(config)


def _mask(*lengths: int, width: int = 5) -> torch.Tensor:
    return torch.tensor([[0] * (width - n) + [1] * n for n in lengths])


def test_model_shape_by_hand(llama):
    shape = model_shape(llama)
    assert (shape.layer_params, shape.n_layer, shape.d_attn, shape.d_model, shape.vocab) == (N, 2, 8, 8, 10)


def test_forward_and_training_flops_by_hand(llama):
    meter = ComputeMeter()
    # rows of 3 and 5 real tokens, logits at all 8: 2 N T + 2 n_layer d_attn sum L(L+1) + 2 d V T_out
    forward = 2 * N * 8 + 2 * 2 * 8 * (3 * 4 + 5 * 6) + 2 * 8 * 10 * 8
    with torch.no_grad():
        meter.forward(llama, _mask(3, 5), logit_positions=8)
    assert meter.phases["other"] == Counts(fwd_tokens=8, flops=forward)
    meter.forward(llama, _mask(3, 5), logit_positions=8, grad=True)  # every weight trains: backward 2 F_fwd
    assert meter.phases["other"].train_tokens == 8 and meter.phases["other"].flops == forward + 3 * forward
    llama.requires_grad_(False)  # a frozen base (LoRA): activation gradients only
    meter.forward(llama, _mask(3, 5), logit_positions=8, grad=True)
    assert meter.phases["other"].flops == forward + 3 * forward + 2 * forward


def test_generation_counts_prefill_and_decode(llama):
    meter = ComputeMeter()
    meter.generated(llama, _mask(3, 2, width=3), _mask(2, 4, width=4).flip(1))  # responses of 2 and 4 tokens
    lengths = (5, 6)
    flops = 2 * N * 11 + 2 * 2 * 8 * sum(n * (n + 1) for n in lengths) + 2 * 8 * 10 * 6
    assert meter.phases["other"] == Counts(gen_tokens=6, fwd_tokens=11, flops=flops)


def test_every_role_pass_is_counted_through_the_central_paths():
    """Policy log-probs, the reference, a critic and a rollout all reach the meter without the caller counting."""
    from alignbench.config import ModelConfig
    from alignbench.data.world import SafetyWorld
    from alignbench.models.loading import load_base
    from alignbench.models.roles import RoleSet, RoleSpec
    from alignbench.rl.experience import critic_values, policy_logprobs
    from alignbench.rl.rollout import generate_rollout, left_pad_batch

    base, tokenizer = load_base(ModelConfig(), vocabulary=SafetyWorld().vocabulary(), seed=0)
    roles = RoleSet(base, [RoleSpec("policy"), RoleSpec("critic", "score")], ModelConfig())
    ids, mask = left_pad_batch([tokenizer("what is 7 plus 5 ?")["input_ids"]] * 2, tokenizer.pad_token_id)
    METER.reset()
    with METER.phase("rl") as spent, torch.no_grad(), roles.generation_model("policy") as model:
        rollout = generate_rollout(model, ids, mask, max_new_tokens=4, eos_token_id=tokenizer.eos_token_id,
                                   pad_token_id=tokenizer.pad_token_id)
    generated = float(rollout.response_mask.sum())
    assert spent.gen_tokens == generated and spent.fwd_tokens == float(rollout.attention_mask.sum())
    tokens = float(rollout.attention_mask.sum())
    with METER.phase("rl") as spent:
        with torch.no_grad():
            policy_logprobs(roles, "reference", rollout)
            critic_values(roles, "critic", rollout)
        policy_logprobs(roles, "policy", rollout).sum().backward()  # a pass with grad
    assert spent.fwd_tokens == 2 * tokens and spent.train_tokens == tokens and spent.flops > 0
    assert METER.total().flops == METER.phases["rl"].flops


def test_phases_records_and_state():
    meter = ComputeMeter()
    with meter.phase("sft"):
        meter._counts().add({"train_tokens": 10, "flops": 100.0})
        with meter.phase("monitor"):  # nested: held-out measurement is not training
            meter._counts().add({"fwd_tokens": 5, "flops": 7.0})
    meter.add("reward_model", {"train_tokens": 3, "flops": 30.0})  # a cached stage's recorded cost
    with meter.phase("eval"):
        meter._counts().add({"gen_tokens": 4, "flops": 9.0})
    assert meter.total() == Counts(train_tokens=13, flops=130.0)
    assert meter.total(training=False) == Counts(gen_tokens=4, fwd_tokens=5, flops=16.0)
    assert meter.total(world_size=2).flops == 260.0
    report = meter.report()
    assert report["reward_model"]["recorded"] and not report["sft"]["recorded"]
    restored = ComputeMeter()
    restored.load_state_dict(json.loads(json.dumps(meter.state_dict())))
    assert restored.report() == report
    # DDP with 2 ranks: a rank counts its shard, a cache record holds the job's total, and totals scale back
    ranked = ComputeMeter()
    ranked.add("sft", {"flops": 30.0}, world_size=2)
    assert ranked.phases["sft"].flops == 15.0 and ranked.total(world_size=2).flops == 30.0
    assert ranked.record(ranked.phases["sft"], world_size=2)["flops"] == 30.0
    with ranked.phase("eval"):  # the final evaluation runs once per job: never scaled by the ranks
        ranked._counts().add({"gen_tokens": 4, "flops": 9.0})
    assert ranked.report(world_size=2)["eval"]["flops"] == 9.0 and ranked.report(world_size=2)["sft"]["flops"] == 30.0


@pytest.mark.slow
def test_a_cached_stage_counts_what_it_cost_when_trained(tmp_path):
    """Two identical jobs, the first trains the SFT stage and the second loads it: same totals."""
    args = ["algo=sft", "experiment=smoke", "stages.sft.steps=4", "logger=none"]
    env = {"ALIGNBENCH_CACHE": str(tmp_path / "cache")}
    summaries = []
    for name, threads in (("trained", 2), ("cached", 1)):  # counts are logical: the thread count changes nothing
        result = run_cli([*args, f"trainer.num_threads={threads}", f"hydra.run.dir={tmp_path / name}"], env=env)
        assert result.returncode == 0, result.stderr[-2000:]
        summaries.append(json.loads((tmp_path / name / "summary.json").read_text()))
    trained, cached = summaries
    assert (trained["perf"]["threads"], cached["perf"]["threads"]) == (2, 1)  # trainer.num_threads reaches torch
    assert trained["compute"]["sft"]["recorded"] is False and cached["compute"]["sft"]["recorded"] is True
    assert trained["perf"]["flops"] == cached["perf"]["flops"] > 0
    assert trained["perf"]["train_tokens"] == cached["perf"]["train_tokens"] > 0
    assert trained["perf"]["eval_flops"] > 0 and "eval" in cached["compute"]
