"""Foundation: config composition and validation, clear errors, the CLI contract, model roles."""

from __future__ import annotations

import json

import pytest
import torch

from alignbench.config import validate_config
from alignbench.errors import ConfigError
from alignbench.registry import ALGORITHMS
from alignbench.summary import read_history, read_summary
from conftest import run_cli

import alignbench.algorithms  # noqa: F401  (registers algorithms)

# every algo x model pair, experiment and launcher composes: tests/test_configs.py


def test_alpaca7b_picks_up_published_safe_rlhf_defaults(composed):
    cfg = composed(["algo=safe_rlhf", "model=alpaca7b"])
    assert cfg.algo.actor_optim.lr == 1e-5 and cfg.algo.critic_optim.lr == 5e-6
    assert cfg.algo.kl_coef == 0.01 and cfg.algo.lagrange.lambda_max == 5.0 and cfg.algo.lagrange.threshold == 0.0
    # safe-rlhf's scripts: PTX with its own step and coefficient 16; plain PPO and reward shaping use KL 0.02
    assert cfg.algo.ptx_coef == 16.0 and cfg.algo.ptx_separate_step and cfg.algo.batch_size == 16
    for algo in ("ppo", "reward_shaping"):
        assert composed([f"algo={algo}", "model=alpaca7b"]).algo.kl_coef == 0.02
    assert cfg.model.dtype == "bfloat16" and cfg.model.adapters and cfg.model.gradient_checkpointing
    tiny = composed(["algo=safe_rlhf"])
    assert tiny.algo.actor_optim.lr != 1e-5  # the tiny world keeps its own tuned values


@pytest.mark.parametrize("override, needle", [
    ("algo.actor_optim.lr=-1", "'algo.actor_optim.lr' must be > 0"),
    ("trainer.devices=0", "'trainer.devices' must be >= 1"),
    ("algo.lagrange.threshold=abc", "algo.lagrange.threshold"),
    ("algo.kl_estimator=k9", "'algo.kl_estimator'"),
    ("eval.samples_per_prompt=0", "'eval.samples_per_prompt' must be >= 1"),
])
def test_bad_values_fail_validation_naming_the_key(composed, override, needle):
    cfg = composed(["algo=safe_rlhf", override])
    with pytest.raises(ConfigError) as info:
        validate_config(cfg, ALGORITHMS.get("safe_rlhf").config_class)
    assert needle in str(info.value) and "\n" not in str(info.value)


def test_missing_required_value_is_named(composed):
    cfg = composed(["algo=eval_only", "data=prompts_jsonl"])
    with pytest.raises(ConfigError, match="'data.path' is required"):
        validate_config(cfg, ALGORITHMS.get("eval_only").config_class)


def test_unknown_algo_lists_options_without_traceback(tmp_path):
    result = run_cli(["algo=nope", f"hydra.run.dir={tmp_path}"])
    assert result.returncode != 0
    assert "Available options in 'algo'" in result.stderr
    for name in ("safe_rlhf", "repo", "sft"):
        assert name in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_misspelt_key_fails_without_traceback(tmp_path):
    result = run_cli(["algo=ppo", "algo.lrr=1", f"hydra.run.dir={tmp_path}"])
    assert result.returncode != 0
    assert "lrr" in result.stderr and "Traceback" not in result.stderr


def test_missing_model_fails_fast_with_the_download_hint(tmp_path, stage_cache):
    # the command users will type: the full real-scale config composes, then stops at the model
    result = run_cli(["algo=repo", "model=alpaca7b", f"hydra.run.dir={tmp_path}", "logger=none"])
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("alignbench: error:")]
    assert len(lines) == 1
    assert "PKU-Alignment/alpaca-7b-reproduced" in lines[0] and "download" in lines[0]
    assert "Traceback" not in result.stderr
    summary = read_summary(tmp_path)
    assert summary["status"] == "failed" and "alpaca-7b-reproduced" in summary["error"]
    assert summary["algo"] == "repo" and summary["model"] == "alpaca7b"


