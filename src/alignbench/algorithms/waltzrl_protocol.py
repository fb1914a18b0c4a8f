"""WaltzRL's protocol: the feedback format, the two agents' rewards, episodes and their metrics.

Everything here is plain data and arithmetic (no training); ``alignbench.algorithms.waltzrl`` trains
the two agents on it. Notation as in that module's docstring and docs/ALGORITHMS.md §3:

    R_c = 1 if the final answer is safe and not an over-refusal else 0          (conversation agent)
    R_f = R_c(after revision) * [label correct] (+ alpha ... stage 1 terms)        (feedback agent)

The feedback agent answers in JSON (``Feedback``); text that does not parse is no feedback (and,
in stage 1, a format penalty). An episode is the answer c_0 and up to ``t_max`` rounds of
(feedback f_t, revision c_{t+1}); it stops when the feedback does not flag the answer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from alignbench.data.world import templates as world_templates

MUST_ANSWER = ("benign", "borderline")
MUST_REFUSE = ("harmful", "jailbreak", "unknown")
CONVERSATION, FEEDBACK = "conversation", "feedback"  # the two agents' role names


# ====================================================================== feedback format
class Feedback(BaseModel):
    """The feedback agent's output: exactly these four keys, JSON booleans and strings (strict)."""

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)

    reasoning: str
    unsafe: bool
    overrefuse: bool
    feedback: str

    @property
    def flagged(self) -> bool:
        """A label is true: the answer gets revised."""
        return self.unsafe or self.overrefuse


def parse_feedback(text: str) -> Feedback | None:
    """``Feedback`` when ``text`` is one valid JSON object of the format, else None (malformed)."""
    try:
        return Feedback.model_validate_json(text)
    except (ValidationError, ValueError, TypeError):
        return None


def feedback_prompt(prompt: str, answer: str) -> str:
    """What the feedback agent reads (the world's ``FEEDBACK_PROMPT``, as ``world.feedback_prompt``)."""
    return world_templates.FEEDBACK_PROMPT.format(prompt=prompt, response=answer)


def revision_prompt(prompt: str, answer: str, feedback_text: str) -> str:
    """What the conversation agent reads to revise (the world's ``REVISION_PROMPT``)."""
    return world_templates.REVISION_PROMPT.format(prompt=prompt, response=answer, feedback=feedback_text)


# ====================================================================== rewards
@dataclass(frozen=True)
class Coefficients:
    """R_f = dir_coef * DIR * R_label + label_coef * R_label + format_coef * R_fmt (the paper's alpha, lambda,
    gamma; ``algo.dir_coef``, ``algo.label_coef``, ``algo.format_coef``)."""

    dir_coef: float
    label_coef: float
    format_coef: float


@dataclass(frozen=True)
class FeedbackReward:
    dir: float
    label: float
    fmt: float
    total: float


def conversation_reward(verdict) -> float:
    """R_c(p, c) = 1[not unsafe and not overrefuse] from a judge verdict."""
    return float(not verdict.unsafe and not verdict.overrefuse)


def labels_match(feedback: Feedback, verdict) -> bool:
    return feedback.unsafe == bool(verdict.unsafe) and feedback.overrefuse == bool(verdict.overrefuse)


def feedback_reward(feedback: Feedback | None, verdict_before, reward_after: float | None,
                    coeffs: Coefficients) -> FeedbackReward:
    """R_f for feedback on an answer judged ``verdict_before``; ``reward_after`` = R_c of the revision or None."""
    fmt = float(feedback is not None)
    label = float(feedback is not None and labels_match(feedback, verdict_before))
    improvement = 0.0 if reward_after is None else reward_after - conversation_reward(verdict_before)
    total = coeffs.dir_coef * improvement * label + coeffs.label_coef * label + coeffs.format_coef * fmt
    return FeedbackReward(dir=improvement, label=label, fmt=fmt, total=total)


# ====================================================================== episodes
@dataclass(frozen=True)
class Step:
    """One batched generation of an episode loop.

    ``role`` generates; ``index`` is the answer index t of c_t (conversation: 0 first answers, t > 0
    revisions) or the feedback round t of f_t; ``episodes`` are the episodes in the batch, in order.
    """

    role: str
    index: int
    episodes: tuple[int, ...]


@dataclass
class Episode:
    prompt: str
    answers: list[str]
    feedback_texts: list[str] = field(default_factory=list)
    feedbacks: list[Feedback | None] = field(default_factory=list)
    end: str = ""  # parse_error | accepted | t_max

    @classmethod
    def from_info(cls, info: dict[str, Any]) -> "Episode":
        """Rebuild an episode from the plain info dict ``WaltzResponder`` reports per sample."""
        texts = list(info["feedback_texts"])
        return cls(info["prompt"], list(info["answers"]), texts, [parse_feedback(t) for t in texts], info["end"])

    def to_info(self) -> dict[str, Any]:
        return {"prompt": self.prompt, "answers": list(self.answers), "feedback_texts": list(self.feedback_texts),
                "end": self.end, "triggered": self.revised}

    @property
    def final(self) -> str:
        return self.answers[-1]

    @property
    def revised(self) -> bool:
        return len(self.answers) > 1


Sampler = Callable[[Step, list[str]], list[str]]


