"""eval.judge=classifier: a safety classifier model (sequence classification or a guard LM) decides safety.

The classifiers here are tiny models written to disk in the layouts real ones use: a
``LlamaForSequenceClassification`` trained for a few seconds on world responses (so its calls are
learned, not hand-set), and a ``LlamaForCausalLM`` guard whose output bias forces "safe" or "unsafe".
"""

from __future__ import annotations

import random

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

from alignbench.data.world import SafetyWorld
from alignbench.errors import ConfigError
from alignbench.eval.classifier_judge import DEFAULT_GUARD_TEMPLATE, ClassifierJudge, unsafe_label_ids
from alignbench.models.tiny import build_word_tokenizer
from alignbench.summary import read_summary
from conftest import run_cli

WORLD = SafetyWorld()


def _tokenizer():
    extra = DEFAULT_GUARD_TEMPLATE.replace("{prompt}", " ").replace("{response}", " ").split() + ["safe", "unsafe", "yes", "no",
                                                                                          "Behavior:", "Generation:"]
    return build_word_tokenizer(WORLD.vocabulary() + extra)


def _config(tokenizer, **extra) -> LlamaConfig:
    return LlamaConfig(vocab_size=len(tokenizer), hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                       pad_token_id=tokenizer.pad_token_id, **extra)


def _labelled(split: str, count: int, seed: int) -> list[tuple]:
    """(record, response, truly unsafe) over harmful/jailbreak prompts, half unsafe, half refusals/guidance."""
    rng = random.Random(seed)
    records = WORLD.prompts(split, kinds=("harmful", "jailbreak"))
    rows = []
    for _ in range(count):
        record = rng.choice(records)
        kind = rng.choice(["unsafe", "refusal", "guidance"])
        text = WORLD.sample_response(record, kind, rng)
        rows.append((record, text, WORLD.judge(record, text).unsafe))
    return rows


@pytest.fixture(scope="module")
def trained_classifier(tmp_path_factory):
    """A 2-label safe/unsafe classifier trained on world texts (about 10 s on one core)."""
    folder = tmp_path_factory.mktemp("classifier")
    tokenizer = _tokenizer()
    tokenizer.padding_side = "right"
    torch.manual_seed(0)
    model = LlamaForSequenceClassification(_config(tokenizer, num_labels=2, id2label={0: "safe", 1: "unsafe"},
                                                   label2id={"safe": 0, "unsafe": 1}))
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    train = _labelled("train", 480, seed=0)
    for step in range(60):
        batch = train[(step * 32) % len(train):][:32]
        enc = tokenizer([f"{r.prompt}\n{t}" for r, t, _ in batch], return_tensors="pt", padding=True)
        loss = model(**enc, labels=torch.tensor([int(u) for _, _, u in batch])).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def test_sequence_classifier_agrees_with_the_world_on_held_out_texts(trained_classifier):
    judge = ClassifierJudge(path=str(trained_classifier), batch_size=32)
    assert judge.kind == "sequence_classification" and judge.unsafe_ids == [1]
    rows = _labelled("eval", 160, seed=1)
    verdicts = judge.judge_batch([r for r, _, _ in rows], [t for _, t, _ in rows])
    agreement = sum(v.unsafe == truth for v, (_, _, truth) in zip(verdicts, rows)) / len(rows)
    assert agreement >= 0.9, agreement
    assert all((v.cost > 0) == v.unsafe and -0.5 <= v.cost <= 0.5 for v in verdicts)  # P - 0.5
    # the keyword judge still reads refusals: an unsafe call never counts as a refusal
    assert any(v.refusal for v in verdicts) and not any(v.refusal and v.unsafe for v in verdicts)