def test_smoke_run_writes_summary_history_and_offline_wandb(tmp_path, stage_cache):
    result = run_cli(["algo=sft", "experiment=smoke", f"hydra.run.dir={tmp_path}"])
    assert result.returncode == 0, result.stderr[-3000:]
    summary = read_summary(tmp_path)
    assert summary["status"] == "ok" and summary["error"] is None
    assert (summary["algo"], summary["model"], summary["data"], summary["seed"]) == ("sft", "tiny", "world", 0)
    metrics = summary["metrics"]
    for key in ("eval/unsafe_rate", "eval/over_refusal_rate", "eval/helpfulness", "eval/violation_rate",
                "eval/cost_p95"):
        assert 0.0 <= metrics[key] <= 1.0 or key == "eval/cost_p95"
    assert set(summary["per_kind"]) == {"benign", "borderline", "harmful", "jailbreak"}
    perf = summary["perf"]
    # algo=sft trains nothing itself: its training compute is the SFT stage's; the evaluation samples answers
    assert perf["wall_s"] > 0 and perf["gen_tokens"] == 0 and perf["eval_gen_tokens"] > 0
    assert perf["flops"] == summary["compute"]["sft"]["flops"] > 0 and perf["train_tokens"] > 0
    assert "experiment=smoke" in summary["overrides"]
    assert read_history(tmp_path), "history.jsonl should hold the logged rows"
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    assert "eval/unsafe_rate" in result.stdout  # the evaluation table is printed


def test_multirun_gives_one_job_summary_and_wandb_run_per_seed(tmp_path, stage_cache):
    result = run_cli(["-m", "seed=1,2", "experiment=smoke", f"hydra.sweep.dir={tmp_path}"])
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = sorted(tmp_path.glob("*/summary.json"))
    assert len(summaries) == 2
    assert sorted(json.loads(p.read_text())["seed"] for p in summaries) == [1, 2]
    run_ids = {run.name for job in summaries for run in (job.parent / "wandb").glob("offline-run-*")}
    assert len(run_ids) == 2


def test_failed_job_in_a_sweep_writes_failed_summary_and_the_sweep_goes_on(tmp_path, stage_cache):
    result = run_cli(["-m", "algo=eval_only", "data=prompts_jsonl", "eval.judge=keyword", "logger=none",
                      "data.path=/nonexistent.jsonl,tests/fixtures/prompts_unseen_categories.jsonl",
                      "experiment=smoke", f"hydra.sweep.dir={tmp_path}"])
    assert result.returncode == 0, result.stderr[-3000:]
    summaries = [read_summary(p.parent) for p in sorted(tmp_path.glob("*/summary.json"))]
    assert [s["status"] for s in summaries] == ["failed", "ok"]
    assert "/nonexistent.jsonl" in summaries[0]["error"]
    assert set(summaries[1]["per_category"]) == {"burglary", "geography", "sysadmin", "forgery", "creative"}


# ---------------------------------------------------------------- roles and the Lightning host
def _tiny_base():
    from alignbench.config import ModelConfig
    from alignbench.data.world import SafetyWorld
    from alignbench.models.loading import load_base

    cfg = ModelConfig(adapters=True)
    model, tokenizer = load_base(cfg, vocabulary=SafetyWorld().vocabulary(), seed=0)
    return cfg, model, tokenizer


def test_checkpoint_holds_trainable_roles_only_and_restores_them():
    from alignbench.algorithms.ppo import PPO
    from alignbench.models.roles import RoleSet
    from alignbench.training.module import AlignmentModule

    cfg, base, _ = _tiny_base()

    class Component:
        ctx = None

        def state_dict(self):
            return {"counter": 7}

        def load_state_dict(self, state):
            self.loaded = state

    specs = PPO.role_specs(type("P", (), {"critics": ("reward_critic", "cost_critic")})())
    roles = RoleSet(base, specs, cfg)
    module = AlignmentModule(Component(), roles, None, "rl")
    checkpoint: dict = {"state_dict": module.state_dict()}
    module.on_save_checkpoint(checkpoint)
    saved = checkpoint["alignbench"]["roles"]
    assert checkpoint["state_dict"] == {}
    assert {key.split("/")[0] for key in saved} == {"policy", "reward_critic", "cost_critic"}
    assert not any("base_layer" in key or "embed_tokens" in key for key in saved)  # no frozen base
    assert all(("lora_" in key) or key.split("/")[1].startswith("head.") for key in saved)
    base_params = sum(p.numel() for n, p in roles.peft.named_parameters() if "lora_" not in n)
    assert sum(t.numel() for t in saved.values()) < 0.5 * base_params

    original = {k: v.clone() for k, v in saved.items()}
    with torch.no_grad():
        for p in roles.parameters_of("policy"):
            p.add_(1.0)
    module.on_load_checkpoint(checkpoint)
    restored = roles.trainable_state_dict()
    assert all(torch.equal(restored[k], original[k]) for k in original)
    assert module.component.loaded == {"counter": 7}


