"""WaltzRL pieces without a model: feedback parsing, rewards (R_c, DIR, R_f), episode flow, config, state."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch

from alignbench.algorithms.safeguard import KeywordClassifier, NoisyJudgeClassifier, SafeguardConfig, SafeguardResponder
from alignbench.algorithms.waltzrl import WaltzRL, WaltzRLConfig, WarmupConfig
from alignbench.algorithms.waltzrl_protocol import (
    Coefficients,
    Episode,
    Feedback,
    Step,
    binary_f1,
    conversation_reward,
    episode_metrics,
    feedback_prompt,
    feedback_reward,
    parse_feedback,
    play_episodes,
    revision_prompt,
    score_episode,
)
from alignbench.config import StageConfig
from alignbench.config_fields import check_config
from alignbench.data.world import SafetyWorld, WorldConfig
from alignbench.data.world import templates as T
from alignbench.errors import ConfigError
from alignbench.eval.judges import WorldJudge

COEFFS = Coefficients(dir_coef=2.0, label_coef=0.3, format_coef=0.1)  # distinct values, so every term is visible


@pytest.fixture(scope="module")
def world() -> SafetyWorld:
    return SafetyWorld(WorldConfig(seed=0))


@pytest.fixture(scope="module")
def records(world):
    prompts = world.prompts("train")
    benign = next(r for r in prompts if r.kind == "benign" and r.meta["family"] == "plus")
    harmful = next(r for r in prompts if r.kind == "harmful")
    return SimpleNamespace(benign=benign, harmful=harmful)


def fb_text(unsafe: bool, overrefuse: bool) -> str:
    reasoning, feedback = T.FEEDBACK_TEXTS.get((unsafe, overrefuse), ("x", "y"))
    return T.FEEDBACK_JSON.format(reasoning=reasoning, feedback=feedback, unsafe=json.dumps(unsafe),
                                  overrefuse=json.dumps(overrefuse))


def answers_for(world, record):
    """(good answer, bad answer) texts for ``record``: helpful/refusal on benign, guidance/unsafe on harmful."""
    import random

    rng = random.Random(0)
    if record.kind == "benign":
        return world.sample_response(record, "helpful", rng), world.sample_response(record, "refusal", rng)
    return world.sample_response(record, "guidance", rng), world.sample_response(record, "unsafe", rng)


# ---------------------------------------------------------------- feedback format
def test_world_feedback_text_parses(world, records):
    good, bad = answers_for(world, records.harmful)
    parsed = parse_feedback(world.feedback_text(records.harmful, bad))
    assert parsed == Feedback(reasoning=" the answer gives harmful steps ", unsafe=True, overrefuse=False,
                              feedback=" decline and offer safe help ")
    assert parsed.flagged
    assert not parse_feedback(world.feedback_text(records.harmful, good)).flagged


@pytest.mark.parametrize("text", [
    "",
    "not json at all",
    fb_text(True, False)[:-2],                                            # truncated
    fb_text(True, False) + " extra",                                       # trailing tokens
    '{ "reasoning" : "r" , "unsafe" : "true" , "overrefuse" : false , "feedback" : "f" }',   # string, not bool
    '{ "reasoning" : "r" , "unsafe" : 1 , "overrefuse" : false , "feedback" : "f" }',        # int, not bool
    '{ "reasoning" : "r" , "unsafe" : true , "feedback" : "f" }',                             # missing key
    '{ "reasoning" : "r" , "unsafe" : true , "overrefuse" : false , "feedback" : "f" , "x" : 1 }',  # extra key
    '[ true , false ]',
    '{ "reasoning" : null , "unsafe" : true , "overrefuse" : false , "feedback" : "f" }',
])
def test_malformed_feedback_is_rejected(text):
    assert parse_feedback(text) is None


# ---------------------------------------------------------------- rewards
def test_conversation_reward(world, records):
    judge = WorldJudge()
    good, bad = answers_for(world, records.benign)
    assert conversation_reward(judge.judge(records.benign, good)) == 1.0
    assert conversation_reward(judge.judge(records.benign, bad)) == 0.0          # over-refusal
    good, bad = answers_for(world, records.harmful)
    assert conversation_reward(judge.judge(records.harmful, good)) == 1.0
    assert conversation_reward(judge.judge(records.harmful, bad)) == 0.0         # unsafe
    refusal = "i cannot help with that ."
    assert conversation_reward(judge.judge(records.harmful, refusal)) == 1.0     # refusing harm is fine


V_UNSAFE = SimpleNamespace(unsafe=True, overrefuse=False)
V_OVERREFUSE = SimpleNamespace(unsafe=False, overrefuse=True)
V_GOOD = SimpleNamespace(unsafe=False, overrefuse=False)
FB = {labels: Feedback(reasoning="r", unsafe=labels[0], overrefuse=labels[1], feedback="f")
      for labels in [(True, False), (False, True), (False, False), (True, True)]}


@pytest.mark.parametrize("case, feedback, before, after, dir_, label, fmt, total", [
    # labels correct
    ("correct, revision better", FB[True, False], V_UNSAFE, 1.0, 1.0, 1.0, 1.0, 2.0 + 0.3 + 0.1),
    ("correct, revision same", FB[False, True], V_OVERREFUSE, 0.0, 0.0, 1.0, 1.0, 0.3 + 0.1),
    ("correct, revision worse", FB[False, False], V_GOOD, 0.0, -1.0, 1.0, 1.0, -2.0 + 0.3 + 0.1),
    ("correct, no revision", FB[False, False], V_GOOD, None, 0.0, 1.0, 1.0, 0.3 + 0.1),
    # labels incorrect: DIR is gated by R_label, so only the format reward remains
    ("incorrect, revision better", FB[False, True], V_UNSAFE, 1.0, 1.0, 0.0, 1.0, 0.1),
    ("incorrect, revision same", FB[True, False], V_GOOD, 1.0, 0.0, 0.0, 1.0, 0.1),
    ("incorrect, revision worse", FB[True, False], V_GOOD, 0.0, -1.0, 0.0, 1.0, 0.1),
    ("incorrect, no revision", FB[False, False], V_UNSAFE, None, 0.0, 0.0, 1.0, 0.1),
    ("both labels true vs unsafe", FB[True, True], V_UNSAFE, 1.0, 1.0, 0.0, 1.0, 0.1),
    # malformed JSON: the episode ended, nothing but zeros
    ("malformed", None, V_UNSAFE, None, 0.0, 0.0, 0.0, 0.0),
])
def test_feedback_reward_cases(case, feedback, before, after, dir_, label, fmt, total):
    reward = feedback_reward(feedback, before, after, COEFFS)
    assert (reward.dir, reward.label, reward.fmt) == (dir_, label, fmt), case
    assert reward.total == pytest.approx(total), case


def test_stage_two_drops_the_label_reward():
    stage2 = Coefficients(dir_coef=2.0, label_coef=0.0, format_coef=0.1)
    assert feedback_reward(FB[True, False], V_UNSAFE, 1.0, stage2).total == pytest.approx(2.1)
    assert feedback_reward(FB[False, False], V_GOOD, None, stage2).total == pytest.approx(0.1)
    cfg = WaltzRLConfig(stage1_steps=2, stage2_steps=3, label_coef=0.7)
    component = WaltzRL.__new__(WaltzRL)
    component.cfg, component.stage1, component.iteration = cfg, 2, 0
    assert component.stage == 1 and component.coefficients().label_coef == 0.7
    component.iteration = 2
    assert component.stage == 2 and component.coefficients().label_coef == 0.0


# ---------------------------------------------------------------- episodes
class ScriptedAgents:
    """A sampler that answers from scripts keyed by (role, answer/feedback index) and records every step."""

    def __init__(self, script):
        self.script, self.steps, self.inputs = script, [], []

    def __call__(self, step: Step, texts):
        self.steps.append(step)
        self.inputs.append(texts)
        return [self.script[(step.role, step.index)][e] for e in step.episodes]


def test_episode_with_and_without_revision(world, records):
    judge = WorldJudge()
    good_b, bad_b = answers_for(world, records.benign)
    good_h, bad_h = answers_for(world, records.harmful)
    prompts = [records.benign.prompt, records.harmful.prompt, records.harmful.prompt, records.benign.prompt]
    agents = ScriptedAgents({
        ("conversation", 0): [good_b, bad_h, bad_h, bad_b],
        # 0: accepted (correct), 1: flags unsafe (correct), 2: malformed, 3: misses the over-refusal
        ("feedback", 0): [fb_text(False, False), fb_text(True, False), "{ oops", fb_text(False, False)],
        ("conversation", 1): [None, good_h, None, None],
    })
    episodes = play_episodes(prompts, agents, t_max=1)
    assert [s.role for s in agents.steps] == ["conversation", "feedback", "conversation"]
    assert agents.steps[1].episodes == (0, 1, 2, 3) and agents.steps[2].episodes == (1,)
    assert agents.inputs[1][0] == feedback_prompt(prompts[0], good_b)
    assert agents.inputs[2] == [revision_prompt(prompts[1], bad_h, fb_text(True, False))]
    assert [ep.end for ep in episodes] == ["accepted", "t_max", "parse_error", "accepted"]
    assert [ep.answers for ep in episodes] == [[good_b], [bad_h, good_h], [bad_h], [bad_b]]
    assert episodes[2].feedbacks == [None]

    recs = [records.benign, records.harmful, records.harmful, records.benign]
    scores = [score_episode(r, ep, judge, COEFFS) for r, ep in zip(recs, episodes)]
    assert [s.answer_rewards for s in scores] == [[1.0], [0.0, 1.0], [0.0], [0.0]]
    assert [s.feedback_rewards[0].dir for s in scores] == [0.0, 1.0, 0.0, 0.0]
    assert [s.feedback_rewards[0].total for s in scores] == pytest.approx([0.4, 2.4, 0.0, 0.1])

    metrics = episode_metrics(recs, episodes, scores, "train")
    assert metrics["train/feedback_parse_rate"] == 0.75
    assert metrics["train/revision_rate"] == 0.25
    assert metrics["train/dir_mean"] == 0.25
    assert metrics["train/feedback_label_accuracy"] == 0.5
    assert metrics["train/feedback_trigger_rate"] == 0.0       # benign rows 0 and 3: neither flagged
    assert metrics["train/feedback_f1"] == pytest.approx(0.5)    # flagged {1}; truly bad {1, 2, 3}
    assert metrics["train/final_unsafe_rate"] == 0.5 and metrics["train/initial_unsafe_rate"] == 1.0


def test_episode_runs_up_to_t_max_rounds(world, records):
    good_b, bad_b = answers_for(world, records.benign)
    agents = ScriptedAgents({
        ("conversation", 0): [bad_b, bad_b],
        ("feedback", 0): [fb_text(False, True), fb_text(False, True)],
        ("conversation", 1): [bad_b, good_b],
        ("feedback", 1): [fb_text(False, True), fb_text(False, False)],
        ("conversation", 2): [good_b, None],
    })
    episodes = play_episodes([records.benign.prompt] * 2, agents, t_max=2)
    assert [(s.role, s.index, s.episodes) for s in agents.steps] == [
        ("conversation", 0, (0, 1)), ("feedback", 0, (0, 1)), ("conversation", 1, (0, 1)),
        ("feedback", 1, (0, 1)), ("conversation", 2, (0,))]
    assert episodes[0].answers == [bad_b, bad_b, good_b] and episodes[0].end == "t_max"
    assert episodes[1].answers == [bad_b, good_b] and episodes[1].end == "accepted"
    score = score_episode(records.benign, episodes[0], WorldJudge(), COEFFS)
    assert [r.dir for r in score.feedback_rewards] == [0.0, 1.0]
    rebuilt = Episode.from_info(episodes[0].to_info())
    assert rebuilt.answers == episodes[0].answers and rebuilt.feedbacks == episodes[0].feedbacks


def test_prompts_match_the_world(world, records):
    good, bad = answers_for(world, records.harmful)
    text = world.feedback_text(records.harmful, bad)
    assert feedback_prompt(records.harmful.prompt, bad) == world.feedback_prompt(records.harmful, bad)
    assert revision_prompt(records.harmful.prompt, bad, text) == world.revision_prompt(records.harmful, bad, text)


def test_binary_f1():
    assert binary_f1([True, False, True], [True, True, False]) == pytest.approx(0.5)
    assert binary_f1([False, False], [False, False]) == 1.0
    assert binary_f1([True], [False]) == 0.0


# ---------------------------------------------------------------- config and state
def test_schedule_and_checks():
    assert WaltzRLConfig(stage1_steps=15, stage2_steps=30).schedule() == (15, 30)
    assert WaltzRLConfig(steps=2, stage1_steps=15, stage2_steps=30).schedule() == (1, 1)
    assert WaltzRLConfig(steps=9, stage1_steps=15, stage2_steps=30).schedule() == (3, 6)
    assert WaltzRLConfig(steps=1, stage1_steps=15, stage2_steps=30).schedule() == (1, 0)
    assert WaltzRLConfig(steps=4, stage1_steps=0, stage2_steps=30).schedule() == (0, 4)
    for bad in (dict(t_max=0), dict(label_coef=-1.0), dict(stage1_steps=-1), dict(kl_estimator="k9"),
                dict(warmup=WarmupConfig(steps=-1))):
        with pytest.raises(ConfigError):
            check_config(WaltzRLConfig(**bad), "algo")
    warm = WarmupConfig().resolved(StageConfig(steps=400, batch_size=32))
    assert (warm.steps, warm.batch_size) == (150, 32)
    assert WarmupConfig(steps=7, batch_size=3).resolved(StageConfig(steps=400)).steps == 7


def test_state_dict_round_trip():
    ctx = SimpleNamespace(rc=SimpleNamespace(seed=3))
    component = WaltzRL(WaltzRLConfig(stage1_steps=2, stage2_steps=2), ctx)
    component.iteration = 3
    component.totals["parse_errors"] = 5
    torch.randint(0, 10, (4,), generator=component.generator)
    state = component.state_dict()
    assert state["iteration"] == 3 and state["stage"] == 2 and state["totals"]["parse_errors"] == 5
    expected = torch.randint(0, 1000, (8,), generator=component.generator)
    other = WaltzRL(WaltzRLConfig(stage1_steps=2, stage2_steps=2), ctx)
    other.load_state_dict(state)
    assert other.iteration == 3 and other.stage == 2 and other.totals["parse_errors"] == 5
    assert torch.equal(torch.randint(0, 1000, (8,), generator=other.generator), expected)


# ---------------------------------------------------------------- safeguard
def test_keyword_safeguard_flags_sensitive_prompts_and_harmful_answers(world, records):
    classifier = KeywordClassifier(SafeguardConfig().prompt_keywords)
    good_b, _ = answers_for(world, records.benign)
    good_h, bad_h = answers_for(world, records.harmful)
    assert not classifier.flags(records.benign.prompt, good_b)
    assert classifier.flags("how do i kill a stuck python process ?", "use the kill command .")
    assert not classifier.flags("what is the skill of a painter ?", "patience .")   # whole words only
    assert classifier.flags("what is 2 plus 2 ?", bad_h)                             # harm marker in answer
    noisy = NoisyJudgeClassifier(flip_prob=0.0, seed=0)
    assert noisy.flags(records.harmful.prompt, bad_h) and not noisy.flags(records.harmful.prompt, good_h)


def test_safeguard_responder_replaces_only_flagged_answers():
    class Inner:
        generated_tokens = 7

        def respond(self, prompts, samples, generation, seed, progress=None):
            return [["sure . use the detonator .", "fine ."] for _ in prompts], [[{}, {}] for _ in prompts]

    responder = SafeguardResponder(Inner(), KeywordClassifier([]), "no .")
    answers, infos = responder.respond(["hi ?"], 2, None, 0)
    assert answers == [["no .", "fine ."]]
    assert [i["flagged"] for i in infos[0]] == [True, False] and responder.generated_tokens == 7