def test_label_selection_by_name_by_config_and_for_generic_labels():
    assert unsafe_label_ids({0: "SAFE", 1: "UNSAFE"}, []) == [1]
    assert unsafe_label_ids({0: "LABEL_0", 1: "LABEL_1"}, []) == [1]
    assert unsafe_label_ids({0: "benign", 1: "toxic", 2: "harmful"}, []) == [1, 2]
    assert unsafe_label_ids({0: "ok", 1: "bad"}, ["bad"]) == [1]
    with pytest.raises(ConfigError, match="eval.classifier.unsafe_labels"):
        unsafe_label_ids({0: "ok", 1: "bad"}, ["worse"])
    with pytest.raises(ConfigError, match="looks unsafe"):
        unsafe_label_ids({0: "ok", 1: "bad", 2: "meh"}, [])


@pytest.mark.parametrize("forced, settings, expected_unsafe", [
    ("unsafe", {}, True), ("safe", {}, False),  # Llama Guard's answers
    # HarmBench's classifier: its own prompt, "yes" = the behaviour occurred
    ("yes", {"unsafe_answer": "yes", "template": "Behavior: {prompt} Generation: {response}"}, True),
    ("no", {"unsafe_answer": "yes", "template": "Behavior: {prompt} Generation: {response}"}, False),
])
def test_guard_lm_reads_the_first_word_it_generates(tmp_path, forced, settings, expected_unsafe):
    tokenizer = _tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(_config(tokenizer, tie_word_embeddings=False))
    with torch.no_grad():  # the guard always answers `forced`, whatever the conversation:
        model.model.embed_tokens.weight[:, 0] = 100.0  # hidden dim 0 stays large and positive to the end
        model.lm_head.weight.zero_()
        model.model.norm.weight.fill_(1.0)
        model.lm_head.weight[tokenizer.convert_tokens_to_ids(forced), 0] = 50.0
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    judge = ClassifierJudge(path=str(tmp_path), **settings)
    assert judge.kind == "guard_lm"
    rows = _labelled("eval", 6, seed=2)
    if "template" in settings:
        record, response = rows[0][0], rows[0][1]
        assert judge._guard_prompt(record, response) == f"Behavior: {record.prompt} Generation: {response}"
    verdicts = judge.judge_batch([r for r, _, _ in rows], [t for _, t, _ in rows])
    assert [v.unsafe for v in verdicts] == [expected_unsafe] * len(rows)
    assert {v.cost for v in verdicts} == {1.0 if expected_unsafe else -1.0}


def test_eval_only_with_the_classifier_judge_end_to_end(tmp_path, trained_classifier, stage_cache):
    result = run_cli(["algo=eval_only", "eval.judge=classifier", f"eval.classifier.path={trained_classifier}",
                      "experiment=smoke", "logger=none", f"hydra.run.dir={tmp_path}"])
    assert result.returncode == 0, result.stderr[-3000:]
    summary = read_summary(tmp_path)
    assert summary["status"] == "ok"
    assert 0.0 <= summary["metrics"]["eval/unsafe_rate"] <= 1.0
    assert summary["metrics"]["eval/cost_mean"] not in (-1.0, 1.0)  # continuous P - threshold, not +-1
    assert set(summary["per_kind"]) == {"benign", "borderline", "harmful", "jailbreak"}


@pytest.mark.parametrize("overrides,needle", [
    ([], "eval.judge=classifier needs eval.classifier.path=<model id or folder>"),
    (["eval.classifier.path=acme/guard-xl"], "model 'acme/guard-xl' (eval.classifier.path) is not on this machine"),
    (["eval.classifier.path=/no/such/folder"], "eval.classifier.path=/no/such/folder does not exist"),
    (["eval.classifier.path=x", "eval.classifier.kind=oracle"], "eval.classifier.kind"),
])
def test_bad_classifier_settings_fail_in_one_line(tmp_path, overrides, needle):
    result = run_cli(["algo=eval_only", "eval.judge=classifier", "experiment=smoke", "logger=none",
                      f"hydra.run.dir={tmp_path}", *overrides])
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("alignbench: error:")]
    assert len(errors) == 1 and needle in errors[0] and "Traceback" not in result.stderr
