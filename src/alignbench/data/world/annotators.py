"""Simulated annotators: preference pairs (Safe RLHF), feedback JSON (WaltzRL), 3-way labels (TriPlay).

Preference annotators mirror the reward/cost tension of PKU-SafeRLHF: a *helpfulness* rater who
looks only at usefulness prefers compliance to a harmful request (unsafe > guidance > refusal),
while the *harmlessness* rater prefers safe to unsafe and, between two safe answers,
guidance > refusal > the rest. A reward model trained on the first and a cost model trained on the
second therefore disagree exactly where safe alignment has to trade off.

Each response of a pair also gets a rater's 3-way label (negative = unsafe, positive = helpful, rejective
otherwise; ``response_{0,1}_label``), wrong with ``label_flip_prob``: the data the label model of
``signals=learned`` learns refusals and helpfulness from (the cost model learns safety from
``is_response_*_safe``). Label noise flips each pairwise preference independently with ``preference_flip_prob``; the random
numbers are drawn whether or not noise is on, so two worlds that differ only in noise produce the
same pairs and differ only in the flipped labels.
"""

from __future__ import annotations

import json
from itertools import combinations
from typing import TYPE_CHECKING, Any

from alignbench.data.schema import LABELS, PromptRecord
from alignbench.data.world import templates as T
from alignbench.data.world.judge import judge, reference_verdict

if TYPE_CHECKING:
    from alignbench.data.world.generator import SafetyWorld

# Best first. Borderline: a wrong answer still engages with the question, so it beats a refusal.
HELPFULNESS_ORDER = {
    "benign": ("helpful", "wrong", "refusal"),
    "borderline": ("helpful", "guidance", "wrong", "refusal"),
    "harmful": ("unsafe", "disguised", "guidance", "refusal"),
    "jailbreak": ("unsafe", "disguised", "guidance", "refusal"),
}
HARMLESSNESS_ORDER = ("guidance", "refusal", "helpful", "wrong", "disguised", "unsafe")
FEEDBACK_KEYS = {"reasoning": str, "unsafe": bool, "overrefuse": bool, "feedback": str}


def _preferred(order: tuple[str, ...], kind_0: str, kind_1: str) -> int:
    """Index (0 or 1) of the response whose kind ranks higher in ``order``."""
    return 0 if order.index(kind_0) < order.index(kind_1) else 1


def preference_pairs(world: "SafetyWorld", split: str) -> list[dict[str, Any]]:
    """Pairs of responses of different kinds per prompt, labelled in the PKU-SafeRLHF schema.

    Extra columns: ``kind``/``category`` of the prompt, ``response_{0,1}_kind`` and ``prompt_id``.
    """
    rng, config = world.rng("preference", split), world.config
    label_rng = world.rng("preference_labels", split)  # its own stream: the pairs do not depend on label noise
    rows = []
    for record in world.prompts(split):
        kind_pairs = list(combinations(T.RESPONSE_KINDS_FOR[record.kind], 2))
        for pair in rng.sample(kind_pairs, min(config.preference_pairs_per_prompt, len(kind_pairs))):
            kind_0, kind_1 = pair if rng.random() < 0.5 else pair[::-1]
            better = _preferred(HELPFULNESS_ORDER[record.kind], kind_0, kind_1)
            safer = _preferred(HARMLESSNESS_ORDER, kind_0, kind_1)
            flip_better, flip_safer = rng.random(), rng.random()
            rows.append({
                "prompt": record.prompt,
                "response_0": world.sample_response(record, kind_0, rng),
                "response_1": world.sample_response(record, kind_1, rng),
                "better_response_id": 1 - better if flip_better < config.preference_flip_prob else better,
                "safer_response_id": 1 - safer if flip_safer < config.preference_flip_prob else safer,
                "is_response_0_safe": not reference_verdict(record.kind, kind_0).unsafe,
                "is_response_1_safe": not reference_verdict(record.kind, kind_1).unsafe,
                "response_0_label": _annotated_label(record.kind, kind_0, label_rng, config.label_flip_prob),
                "response_1_label": _annotated_label(record.kind, kind_1, label_rng, config.label_flip_prob),
                "category": record.category, "kind": record.kind,
                "response_0_kind": kind_0, "response_1_kind": kind_1, "prompt_id": record.prompt_id,
            })
    return rows


def _annotated_label(prompt_kind: str, response_kind: str, rng, flip_prob: float) -> str:
    """A rater's 3-way label of one response (negative / rejective / positive), wrong with ``flip_prob``.

    Both draws are made whatever ``flip_prob`` is, so worlds that differ only in label noise carry the
    same pairs and differ only in the flipped labels.
    """
    label = reference_verdict(prompt_kind, response_kind).label
    flip, pick = rng.random(), rng.random()
    if flip < flip_prob:
        others = [other for other in LABELS if other != label]
        label = others[int(pick * len(others))]
    return label


# ---------------------------------------------------------------- WaltzRL feedback agent
def feedback_prompt(record: PromptRecord, response: str) -> str:
    """What the feedback agent reads: the user's prompt and the conversation agent's reply."""
    return T.FEEDBACK_PROMPT.format(prompt=record.prompt, response=response)


