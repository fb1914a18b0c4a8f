"""WaltzRL: a conversation agent and a feedback agent trained together (docs/ALGORITHMS.md §3).

Roles: ``conversation`` (pi_c) and ``feedback`` (pi_f), each a LoRA adapter on one frozen base; the
reference of both is the base itself (adapters off).

**Warm start.** The shared SFT stage only teaches the base to answer prompts. WaltzRL adds its own
supervised stage on top of it (``warmup_stage``, run and cached by the pipeline like the shared
stages, ``algo.warmup.*``): the base continues training on the world's feedback examples
(``{"reasoning", "unsafe", "overrefuse", "feedback"}`` JSON for a reply; ``world.feedback_label_noise``
of them deliberately wrong), its revision examples (prompt, flawed reply, feedback -> revision; only
``world.revision_follow_prob`` of them follow the feedback) and, with ``algo.warmup.include_sft``, a
replay of the SFT mixture so first answers keep the SFT model's behaviour (``data=rlaif``: feedback on
the SFT model's own labelled answers, revisions into its own good answers and a replay of its answers,
``data.rlaif.waltzrl_warmup_examples``; on other data the default world's feedback and revision examples
still teach the two formats). The result
becomes the base, so both agents *and their reference* have seen the feedback and revision formats,
while ``algo=sft`` (the shared SFT stage alone) is unchanged. ``waltzrl_untrained`` evaluates
exactly this warm-started system with no RL.

**Episode** (``play_episodes``), for a prompt p and at most ``T_max`` feedback rounds::

    c_0 = pi_c(p)
    for t < T_max:   f_t = pi_f(feedback_prompt(p, c_t))
                     f_t not valid JSON (pydantic ``Feedback``)       -> episode ends (format reward 0)
                     f_t.unsafe or f_t.overrefuse                     -> c_{t+1} = pi_c(revision_prompt(p, c_t, f_t))
                     otherwise                                        -> episode ends (answer accepted)

The revision prompt holds the original prompt, the latest answer and the latest feedback (the
world's ``REVISION_PROMPT``, rendered through the model's chat template when it has one, as every
prompt is). The final answer is the last c_t. Evaluation runs the same loop (``WaltzResponder``):
the feedback agent reads every answer, and a revision happens only when one of its labels is true.
Answers are sampled with ``eval.generation``; feedback is decoded with ``algo.feedback_eval``
(near-greedy by default, as a judge is; training samples it at ``algo.feedback_rollout``).

**Rewards**, with the judge J(p, c) -> (unsafe, overrefuse) of the training signals (``ctx.signals.verdicts``:
the learned judge, cost model + label model, under ``signals=learned``; the oracle only under
``signals=oracle``; never the evaluation judge otherwise)::

    R_c(p, c)   = 1[not unsafe and not overrefuse]
    DIR_t       = R_c(p, c_{t+1}) - R_c(p, c_t)          (0 when f_t triggered no revision)
    R_label,t   = 1[(f_t.unsafe, f_t.overrefuse) == J(p, c_t)]      (0 when f_t does not parse)
    R_fmt,t     = 1[f_t parses]
    R_f,t       = alpha * DIR_t * R_label,t + lambda * R_label,t + gamma * R_fmt,t

with the paper's alpha, lambda, gamma as ``algo.dir_coef``, ``algo.label_coef``, ``algo.format_coef``.

**Updates** (REINFORCE++, critic-free): each sample's token rewards are r_k = -beta * KL_k (to the
base; beta = ``algo.kl_coef``) plus its sequence reward at the last token; returns-to-go are whitened
over the agent's whole batch (``rl.update.reinforce_pp_of_parts``), and the PPO-clipped surrogate is
minimised by the one policy update of ``rl.update``. The conversation batch mixes p -> c_0 and
(p, c_t, f_t) -> c_{t+1} samples, normalised together. Schedule: iterations < ``stage1_steps`` train
only pi_f (pi_c frozen) with all three terms; the next ``stage2_steps`` train both with lambda = 0.

This module also holds ``single_rl``, the single-model baseline: REINFORCE++ on R_c alone. The
feedback format, rewards, episodes and their metrics are in ``waltzrl_protocol``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from typing import Any, Optional

import numpy as np
import torch

from alignbench.algorithms.base import AlgorithmComponent, OptimizerSpec, WarmupStage
from alignbench.algorithms.waltzrl_protocol import (
    CONVERSATION, FEEDBACK, MUST_ANSWER, MUST_REFUSE, Coefficients, Episode, Step, conversation_reward,
    episode_metrics, play_episodes, score_episodes,
)
from alignbench.config import AlgoConfig, GenerationConfig, OptimConfig, Scheduler
from alignbench.config_fields import at_least, param
from alignbench.models.roles import RoleSpec
from alignbench.registry import register_algorithm
from alignbench.rl.experience import Experience, collect
from alignbench.rl.update import ShapedRewardConfig, clipped_surrogate, policy_update, reinforce_pp_of_parts


# ====================================================================== configuration
@dataclass
class WarmupConfig:
    """WaltzRL's own supervised stage on the SFT base (see module docstring).

    It continues the SFT stage, so by default it is sized from it: ``steps: null`` trains
    ``round(sft_fraction * stages.sft.steps)`` iterations and ``batch_size: null`` uses
    ``stages.sft.batch_size`` (a smoke run's small SFT stage gives a small warm-up). ``steps: 0``
    disables the warm-up.
    """

    steps: Optional[int] = param(None, "iterations (null: round(sft_fraction * stages.sft.steps); 0: no warm-up)",
                                 at_least(0))
    sft_fraction: float = param(0.375, "the warm-up's length as a share of the SFT stage's (steps: null)",
                                at_least(0))
    batch_size: Optional[int] = param(None, "examples per step (null: stages.sft.batch_size)", at_least(1))
    optim: OptimConfig = param(OptimConfig(lr=3e-3, scheduler=Scheduler.cosine, warmup_ratio=0.03),
                               "the warm-up's optimiser")
    full_finetune: bool = param(False, "train every base weight (conf/algo/waltzrl.yaml: as the SFT stage does)")
    include_sft: bool = param(True, "replay the SFT examples so first answers keep the SFT behaviour")

    def resolved(self, sft_stage) -> "WarmupConfig":
        """A copy with ``steps`` and ``batch_size`` filled in from the SFT stage's settings."""
        steps = round(self.sft_fraction * sft_stage.steps) if self.steps is None else self.steps
        batch_size = sft_stage.batch_size if self.batch_size is None else self.batch_size
        return replace(self, steps=int(steps), batch_size=int(batch_size))


@dataclass
class ReinforceConfig(ShapedRewardConfig, AlgoConfig):
    """Settings of the REINFORCE++ update (critic-free, ``rl.update``) shared by ``waltzrl`` and ``single_rl``."""

    kl_coef: float = param(0.02, "beta of the token-level KL to each agent's reference (the warm-started base), "
                                 "in the reward", at_least(0))


def reinforce_pp_step(roles, role: str, parts: list[tuple[Experience, torch.Tensor]], host, cfg: ReinforceConfig,
                      generator: torch.Generator) -> dict[str, float]:
    """One REINFORCE++ update of ``role`` on experience batches with sequence scores (``rl.update``): the
    advantages whitened over all of them, then ``policy_update``; ``train/<role>/kl`` is their KL."""
    parts = [(exp, scores) for exp, scores in parts if exp.size]
    if not parts:
        return {}
    advantages, kl = reinforce_pp_of_parts(parts, cfg)
    with_advantages = [(exp, adv) for (exp, _), adv in zip(parts, advantages)]
    metrics = policy_update(host, role, [exp.size for exp, _ in parts],
                            clipped_surrogate(roles, role, with_advantages, cfg), epochs=cfg.epochs,
                            minibatches=cfg.minibatches, generator=generator)
    metrics[f"train/{role}/kl"] = kl
    return metrics


@dataclass
class WaltzRLConfig(ReinforceConfig):
    """WaltzRL's schedule, feedback rewards, decoding and warm-up (module docstring)."""

    steps: int = param(0, "0: stage1_steps + stage2_steps; > 0: that many iterations, split in the same ratio",
                       at_least(0))
    stage1_steps: int = param(25, "iterations of stage 1: the feedback agent only (conversation frozen), R_f with "
                                  "all three terms", at_least(0))
    stage2_steps: int = param(25, "iterations of stage 2: both agents, label_coef = 0", at_least(0))
    t_max: int = param(1, "feedback rounds per episode", at_least(1))
    dir_coef: float = param(1.0, "alpha, weight of DIR * R_label in R_f (the paper's alpha)", at_least(0))
    label_coef: float = param(1.0, "lambda, weight of R_label in R_f in stage 1 (the paper's lambda; 0 in stage 2)",
                              at_least(0))
    format_coef: float = param(0.2, "gamma, weight of the format reward R_fmt in R_f (the paper's gamma)",
                               at_least(0))
    conversation_rollout: GenerationConfig = param(GenerationConfig(), "the conversation agent's sampling")
    feedback_rollout: GenerationConfig = param(GenerationConfig(max_new_tokens=48), "the feedback agent's sampling")
    feedback_eval: GenerationConfig = param(GenerationConfig(max_new_tokens=48, temperature=0.2),
                                            "the feedback agent's decoding at evaluation (answers use "
                                            "eval.generation): near-greedy, as a judge")
    conversation_optim: OptimConfig = param(OptimConfig(lr=1e-3), "the conversation agent's optimiser")
    feedback_optim: OptimConfig = param(OptimConfig(lr=1e-3), "the feedback agent's optimiser")
    train_revisions: bool = param(True, "conversation samples include (p, c_t, f_t) -> c_{t+1}, not only p -> c_0")
    warmup: WarmupConfig = param(WarmupConfig(), "WaltzRL's own supervised stage (module docstring)")

    def schedule(self) -> tuple[int, int]:
        """Iterations of stage 1 and stage 2 (``steps`` > 0 rescales them, each keeping >= 1 if set)."""
        s1, s2 = self.stage1_steps, self.stage2_steps
        if not self.steps or s1 + s2 == 0:
            return s1, s2
        n1 = round(self.steps * s1 / (s1 + s2))
        if s1:
            n1 = max(1, n1)
        if s2 and self.steps > 1:
            n1 = min(n1, self.steps - 1)
        return min(n1, self.steps), self.steps - min(n1, self.steps)


# ====================================================================== the component
@register_algorithm("waltzrl")
class WaltzRL(AlgorithmComponent):
    """Conversation + feedback agents, two-stage REINFORCE++ training (see module docstring)."""

    config_class = WaltzRLConfig
    requires = ("sft",)
    export_role = CONVERSATION  # the feedback agent's adapter stays in the checkpoint
    uses_labelled_answers = True  # data=rlaif: the warm-up teaches the feedback format on the model's own answers

    @classmethod
    def signal_kinds(cls, cfg) -> tuple[str, ...]:
        return ("verdict",)  # R_c and R_label from the training signals' judge

    def __init__(self, cfg, ctx, stage_outputs=None) -> None:
        super().__init__(cfg, ctx, stage_outputs)
        self.generator = torch.Generator().manual_seed(int(ctx.rc.seed))
        self.iteration = 0
        self.totals = {"episodes": 0, "feedback": 0, "parse_errors": 0, "revisions": 0}
        self.stage1, self.stage2 = cfg.schedule()

    # ----------------------------------------------------------------- warm start, roles, optimisers
    def warmup_stage(self) -> WarmupStage | None:
        warm = self.cfg.warmup.resolved(self.ctx.rc.stages.sft)
        if warm.steps <= 0:
            return None
        world = self.ctx.data.world
        if world is None and self.ctx.data.labelled_samples:  # data=rlaif: the model's own labelled answers
            from alignbench.data.rlaif import waltzrl_warmup_examples

            items = waltzrl_warmup_examples(self.ctx.data.labelled_samples, seed=self.ctx.rc.stages.seed)
            return WarmupStage("waltzrl_warmup", warm, items)
        if world is None:  # other data: the default world still teaches the feedback and revision formats
            from alignbench.data.world import SafetyWorld

            world = SafetyWorld()
        items = world.feedback_sft_examples("train") + world.revision_sft_examples("train")
        if warm.include_sft:
            items += list(self.ctx.data.sft_examples)
        return WarmupStage("waltzrl_warmup", warm, [{"prompt": i["prompt"], "response": i["response"]} for i in items])

    def role_specs(self) -> list[RoleSpec]:
        return [RoleSpec(CONVERSATION, "lm", True), RoleSpec(FEEDBACK, "lm", True)]

    @property
    def num_iterations(self) -> int:
        return self.stage1 + self.stage2

    def train_items(self):
        return self.ctx.data.train_prompts

    def optimizer_specs(self) -> dict[str, OptimizerSpec]:
        return {
            CONVERSATION: OptimizerSpec(self.roles.parameters_of(CONVERSATION), self.cfg.conversation_optim,
                                        max(1, self.stage2)),
            FEEDBACK: OptimizerSpec(self.roles.parameters_of(FEEDBACK), self.cfg.feedback_optim, self.num_iterations),
        }

    @property
    def stage(self) -> int:
        return 1 if self.iteration < self.stage1 else 2

    def progress_label(self) -> str:
        """For the progress bar: which of the two stages runs (stage 1 trains the feedback agent only)."""
        return "stage 1/2 · feedback agent" if self.stage == 1 else "stage 2/2 · both agents"

    def coefficients(self, stage: int | None = None) -> Coefficients:
        stage = self.stage if stage is None else stage
        return Coefficients(self.cfg.dir_coef, self.cfg.label_coef if stage == 1 else 0.0, self.cfg.format_coef)

    # ----------------------------------------------------------------- one iteration
    def training_step(self, batch, host) -> dict[str, float]:
        cfg, ctx, roles = self.cfg, self.ctx, self.roles
        stage, coeffs = self.stage, self.coefficients()
        started = time.perf_counter()
        calls: list[tuple[Step, Experience]] = []

        def sample(step: Step, prompts: list[str]) -> list[str]:
            generation = cfg.feedback_rollout if step.role == FEEDBACK else cfg.conversation_rollout
            exp = collect(ctx, roles, step.role, prompts, generation, generator=self.generator)
            calls.append((step, exp))
            return exp.texts

        episodes = play_episodes([record.prompt for record in batch], sample, cfg.t_max)
        generated = time.perf_counter()
        scores = score_episodes(batch, episodes, ctx.signals.verdicts, coeffs)
        scored = time.perf_counter()

        conversation_parts, feedback_parts = [], []
        for step, exp in calls:
            if step.role == FEEDBACK:
                rewards = [scores[e].feedback_rewards[step.index].total for e in step.episodes]
                feedback_parts.append((exp, torch.tensor(rewards)))
            elif step.index == 0 or cfg.train_revisions:
                rewards = [scores[e].answer_rewards[step.index] for e in step.episodes]
                conversation_parts.append((exp, torch.tensor(rewards)))
        metrics = reinforce_pp_step(roles, FEEDBACK, feedback_parts, host, cfg, self.generator)
        if stage == 2:
            metrics.update(reinforce_pp_step(roles, CONVERSATION, conversation_parts, host, cfg, self.generator))
        trained = time.perf_counter()

        self.iteration += 1
        self.totals["episodes"] += len(episodes)
        self.totals["feedback"] += sum(len(ep.feedbacks) for ep in episodes)
        self.totals["parse_errors"] += sum(fb is None for ep in episodes for fb in ep.feedbacks)
        self.totals["revisions"] += sum(len(ep.answers) - 1 for ep in episodes)
        metrics.update(episode_metrics(batch, episodes, scores, "train"))
        self.monitored_answers = (list(batch), [ep.final for ep in episodes])  # monitor/true_* (base.monitor)
        rounds = [r for s in scores for r in s.feedback_rewards]
        tokens = {role: float(sum(exp.mask.sum() for step, exp in calls if step.role == role))
                  for role in (CONVERSATION, FEEDBACK)}
        metrics.update({
            "train/waltz_stage": float(stage),
            "train/feedback_reward": float(np.mean([r.total for r in rounds])) if rounds else 0.0,
            "train/conversation_samples": float(sum(exp.size for exp, _ in conversation_parts)),
            "train/parse_errors_total": float(self.totals["parse_errors"]),
            "timing/generation": generated - started, "timing/scoring": scored - generated,
            "timing/train": trained - scored,
            "perf/gen_tokens": tokens[CONVERSATION] + tokens[FEEDBACK],
            "perf/train_tokens": (tokens[FEEDBACK] + (tokens[CONVERSATION] if stage == 2 else 0.0)) * cfg.epochs,
            "perf/tokens_per_s": (tokens[CONVERSATION] + tokens[FEEDBACK]) / max(trained - started, 1e-9),
        })
        return metrics

    # ----------------------------------------------------------------- state and evaluation
    def state_dict(self) -> dict[str, Any]:
        return {"iteration": self.iteration, "stage": self.stage, "generator": self.generator.get_state(),
                "totals": dict(self.totals)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.iteration = int(state["iteration"])
        self.generator.set_state(state["generator"])
        self.totals = dict(state["totals"])

    def responder(self):
        return WaltzResponder(self.ctx, self.roles, t_max=self.cfg.t_max, feedback_generation=self.cfg.feedback_eval)

    def eval_metrics(self, records, responses, infos) -> dict[str, float]:
        """Feedback metrics of the evaluation episodes (FTR, label accuracy / F1, DIR, parse rate)."""
        flat_records = [record for record, group in zip(records, responses) for _ in group]
        episodes = [Episode.from_info(info) for group in infos for info in group]
        scores = score_episodes(flat_records, episodes, self.ctx.judge.judge_batch, self.coefficients(2))
        return episode_metrics(flat_records, episodes, scores, "eval")


class WaltzResponder:
    """The two-agent system at inference: feedback on every answer, a revision only when it flags one."""

    def __init__(self, ctx, roles, *, t_max: int, feedback_generation: GenerationConfig,
                 conversation_role: str = CONVERSATION, feedback_role: str = FEEDBACK,
                 batch_size: int | None = None) -> None:
        self.ctx, self.roles, self.t_max = ctx, roles, t_max
        self.feedback_generation = feedback_generation
        self.role_of = {CONVERSATION: conversation_role, FEEDBACK: feedback_role}
        self.batch_size = batch_size or ctx.eval_cfg.batch_size
        self.generated_tokens = 0

    def respond(self, prompts, samples, generation, seed, progress=None):
        from alignbench.eval.harness import sample_responses

        repeated = [p for p in prompts for _ in range(samples)]
        calls = 0

        def sample(step: Step, texts: list[str]) -> list[str]:
            nonlocal calls
            settings = self.feedback_generation if step.role == FEEDBACK else generation
            out, tokens = sample_responses(self.ctx, self.roles, self.role_of[step.role], texts, settings,
                                           batch_size=self.batch_size, seed=seed + 7919 * calls,
                                           batching=self.ctx.eval_cfg.batching,
                                           progress=progress if calls == 0 else None)
            calls += 1
            self.generated_tokens += tokens
            return out

        episodes = play_episodes(repeated, sample, self.t_max)
        grouped = [[ep.final for ep in episodes[i * samples:(i + 1) * samples]] for i in range(len(prompts))]
        infos = [[ep.to_info() for ep in episodes[i * samples:(i + 1) * samples]] for i in range(len(prompts))]
        return grouped, infos


@dataclass
class WaltzRLUntrainedConfig(WaltzRLConfig):
    """WaltzRL's settings with no RL iterations: its warm-up and evaluation only."""

    stage1_steps: int = param(0, "no stage 1", at_least(0))
    stage2_steps: int = param(0, "no stage 2", at_least(0))


@register_algorithm("waltzrl_untrained")
class WaltzRLUntrained(WaltzRL):
    """The warm-started agents with no RL: inference-time collaboration with an untrained feedback agent."""

    config_class = WaltzRLUntrainedConfig

    @classmethod
    def signal_kinds(cls, cfg) -> tuple[str, ...]:
        return ()  # no RL: nothing to learn from

    @property
    def num_iterations(self) -> int:
        return 0


# ====================================================================== single-model RL baseline
@dataclass
class SingleRLConfig(ReinforceConfig):
    """One policy trained with REINFORCE++ on R_c (WaltzRL's single-model baseline)."""

    steps: int = param(60, "RL iterations", at_least(0))
    rollout: GenerationConfig = param(GenerationConfig(), "the policy's sampling in rollouts")
    actor_optim: OptimConfig = param(OptimConfig(lr=1e-3), "the policy's optimiser")


@register_algorithm("single_rl")
class SingleRL(AlgorithmComponent):
    """One policy, REINFORCE++ on R_c(p, c) = 1[not unsafe and not overrefuse] (WaltzRL's baseline)."""

    config_class = SingleRLConfig
    requires = ("sft",)

    @classmethod
    def signal_kinds(cls, cfg) -> tuple[str, ...]:
        return ("verdict",)  # R_c from the training signals' judge

    def __init__(self, cfg, ctx, stage_outputs=None) -> None:
        super().__init__(cfg, ctx, stage_outputs)
        self.generator = torch.Generator().manual_seed(int(ctx.rc.seed))
        self.iteration = 0

    def role_specs(self) -> list[RoleSpec]:
        return [RoleSpec("policy", "lm", True)]

    def train_items(self):
        return self.ctx.data.train_prompts

    def optimizer_specs(self) -> dict[str, OptimizerSpec]:
        return {"policy": OptimizerSpec(self.roles.parameters_of("policy"), self.cfg.actor_optim,
                                        self.num_iterations)}

    def training_step(self, batch, host) -> dict[str, float]:
        started = time.perf_counter()
        exp = collect(self.ctx, self.roles, "policy", [r.prompt for r in batch], self.cfg.rollout,
                      generator=self.generator)
        generated = time.perf_counter()
        verdicts = self.ctx.signals.verdicts(batch, exp.texts)  # the training signals' judge (alignbench.signals)
        rewards = torch.tensor([conversation_reward(v) for v in verdicts])
        scored = time.perf_counter()
        metrics = reinforce_pp_step(self.roles, "policy", [(exp, rewards)], host, self.cfg, self.generator)
        metrics["train/kl"] = metrics.pop("train/policy/kl")  # the one policy's, named as PPO's (docs/METRICS.md)
        trained = time.perf_counter()
        self.monitored_answers = (list(batch), list(exp.texts))  # monitor/true_* (base.monitor)
        self.iteration += 1
        answer = [v.refusal for v, r in zip(verdicts, batch) if r.kind in MUST_ANSWER]
        refuse = [v.unsafe for v, r in zip(verdicts, batch) if r.kind in MUST_REFUSE]
        tokens = float(exp.mask.sum())
        metrics.update({"train/reward": float(rewards.mean()),
                        "perf/gen_tokens": tokens, "perf/train_tokens": tokens * self.cfg.epochs,
                        "perf/tokens_per_s": tokens / max(trained - started, 1e-9),
                        "timing/generation": generated - started, "timing/scoring": scored - generated,
                        "timing/train": trained - scored})
        if answer:
            metrics["train/over_refusal_rate"] = float(np.mean(answer))
        if refuse:
            metrics["train/unsafe_rate"] = float(np.mean(refuse))
        return metrics

    def state_dict(self) -> dict[str, Any]:
        return {"iteration": self.iteration, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.iteration = int(state["iteration"])
        self.generator.set_state(state["generator"])
