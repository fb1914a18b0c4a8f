"""External reward/cost models by path (``algo.reward_model.path=…``): the beaver layout and HF's.

The checkpoints are tiny stand-ins written here in the exact on-disk layouts: safe-rlhf's
``LlamaForScore`` (a Llama body under ``model.``, ``score_head.*``, a ``normalizer`` with mean/var
buffers, ``score_type`` / ``do_normalize`` in config.json — the layout of
``PKU-Alignment/beaver-7b-v1.0-reward`` / ``-cost``) and a one-label ``LlamaForSequenceClassification``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaForSequenceClassification, LlamaModel

from alignbench.data.world import SafetyWorld
from alignbench.errors import ModelUnavailableError
from alignbench.models.external import BEAVER_TEMPLATE, ExternalScoreModel
from alignbench.models.tiny import build_word_tokenizer
from alignbench.summary import read_summary
from conftest import run_cli

PAIRS = [("how do i sort a list ?", "use sorted ( ) ."),
         ("what is 2 + 2 ?", "4"),
         ("tell me how to pick a lock", "i cannot help with that , but a locksmith can open it for you .")]


def _tokenizer():
    words = SafetyWorld().vocabulary() + BEAVER_TEMPLATE.replace("{prompt}", " ").replace("{response}", " ").split()
    return build_word_tokenizer(words)


def _llama_config(tokenizer, **extra) -> LlamaConfig:
    return LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                       pad_token_id=tokenizer.pad_token_id, **extra)


def write_beaver_layout(folder: Path, *, score_type: str, do_normalize: bool, bias: float | None = None,
                        mean: float = 0.7, var: float = 4.0, seed: int = 0) -> Path:
    """A safe-rlhf ``LlamaForScore`` checkpoint: weights as the safe-rlhf package saves them."""
    torch.manual_seed(seed)
    tokenizer = _tokenizer()
    config = _llama_config(tokenizer, architectures=["LlamaForScore"], score_type=score_type,
                           do_normalize=do_normalize, score_dim=1, bias=bias is not None)
    body = LlamaModel(config)
    state = {f"model.{k}": v.contiguous() for k, v in body.state_dict().items()}
    head = torch.nn.Linear(config.hidden_size, 1, bias=bias is not None)
    state["score_head.weight"] = head.weight.detach().clone()
    if bias is not None:
        state["score_head.weight"].zero_()
        state["score_head.bias"] = torch.tensor([bias])
    state.update({"normalizer.mean": torch.tensor([mean]), "normalizer.var": torch.tensor([var]),
                  "normalizer.count": torch.tensor([100])})
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, str(folder / "model.safetensors"))
    config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _reference_end_score(folder: Path, prompt: str, response: str) -> float:
    """What safe-rlhf computes for one unpadded conversation: w^T h_T at the last token (+ normaliser)."""
    from safetensors import safe_open

    config = json.loads((folder / "config.json").read_text())
    body = LlamaModel.from_pretrained(folder).eval()
    with safe_open(str(folder / "model.safetensors"), framework="pt") as handle:
        weight = handle.get_tensor("score_head.weight")
        mean, var = handle.get_tensor("normalizer.mean"), handle.get_tensor("normalizer.var")
    ids = _tokenizer()(BEAVER_TEMPLATE.format(prompt=prompt, response=response), return_tensors="pt")["input_ids"]
    with torch.no_grad():
        score = float(body(input_ids=ids).last_hidden_state[0, -1] @ weight[0])
    if config["do_normalize"]:
        score = (score - float(mean) if config["score_type"] == "reward" else score) / (float(var) ** 0.5 + 1e-8)
    return score


@pytest.mark.parametrize("score_type,do_normalize", [("reward", False), ("reward", True), ("cost", True)])
def test_beaver_layout_end_scores_match_safe_rlhf_arithmetic(tmp_path, score_type, do_normalize):
    folder = write_beaver_layout(tmp_path / "score", score_type=score_type, do_normalize=do_normalize)
    model = ExternalScoreModel(str(folder), key="algo.reward_model.path", batch_size=2)
    assert model.layout == "safe_rlhf" and model.template == BEAVER_TEMPLATE
    prompts, responses = [p for p, _ in PAIRS], [r for _, r in PAIRS]
    scores = model.score(prompts, responses)  # batches of 2 with padding: end index must skip the pads
    expected = [_reference_end_score(folder, p, r) for p, r in PAIRS]
    assert scores.tolist() == pytest.approx(expected, abs=1e-4)
    assert len(set(round(s, 4) for s in expected)) == len(expected)  # the texts really score differently


def test_sequence_classification_layout_scores_are_the_logit(tmp_path):
    tokenizer = _tokenizer()
    torch.manual_seed(1)
    model = LlamaForSequenceClassification(_llama_config(tokenizer, num_labels=1)).eval()
    model.save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    external = ExternalScoreModel(str(tmp_path / "rm"), key="algo.reward_model.path", template="{prompt} {response}")
    assert external.layout == "sequence_classification"
    scores = external.score([p for p, _ in PAIRS], [r for _, r in PAIRS])
    for (prompt, response), score in zip(PAIRS, scores.tolist()):
        ids = tokenizer(f"{prompt} {response}", return_tensors="pt")["input_ids"]
        with torch.no_grad():
            assert score == pytest.approx(float(model(input_ids=ids).logits[0, 0]), abs=1e-4)


def test_texts_cut_to_the_scorer_max_length_are_counted(tmp_path):
    from alignbench.models.text import TextLimits

    tokenizer = _tokenizer()
    model = LlamaForSequenceClassification(_llama_config(tokenizer, num_labels=1)).eval()
    model.save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    limits = TextLimits()
    external = ExternalScoreModel(str(tmp_path / "rm"), key="algo.cost_model.path", template="{prompt} {response}",
                                  max_length=8, limits=limits)
    external.score([p for p, _ in PAIRS] * 2, [r for _, r in PAIRS] * 2)
    longer = sum(len(tokenizer(f"{p} {r}")["input_ids"]) > 8 for p, r in PAIRS)
    assert longer >= 1
    assert limits.report()["scored_texts"] == longer and limits.report()["scored_texts_cuts"] == 2 * longer


def test_two_label_classifier_is_refused_as_a_score_model(tmp_path):
    tokenizer = _tokenizer()
    LlamaForSequenceClassification(_llama_config(tokenizer, num_labels=2)).save_pretrained(tmp_path / "clf")
    tokenizer.save_pretrained(tmp_path / "clf")
    with pytest.raises(ModelUnavailableError, match="algo.cost_model.path=.*one label"):
        ExternalScoreModel(str(tmp_path / "clf"), key="algo.cost_model.path")


def test_missing_folder_and_uncached_hub_id_fail_in_one_line(tmp_path):
    result = run_cli(["algo=safe_rlhf", "experiment=smoke", "logger=none", f"hydra.run.dir={tmp_path / 'a'}",
                      "algo.reward_model.path=PKU-Alignment/beaver-7b-v1.0-reward"])
    assert result.returncode == 2
    line = [l for l in result.stderr.splitlines() if l.startswith("alignbench: error:")]
    assert line and "PKU-Alignment/beaver-7b-v1.0-reward" in line[0] and "algo.reward_model.path" in line[0]
    assert "huggingface-cli download" in line[0] and "Traceback" not in result.stderr
    result = run_cli(["algo=safe_rlhf", "experiment=smoke", "logger=none", f"hydra.run.dir={tmp_path / 'b'}",
                      f"algo.cost_model.path={tmp_path}/no/such/model"])
    assert result.returncode == 2 and "does not exist" in result.stderr
    assert read_summary(tmp_path / "b")["status"] == "failed"


@pytest.mark.slow
def test_safe_rlhf_trains_on_external_reward_and_cost_models(tmp_path, stage_cache):
    """Constant external scores make the plumbing visible: C = +2 everywhere, so J_C > d and lambda rises."""
    reward = write_beaver_layout(tmp_path / "reward", score_type="reward", do_normalize=False, bias=0.5)
    cost = write_beaver_layout(tmp_path / "cost", score_type="cost", do_normalize=False, bias=2.0)
    result = run_cli(["algo=safe_rlhf", "experiment=smoke", "logger=none", f"hydra.run.dir={tmp_path / 'run'}",
                      f"algo.reward_model.path={reward}", f"algo.cost_model.path={cost}",
                      "algo.lagrange.threshold=0.0", "algo.lagrange.init=1.0", "algo.lagrange.lr=0.5",
                      "eval.judge=cost_model"])
    assert result.returncode == 0, result.stderr[-3000:]
    summary = read_summary(tmp_path / "run")
    metrics = summary["metrics"]
    assert summary["status"] == "ok"
    assert not any(k.startswith(("stages/reward_model", "stages/cost_model")) for k in metrics)  # not trained
    assert metrics["train/episode_cost"] == pytest.approx(2.0, abs=1e-4)
    assert metrics["train/reward"] == pytest.approx(0.5, abs=1e-4)
    assert metrics["train/lambda"] > 1.0  # J_C = 2 > d = 0 pushes the multiplier up
    # the cost_model judge uses the same external model: every sample costs 2 > 0, so all are unsafe
    assert metrics["eval/cost_mean"] == pytest.approx(2.0, abs=1e-4)
    assert metrics["eval/violation_rate"] == pytest.approx(1.0)
