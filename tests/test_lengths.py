"""Token budgets: prompts are cut inside the user's text only, every cut is counted, scoring sees it all."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from conftest import read_json, run_cli

ALPACA = "BEGINNING OF CONVERSATION: USER: {prompt} ASSISTANT:"
START = "BEGINNING OF CONVERSATION: USER:"


@pytest.fixture(scope="module")
def alpaca_setup():
    from alignbench.models.text import TextLimits
    from alignbench.config import ModelConfig, TinyArchConfig
    from alignbench.models.tiny import build_tiny_llama, build_word_tokenizer

    words = [f"w{i}" for i in range(300)] + [f"r{i}" for i in range(100)]
    tokenizer = build_word_tokenizer(words, ALPACA)
    cfg = ModelConfig(prompt_template=ALPACA, max_prompt_length=192, max_length=256)
    model = build_tiny_llama(tokenizer, TinyArchConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                       num_attention_heads=2, num_key_value_heads=2), seed=0)
    ctx = SimpleNamespace(tokenizer=tokenizer, model_cfg=cfg, limits=TextLimits.for_model(cfg, model),
                          device=torch.device("cpu"))
    return ctx, model


def test_a_300_token_prompt_keeps_the_alpaca_template_and_is_counted(alpaca_setup):
    from alignbench.models.text import encode_prompts

    ctx, _ = alpaca_setup
    prompt = " ".join(f"w{i}" for i in range(300))
    ids, mask = encode_prompts(ctx.tokenizer, ctx.model_cfg, [prompt, "w1 w2"], ctx.limits)
    text = ctx.tokenizer.decode(ids[0][mask[0].bool()].tolist())
    assert int(mask[0].sum()) == 192
    # template start and end survive; the user's text keeps its last 192 - 5 template tokens = 187 words
    assert text == f"{START} " + " ".join(f"w{i}" for i in range(113, 300)) + " ASSISTANT:"
    assert ctx.limits.report() == {"prompts": 1, "responses": 0, "scored_texts": 0, "prompts_cuts": 1,
                                   "responses_cuts": 0, "scored_texts_cuts": 0, "max_prompt_length": 192,
                                   "max_length": 256}
    encode_prompts(ctx.tokenizer, ctx.model_cfg, [prompt], ctx.limits)  # the same prompt again
    assert ctx.limits.report()["prompts"] == 1 and ctx.limits.report()["prompts_cuts"] == 2


def test_reward_scoring_sees_the_fitted_prompt_and_the_whole_response(alpaca_setup, monkeypatch):
    from alignbench.models.text import TextLimits
    from alignbench.models.roles import RoleSet, RoleSpec
    from alignbench.rl.experience import score_texts

    ctx, model = alpaca_setup
    ctx.limits = TextLimits.for_model(ctx.model_cfg, model)
    roles = RoleSet(model, [RoleSpec("reward_model", "score", False)], ctx.model_cfg)
    seen = []
    original = roles.scores
    monkeypatch.setattr(roles, "scores", lambda role, ids, mask: seen.append((ids, mask)) or original(role, ids, mask))
    prompt = " ".join(f"w{i}" for i in range(300))
    short, long = " ".join(f"r{i}" for i in range(40)), " ".join(f"r{i}" for i in range(100))
    scores = score_texts(ctx, roles, "reward_model", [prompt, prompt], [short, long])
    assert scores.shape == (2,) and torch.isfinite(scores).all()
    ids, mask = seen[0]
    texts = [ctx.tokenizer.decode(row[keep.bool()].tolist()) for row, keep in zip(ids, mask)]
    user_tail = " ".join(f"w{i}" for i in range(113, 300))
    # 192 prompt tokens + 40 response tokens + EOS: everything, the reward is read at the EOS
    assert texts[0] == f"{START} {user_tail} ASSISTANT: {short} <eos>"
    # 192 + 101 > 256: the response keeps its first 64 tokens (its end and EOS are cut), the prompt stays whole
    assert texts[1] == f"{START} {user_tail} ASSISTANT: " + " ".join(f"r{i}" for i in range(64))
    assert ctx.limits.report()["responses"] == 1 and ctx.limits.report()["prompts"] == 1


def test_template_longer_than_the_budget_is_a_config_error(alpaca_setup):
    from alignbench.models.text import TextLimits, encode_prompts
    from alignbench.errors import ConfigError

    ctx, _ = alpaca_setup
    with pytest.raises(ConfigError, match="max_prompt_length=4 leaves no room for the user's text: the prompt "
                                          "template alone takes 5 tokens"):
        encode_prompts(ctx.tokenizer, ctx.model_cfg, ["w1 w2 w3"], TextLimits(max_prompt=4, max_length=8))


def test_generation_budget_must_fit_the_model_length(composed):
    from alignbench.config import validate_config
    from alignbench.errors import ConfigError
    from alignbench.registry import ALGORITHMS

    import alignbench.algorithms  # noqa: F401

    cfg = composed(["algo=ppo", "algo.rollout.max_new_tokens=100"])
    with pytest.raises(ConfigError, match=r"'algo.rollout.max_new_tokens' \(100\) \+ model.max_prompt_length "
                                          r"\(192\) must fit model.max_length \(256\)"):
        validate_config(cfg, ALGORITHMS.get("ppo").config_class)


@pytest.mark.slow
def test_summary_counts_truncated_prompts(tmp_path, stage_cache):
    """A run whose prompts exceed model.max_prompt_length warns and counts them in summary.json."""
    result = run_cli(["algo=eval_only", "experiment=smoke", "logger=none", "model.max_prompt_length=8",
                      "data.eval_prompts=6", "eval.samples_per_prompt=1", "eval.generation.max_new_tokens=4",
                      f"hydra.run.dir={tmp_path}"])
    assert result.returncode == 0, result.stderr
    truncations = read_json(tmp_path / "summary.json")["truncations"]
    assert 1 <= truncations["prompts"] <= 6 and truncations["prompts_cuts"] == truncations["prompts"]
    assert truncations["max_prompt_length"] == 8
    log = result.stdout + result.stderr
    assert "prompts lost the start of the user's text, to fit model.max_prompt_length" in log