def revision_prompt(record: PromptRecord, response: str, feedback_text: str) -> str:
    """What the conversation agent reads to revise: prompt, its first reply and the feedback."""
    return T.REVISION_PROMPT.format(prompt=record.prompt, response=response, feedback=feedback_text)


def feedback_text(record: PromptRecord, response: str, *, correct: bool = True) -> str:
    """Token-spaced JSON feedback ``{"reasoning", "unsafe", "overrefuse", "feedback"}`` that json.loads accepts.

    ``correct=False`` gives the characteristic mistakes of an untrained feedback agent: a miss when
    something was wrong (all false), a false alarm ("unsafe") when nothing was.
    """
    verdict = judge(record, response)
    labels = (verdict.unsafe, verdict.overrefuse)
    if not correct:
        labels = (False, False) if any(labels) else (True, False)
    reasoning, feedback = T.FEEDBACK_TEXTS[labels]
    return T.FEEDBACK_JSON.format(reasoning=reasoning, feedback=feedback,
                                  unsafe=json.dumps(labels[0]), overrefuse=json.dumps(labels[1]))


def parse_feedback(text: str) -> dict[str, Any] | None:
    """The feedback dict when ``text`` is valid JSON with the four keys of the right types, else None.

    None is WaltzRL's "invalid JSON ends the episode" and zero format reward.
    """
    try:
        value = json.loads(text)
    except (ValueError, TypeError, RecursionError):
        return None
    if not isinstance(value, dict) or any(not isinstance(value.get(k), t) for k, t in FEEDBACK_KEYS.items()):
        return None
    return {key: value[key].strip() if isinstance(value[key], str) else value[key] for key in FEEDBACK_KEYS}


def feedback_sft_examples(world: "SafetyWorld", split: str) -> list[dict[str, Any]]:
    """Feedback on replies drawn from the SFT mixture; a ``feedback_label_noise`` share is deliberately wrong."""
    rng, config = world.rng("feedback", split), world.config
    examples = []
    for record in world.prompts(split):
        for _ in range(config.feedback_samples_per_prompt):
            response_kind = world.sample_response_kind(record, rng)
            response = world.sample_response(record, response_kind, rng)
            correct = rng.random() >= config.feedback_label_noise
            examples.append({"prompt": feedback_prompt(record, response),
                             "response": feedback_text(record, response, correct=correct),
                             "prompt_kind": record.kind, "response_kind": response_kind, "correct": correct,
                             "category": record.category, "prompt_id": record.prompt_id})
    return examples


def revision_sft_examples(world: "SafetyWorld", split: str) -> list[dict[str, Any]]:
    """Revisions after (correct) feedback on a flawed first reply.

    Flawed = unsafe on harmful/jailbreak, a refusal on benign/borderline. With probability
    ``revision_follow_prob`` the revision follows the feedback (guidance, resp. the answer); otherwise
    it repeats the first reply's kind, so there is room for RL to improve how feedback is used.
    """
    rng, config = world.rng("revision", split), world.config
    examples = []
    for record in world.prompts(split):
        harmful = record.kind in ("harmful", "jailbreak")
        flawed_kinds = ["unsafe"] if harmful else [k for k in ("refusal", "guidance")
                                                   if k in T.RESPONSE_KINDS_FOR[record.kind]]
        for _ in range(config.revision_samples_per_prompt):
            first_kind = rng.choice(flawed_kinds)
            first = world.sample_response(record, first_kind, rng)
            followed = rng.random() < config.revision_follow_prob
            revised_kind = ("guidance" if harmful else "helpful") if followed else first_kind
            examples.append({"prompt": revision_prompt(record, first, feedback_text(record, first)),
                             "response": world.sample_response(record, revised_kind, rng),
                             "prompt_kind": record.kind, "first_kind": first_kind, "response_kind": revised_kind,
                             "followed": followed, "category": record.category, "prompt_id": record.prompt_id})
    return examples


# ---------------------------------------------------------------- TriPlay evaluator
def evaluator_prompt(prompt: str, response: str) -> str:
    """What the evaluator reads; its target is one token: negative, rejective or positive."""
    return T.EVALUATOR_PROMPT.format(prompt=prompt, response=response)


def evaluator_sft_examples(world: "SafetyWorld", split: str) -> list[dict[str, Any]]:
    """(prompt, reply) -> true 3-way label, reply kinds drawn uniformly so the labels are balanced."""
    rng, config = world.rng("evaluator", split), world.config
    examples = []
    for record in world.prompts(split):
        for _ in range(config.evaluator_samples_per_prompt):
            response_kind = rng.choice(T.RESPONSE_KINDS_FOR[record.kind])
            response = world.sample_response(record, response_kind, rng)
            label = reference_verdict(record.kind, response_kind).label
            examples.append({"prompt": evaluator_prompt(record.prompt, response), "response": label,
                             "label": label, "prompt_kind": record.kind, "response_kind": response_kind,
                             "category": record.category, "prompt_id": record.prompt_id})
    return examples
