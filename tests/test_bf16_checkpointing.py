"""The GPU training path (bf16 weights, gradient checkpointing, LoRA; experiments/gpu_check.sh) on the CPU
at tiny sizes: checkpointing really recomputes, gradients match the plain pass, a whole job runs."""

from __future__ import annotations

import pytest
import torch

from alignbench.config import LoraConfig, ModelConfig, TinyArchConfig
from alignbench.models.loading import load_base
from alignbench.models.roles import RoleSet, RoleSpec
from alignbench.rl.logprobs import sequence_logprobs
from alignbench.rl.rollout import generate_rollout
from alignbench.summary import read_summary
from conftest import run_cli

ARCH = TinyArchConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=4)
WORDS = [f"w{i}" for i in range(30)]


def _roles(checkpointing: bool) -> RoleSet:
    cfg = ModelConfig(dtype="bfloat16", gradient_checkpointing=checkpointing, arch=ARCH,
                      lora=LoraConfig(r=4, alpha=8))
    base, _ = load_base(cfg, vocabulary=WORDS, seed=0)
    torch.manual_seed(0)
    roles = RoleSet(base, [RoleSpec("policy")], cfg)
    with torch.no_grad():
        for name, param in roles.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1, generator=torch.Generator().manual_seed(len(name)))
    return roles.train()


def _policy_gradients(roles: RoleSet, ids: torch.Tensor) -> tuple[dict[str, torch.Tensor], int]:
    """LoRA gradients of a sequence log-prob loss, and how often decoder layer 0's q projection ran
    (transformers checkpoints the layer's forward: what runs inside it runs again in backward)."""
    calls = []
    q_proj = roles.peft.base_model.model.model.layers[0].self_attn.q_proj
    handle = q_proj.register_forward_hook(lambda *args: calls.append(1))
    with roles.use("policy") as model:
        logp = sequence_logprobs(model, ids, torch.ones_like(ids), 4, torch.ones_like(ids[:, 4:]), packed="auto")
    logp.sum().backward()
    handle.remove()
    return {n: p.grad.float().clone() for n, p in roles.named_parameters() if p.grad is not None}, len(calls)


def test_bf16_checkpointed_lora_gradients_match_the_plain_pass():
    ids = torch.randint(4, 30, (3, 10), generator=torch.Generator().manual_seed(1))
    checkpointed, plain = _roles(True), _roles(False)
    base = checkpointed.peft.base_model.model
    assert base.dtype == torch.bfloat16 and base.is_gradient_checkpointing and not base.config.use_cache
    grads, calls = _policy_gradients(checkpointed, ids)
    reference, plain_calls = _policy_gradients(plain, ids)
    assert (calls, plain_calls) == (2, 1)  # checkpointing re-ran the projection in backward
    assert grads.keys() == reference.keys() and len(grads) == 2 * 4 * ARCH.num_hidden_layers  # A and B of q/k/v/o
    assert all(".lora_" in name for name in grads)  # the bf16 base stays frozen
    for name, grad in grads.items():
        assert torch.isfinite(grad).all() and grad.abs().sum() > 0, name
        torch.testing.assert_close(grad, reference[name], rtol=1e-2, atol=1e-4)
    # generation switches to eval mode, where the KV cache works despite checkpointing
    with torch.no_grad(), checkpointed.generation_model("policy") as model:
        rollout = generate_rollout(model, ids[:, :4], torch.ones_like(ids[:, :4]), max_new_tokens=3, eos_token_id=3,
                                   pad_token_id=0, do_sample=False)
    assert rollout.response_ids.shape == (3, 3) and checkpointed.training


def test_checkpointing_recomputes_in_eval_mode_with_the_same_gradients_to_the_bit():
    # a pretrained model loads in eval mode (no dropout); checkpointing must still recompute its layers in
    # the RoleSet's passes with grad (stages, critics), and change no loss or gradient
    def run(checkpointing: bool):
        cfg = ModelConfig(gradient_checkpointing=checkpointing, arch=ARCH, lora=LoraConfig(r=4, alpha=8))
        base, _ = load_base(cfg, vocabulary=WORDS, seed=0)
        torch.manual_seed(0)
        roles = RoleSet(base, [RoleSpec("policy"), RoleSpec("critic", "score")], cfg).eval()
        with torch.no_grad():
            for name, param in roles.named_parameters():
                if "lora_B" in name:
                    param.normal_(0, 0.1, generator=torch.Generator().manual_seed(len(name)))
        calls = []
        q_proj = roles.peft.base_model.model.model.layers[0].self_attn.q_proj
        handle = q_proj.register_forward_hook(lambda *args: calls.append(1))
        ids = torch.randint(4, 30, (3, 10), generator=torch.Generator().manual_seed(1))
        rows = torch.zeros_like(ids, dtype=torch.bool)
        rows[:, 5:] = True
        loss = roles.lm_logits("policy", ids, torch.ones_like(ids), rows=rows).logsumexp(-1).sum() \
            + roles.scores("critic", ids, torch.ones_like(ids)).pow(2).sum()
        loss.backward()
        handle.remove()
        assert not any(m.training for m in roles.modules())  # the layers' flags are back
        return loss.detach(), {n: p.grad.clone() for n, p in roles.named_parameters() if p.grad is not None}, len(calls)

    loss, grads, calls = run(True)
    plain_loss, plain_grads, plain_calls = run(False)
    assert (calls, plain_calls) == (4, 2)  # two passes, each re-run in backward
    assert torch.equal(loss, plain_loss) and grads.keys() == plain_grads.keys() and len(grads) > 0
    assert all(torch.equal(grads[name], plain_grads[name]) for name in grads)


def test_score_heads_stay_fp32_under_bf16_autocast():
    from alignbench.models.heads import ScoreHead

    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert ScoreHead(8)(torch.randn(2, 3, 8, dtype=torch.bfloat16)).dtype == torch.float32


@pytest.mark.slow
def test_a_bf16_checkpointed_lora_job_runs_on_the_cpu(tmp_path, stage_cache):
    result = run_cli(["algo=ppo", "experiment=smoke", "logger=none", "model.dtype=bfloat16",
                      "model.gradient_checkpointing=true", "trainer.precision=bf16-mixed", "trainer.num_threads=1",
                      "model.arch.hidden_size=32", "model.arch.intermediate_size=64", "stages.sft.steps=4",
                      "stages.reward_model.steps=2", "data.eval_prompts=8", "export.enabled=false",
                      f"hydra.run.dir={tmp_path}"], timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = read_summary(tmp_path)["metrics"]
    assert metrics["train/nan_skipped"] == 0.0 and "eval/unsafe_rate" in metrics
    assert all(torch.isfinite(torch.tensor(v)) for k, v in metrics.items() if k.startswith("losses/"))