def test_adapters_switch_roles_and_reference_is_the_base():
    from alignbench.models.roles import RoleSet, RoleSpec

    cfg, base, tokenizer = _tiny_base()
    ids = torch.tensor([tokenizer("what is 7 plus 5 ?")["input_ids"]])
    mask = torch.ones_like(ids)
    with torch.no_grad():
        expected = base(input_ids=ids, attention_mask=mask).logits
    roles = RoleSet(base, [RoleSpec("policy"), RoleSpec("other")], cfg)
    with torch.no_grad():
        for p in roles.parameters_of("policy"):
            p.normal_(0, 0.5)  # make the policy adapter non-trivial (LoRA B starts at 0)
        reference = roles.lm_logits("reference", ids, mask)
        policy = roles.lm_logits("policy", ids, mask)
        other = roles.lm_logits("other", ids, mask)
    assert torch.allclose(reference, expected, atol=1e-5)
    assert torch.allclose(other, expected, atol=1e-5)  # untouched adapter == base
    assert not torch.allclose(policy, expected, atol=1e-3)


def test_sft_loss_decreases_on_a_fixed_batch():
    from types import SimpleNamespace

    from alignbench.algorithms.sft import SFTStage
    from alignbench.models.text import TextLimits
    from alignbench.config import OptimConfig, StageConfig
    from alignbench.data.world import SafetyWorld
    from alignbench.models.roles import RoleSet

    cfg, base, tokenizer = _tiny_base()
    world = SafetyWorld()
    ctx = SimpleNamespace(tokenizer=tokenizer, model_cfg=cfg, limits=TextLimits(max_prompt=96, max_length=128),
                          data=SimpleNamespace(sft_examples=world.sft_examples("train")))
    stage = SFTStage(StageConfig(steps=40, batch_size=16, optim=OptimConfig(lr=3e-3), full_finetune=True), ctx)
    roles = RoleSet(base, stage.role_specs(), cfg, full_finetune=True)
    stage.attach(roles)
    batch = stage.collate(ctx.data.sft_examples[:16])
    optimizer = torch.optim.AdamW(roles.parameters_of("policy"), lr=3e-3)
    torch.manual_seed(0)
    first = float(stage.loss(batch))
    for _ in range(40):
        optimizer.zero_grad()
        loss = stage.loss(batch)
        loss.backward()
        optimizer.step()
    assert float(loss) < 0.3 * first, (first, float(loss))


def test_sft_loss_on_response_rows_equals_the_full_logits_loss_bit_for_bit():
    # the response-only LM head (RoleSet.lm_logits rows=) gives the same loss and LoRA gradients as
    # cross-entropy over the whole [B, L, V] logits, to the last bit
    import torch.nn.functional as F

    from alignbench.algorithms.sft import response_cross_entropy
    from alignbench.data.world import SafetyWorld
    from alignbench.models.roles import RoleSet, RoleSpec
    from alignbench.models.text import TextLimits, encode_prompt_response

    cfg, base, tokenizer = _tiny_base()
    roles = RoleSet(base, [RoleSpec("policy")], cfg)
    with torch.no_grad():
        for p in roles.parameters_of("policy"):
            p.normal_(0, 0.1, generator=torch.Generator().manual_seed(p.numel()))
    examples = SafetyWorld().sft_examples("train")[:8]
    batch = encode_prompt_response(tokenizer, cfg, [e["prompt"] for e in examples], [e["response"] for e in examples],
                                   limits=TextLimits(max_prompt=96, max_length=128))
    ids, response = batch["input_ids"], batch["response_mask"]
    assert 0 < response.sum() < response.numel() / 2  # most positions are prompt or padding: rows are skipped

    def gradients(loss):
        params = roles.parameters_of("policy")
        return loss.detach(), torch.autograd.grad(loss, params)

    mask = response[:, 1:].float()
    full = roles.lm_logits("policy", ids, batch["attention_mask"])[:, :-1].float()
    token_loss = F.cross_entropy(full.reshape(-1, full.shape[-1]), ids[:, 1:].reshape(-1), reduction="none")
    expected, expected_grads = gradients((token_loss.view_as(mask) * mask).sum() / mask.sum())
    loss, grads = gradients(response_cross_entropy(roles, "policy", batch))
    assert torch.equal(loss, expected)
    assert len(grads) == len(expected_grads) > 0
    assert all(torch.equal(g, e) for g, e in zip(grads, expected_grads))
    assert any(g.abs().sum() > 0 for g in grads)