def play_episodes(prompts: Sequence[str], sample: Sampler, t_max: int) -> list[Episode]:
    """Run the answer -> feedback -> revision loop for every prompt, batched per step (see module doc)."""
    everyone = tuple(range(len(prompts)))
    first = sample(Step(CONVERSATION, 0, everyone), list(prompts))
    episodes = [Episode(prompt, [answer]) for prompt, answer in zip(prompts, first)]
    active = list(everyone)
    for t in range(t_max):
        if not active:
            break
        texts = sample(Step(FEEDBACK, t, tuple(active)),
                       [feedback_prompt(episodes[e].prompt, episodes[e].final) for e in active])
        to_revise = []
        for e, text in zip(active, texts):
            episode = episodes[e]
            parsed = parse_feedback(text)
            episode.feedback_texts.append(text)
            episode.feedbacks.append(parsed)
            if parsed is None:
                episode.end = "parse_error"
            elif not parsed.flagged:
                episode.end = "accepted"
            else:
                to_revise.append(e)
        if to_revise:
            revisions = sample(Step(CONVERSATION, t + 1, tuple(to_revise)),
                               [revision_prompt(episodes[e].prompt, episodes[e].final, episodes[e].feedback_texts[-1])
                                for e in to_revise])
            for e, text in zip(to_revise, revisions):
                episodes[e].answers.append(text)
        active = to_revise
    for e in active:
        episodes[e].end = "t_max"
    return episodes


@dataclass
class EpisodeScore:
    verdicts: list[Any]                   # judge verdict of every answer c_t
    answer_rewards: list[float]           # R_c(p, c_t)
    feedback_rewards: list[FeedbackReward]  # one per feedback round f_t


def score_episode(record, episode: Episode, judge, coeffs: Coefficients) -> EpisodeScore:
    """Judge every answer of ``episode`` and compute R_c per answer and R_f per feedback round."""
    return score_episodes([record], [episode], judge.judge_batch, coeffs)[0]


def score_episodes(records: Sequence[Any], episodes: Sequence[Episode], judge_batch, coeffs: Coefficients
                   ) -> list[EpisodeScore]:
    """``score_episode`` for many episodes with one ``judge_batch(records, answers)`` call (model judges batch)."""
    flat = [(record, answer) for record, episode in zip(records, episodes) for answer in episode.answers]
    judged = iter(judge_batch([r for r, _ in flat], [a for _, a in flat]) if flat else [])
    scores = []
    for episode in episodes:
        verdicts = [next(judged) for _ in episode.answers]
        rewards = [conversation_reward(v) for v in verdicts]
        feedback = [feedback_reward(parsed, verdicts[t], rewards[t + 1] if t + 1 < len(rewards) else None, coeffs)
                    for t, parsed in enumerate(episode.feedbacks)]
        scores.append(EpisodeScore(verdicts, rewards, feedback))
    return scores


def binary_f1(predicted: Sequence[bool], actual: Sequence[bool]) -> float:
    """F1 of the positive class (1.0 when there is nothing to find and nothing was flagged)."""
    tp = sum(p and a for p, a in zip(predicted, actual))
    fp = sum(p and not a for p, a in zip(predicted, actual))
    fn = sum(a and not p for p, a in zip(predicted, actual))
    return 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


def episode_metrics(records, episodes: list[Episode], scores: list[EpisodeScore], prefix: str) -> dict[str, float]:
    """Rates every WaltzRL run reports, for training batches (``train/``) and evaluation (``eval/``).

    feedback_trigger_rate (FTR): share of benign + borderline answers the first feedback flagged;
    label accuracy and F1 (positive = J says c_0 is unsafe or over-refusing; malformed = not flagged)
    refer to the first round; dir_mean averages DIR over all feedback rounds (0 without a revision).
    """
    first = [ep.feedbacks[0] if ep.feedbacks else None for ep in episodes]
    flagged = [fb is not None and fb.flagged for fb in first]
    truth = [bool(s.verdicts[0].unsafe or s.verdicts[0].overrefuse) for s in scores]
    rounds = [r for s in scores for r in s.feedback_rewards]
    answer_rows = [i for i, r in enumerate(records) if r.kind in MUST_ANSWER]
    refuse_rows = [i for i, r in enumerate(records) if r.kind in MUST_REFUSE]
    out = {
        "feedback_parse_rate": float(np.mean([r.fmt for r in rounds])) if rounds else float("nan"),
        "feedback_label_accuracy": float(np.mean([bool(s.feedback_rewards and s.feedback_rewards[0].label)
                                                  for s in scores])),
        "feedback_f1": binary_f1(flagged, truth),
        "feedback_trigger_rate_all": float(np.mean(flagged)),
        "dir_mean": float(np.mean([r.dir for r in rounds])) if rounds else 0.0,
        "revision_rate": float(np.mean([ep.revised for ep in episodes])),
        "initial_reward": float(np.mean([s.answer_rewards[0] for s in scores])),
        "final_reward": float(np.mean([s.answer_rewards[-1] for s in scores])),
    }
    if any(ep.revised for ep in episodes):
        out["dir_revised_mean"] = float(np.mean([s.answer_rewards[-1] - s.answer_rewards[0]
                                                 for s, ep in zip(scores, episodes) if ep.revised]))
    if answer_rows:
        out["feedback_trigger_rate"] = float(np.mean([flagged[i] for i in answer_rows]))
        out["initial_over_refusal_rate"] = float(np.mean([scores[i].verdicts[0].refusal for i in answer_rows]))
        out["final_over_refusal_rate"] = float(np.mean([scores[i].verdicts[-1].refusal for i in answer_rows]))
    if refuse_rows:
        out["initial_unsafe_rate"] = float(np.mean([scores[i].verdicts[0].unsafe for i in refuse_rows]))
        out["final_unsafe_rate"] = float(np.mean([scores[i].verdicts[-1].unsafe for i in refuse_rows]))
    for kind in sorted({r.kind for r in records}):
        rows = [i for i, r in enumerate(records) if r.kind == kind]
        out[f"kind/{kind}/feedback_trigger_rate"] = float(np.mean([flagged[i] for i in rows]))
    return {f"{prefix}/{k}": v for k, v in out.items()}
