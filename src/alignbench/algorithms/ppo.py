"""PPO on a reward model, fixed-penalty reward shaping, and PPO-Lagrangian (Safe RLHF).

One iteration (docs/ALGORITHMS.md §1), for a batch of prompts x and sampled responses y:

1. Roll out y ~ pi_theta; old log-probs log pi_old(y_t), reference log-probs log pi_ref(y_t) (the SFT
   model), critic values V_R(t), V_C(t); sequence scores R(x, y) (reward model) and C(x, y) (cost
   model; **C > 0 means unsafe**).
2. Per-token KL shaping with k_t = log pi_old(y_t) - log pi_ref(y_t) (both streams clamped to ±50):
       reward stream  r_t = -beta k_t  (+ R at the last token)
       cost stream    c_t = +beta k_t  (+ C at the last token)
   ``reward_shaping`` replaces R by R - w C (Safe RLHF's fixed-penalty baseline).
3. GAE per stream (gamma = 1, lambda_gae = 0.95); returns = A + V.
4. Lagrange multiplier (``safe_rlhf``): log-lambda SGD step on -(J_C - d) lambda, J_C the mean of the
   last ``window`` raw episode costs, once per iteration *before* the actor step, after ``delay``
   iterations, lambda <= lambda_max.
5. Actor: A = (A_R - lambda A_C) / (1 + lambda) (lambda detached; lambda = 0 for ``ppo``), clipped
   surrogate -mean(min(rho A, clip(rho, 0.8, 1.2) A)); optional PTX: ptx_coef * SFT cross-entropy, added to
   the loss or (``ptx_separate_step``, as safe-rlhf's scripts do) minimised in an update of its own.
   Critics: 0.5 * max((V - Ret)^2, (clip(V, V_old ± 5) - Ret)^2), each with its own optimiser.

RePO (``alignbench.algorithms.repo``) subclasses ``SafeRLHF`` and changes step 4 and the advantage.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from alignbench.algorithms.base import AlgorithmComponent, OptimizerSpec
from alignbench.algorithms.sft import response_cross_entropy
from alignbench.config import AlgoConfig, GenerationConfig, OptimConfig
from alignbench.config_fields import Choice, above, at_least, param, within
from alignbench.models.roles import RoleSpec
from alignbench.models.text import encode_prompt_response
from alignbench.registry import register_algorithm
from alignbench.rl.advantages import combine_lagrangian, gae
from alignbench.rl.experience import collect, critic_loss, score_texts
from alignbench.rl.lagrange import LagrangeMultiplier
from alignbench.rl.losses import explained_variance, kl_penalty, masked_mean, masked_whiten
from alignbench.rl.shaping import shape_token_rewards
from alignbench.rl.update import ShapedRewardConfig, clipped_surrogate, policy_update
from alignbench.utils.distributed import all_reduce_mean, world_size


LagrangeMode = Choice("LagrangeMode", "average rectified")


@dataclass
class LagrangeConfig:
    """The dual variable lambda of the cost constraint J_C <= d (``rl.lagrange.LagrangeMultiplier``).

    Safe RLHF's defaults (safe-rlhf ``scripts/ppo-lag.sh``: lambda_init 1, lambda_lr 0.1, lambda_max 5,
    episode_cost_window_size 128, threshold 0).
    """

    init: float = param(1.0, "lambda at the start (> 0: the update runs on log lambda)", above(0))
    lr: float = param(0.1, "SGD learning rate on log lambda", at_least(0))
    lambda_max: float = param(5.0, "upper bound of lambda", above(0))
    threshold: float = param(0.0, "d, the cost limit on the cost model's scale (C > 0 unsafe: 0 is the sign "
                                  "convention)")
    window: int = param(128, "J_C is the mean of this many most recent episode costs", at_least(1))
    delay: int = param(0, "iterations that only fill the window before lambda moves", at_least(0))
    mode: LagrangeMode = param(LagrangeMode.average, "average: J_C = mean C (Safe RLHF) | rectified: J = mean "
                                                     "{C - d}+ against a slack (RePO, algorithms/repo.py)")
    rectified_slack: float = param(0.0, "s of the rectified update, loss_lambda = -(J - s) lambda (RePO)", at_least(0))


ScoreDtype = Choice("ScoreDtype", "auto float32 bfloat16 float16")


@dataclass
class ScoreModelSource:
    """Where a frozen reward/cost model comes from: the trained stage (``path: null``) or a model id/folder.

    ``path`` takes Safe RLHF's published models (``PKU-Alignment/beaver-7b-v1.0-reward`` / ``-cost``,
    safe-rlhf ``*ForScore`` checkpoints) or any one-label ``*ForSequenceClassification`` reward model;
    the stage is then not trained, the model is scored with its own tokenizer and ``template``
    (``null``: the beaver conversation template for safe-rlhf checkpoints), and the critic that would
    start from it starts from a fresh head on the policy's base instead. See ``models/external.py``.
    """

    path: str | None = param(None, "hub id or folder of the model (null: the stage trained on the data)")
    template: str | None = param(None, "its prompt template with {prompt} and {response} (null: the beaver "
                                       "conversation template for safe-rlhf checkpoints)")
    dtype: ScoreDtype = param(ScoreDtype.auto, "auto (model.dtype) | float32 | bfloat16 | float16")
    batch_size: int = param(16, "texts per forward pass", at_least(1))
    max_length: int = param(1024, "tokens of a scored text (longer ones are cut and counted)", at_least(8))


@dataclass
class PPOConfig(ShapedRewardConfig, AlgoConfig):
    """PPO on the reward model, and the settings Safe RLHF and RePO add to it (the module docstring).

    Defaults are tuned for the default world on ``model=tiny``; the published Safe RLHF values for
    Alpaca-7B (safe-rlhf ``scripts/ppo.sh`` / ``ppo-lag.sh``) are in ``conf/algo/scale/``, picked by
    ``model=alpaca7b``.
    """

    steps: int = param(80, "PPO iterations (rollout + updates)", at_least(0))
    batch_size: int = param(32, "prompts per rollout (safe-rlhf per_device_prompt_batch_size)", at_least(1))
    rollout: GenerationConfig = param(GenerationConfig(), "the policy's sampling in rollouts")
    actor_optim: OptimConfig = param(OptimConfig(lr=5e-4), "the policy's optimiser (safe-rlhf: lr 1e-5, weight "
                                                          "decay 0.01, cosine, warm-up 0.03)")
    critic_optim: OptimConfig = param(OptimConfig(lr=5e-4), "each critic's optimiser (safe-rlhf: lr 5e-6)")
    value_clip: float = param(5.0, "c of the clipped value loss max((V - R)^2, (clip(V, V_old +- c) - R)^2) "
                                   "(safe-rlhf clip_range_value)", at_least(0))
    gae_lambda: float = param(0.95, "lambda of GAE (Schulman et al. 2016; safe-rlhf gae_lambda)", within(0, 1))
    whiten_advantages: bool = param(True, "whiten the actor's advantages over the batch (safe-rlhf: false)")
    normalize_by_lambda: bool = param(True, "divide the Lagrangian advantage by (1 + lambda) (Safe RLHF; "
                                            "unverified for RePO)")
    ptx_coef: float = param(0.0, "weight of the SFT cross-entropy on the SFT examples (PTX; safe-rlhf ptx_coeff 16)",
                            at_least(0))
    ptx_separate_step: bool = param(False, "PTX as its own actor update after each RL update (safe-rlhf's "
                                           "ptx_step) instead of a term of the RL loss")
    ptx_batch_size: int = param(8, "SFT examples per PTX term", at_least(1))
    lagrange: LagrangeConfig = param(LagrangeConfig(), "the multiplier (safe_rlhf, repo); threshold d also decides "
                                                       "train/violation_rate for every PPO variant")
    reward_model: ScoreModelSource = param(ScoreModelSource(), "the frozen reward model R")
    cost_model: ScoreModelSource = param(ScoreModelSource(), "the frozen cost model C (C > 0 unsafe)")


SCORE_ROLES = ("reward_model", "cost_model")


@register_algorithm("ppo")
class PPO(AlgorithmComponent):
    """PPO on the reward model only (lambda = 0): the baseline that should get *less* safe."""

    config_class = PPOConfig
    requires = ("sft", "reward_model", "cost_model")  # the cost model only scores, for the metrics
    lagrangian = False
    fsdp_ready = True  # one rollout, fixed scoring passes and minibatches per iteration (RePO too)

    def __init__(self, cfg, ctx, stage_outputs=None) -> None:
        super().__init__(cfg, ctx, stage_outputs)
        self.generator = torch.Generator().manual_seed(int(ctx.rc.seed))
        self.critics = ("reward_critic", "cost_critic") if self.lagrangian else ("reward_critic",)
        self.lagrange = LagrangeMultiplier(
            init=cfg.lagrange.init, lr=cfg.lagrange.lr, threshold=cfg.lagrange.threshold,
            window=cfg.lagrange.window, delay=cfg.lagrange.delay, lambda_max=cfg.lagrange.lambda_max,
            mode=cfg.lagrange.mode, rectified_slack=cfg.lagrange.rectified_slack,
            all_reduce_mean=all_reduce_mean, num_ranks=world_size,  # DDP: all ranks step on the global J_C
        ) if self.lagrangian else None
        self.external = {role: self._load_external(role) for role in SCORE_ROLES if getattr(cfg, role).path}

    # ----------------------------------------------------------------- roles and optimisers
    @classmethod
    def required_stages(cls, cfg) -> tuple[str, ...]:
        """Score-model stages given by ``algo.<role>.path`` are loaded, not trained."""
        return tuple(stage for stage in cls.requires if stage not in cls.external_stages(cfg))

    @classmethod
    def signal_kinds(cls, cfg) -> tuple[str, ...]:
        return ("reward", "cost")  # R and C of every rollout come from ctx.signals

    @classmethod
    def external_stages(cls, cfg) -> tuple[str, ...]:
        return tuple(role for role in SCORE_ROLES if getattr(getattr(cfg, role, None), "path", None))

    def _load_external(self, role: str):
        from alignbench.models.external import ExternalScoreModel
        from alignbench.models.loading import DTYPES

        source = getattr(self.cfg, role)
        dtype = DTYPES[self.ctx.model_cfg.dtype if source.dtype == "auto" else source.dtype]
        model = ExternalScoreModel(source.path, key=f"algo.{role}.path", template=source.template, dtype=dtype,
                                   max_length=source.max_length, batch_size=source.batch_size, limits=self.ctx.limits)
        return model.to(self.ctx.device)

    def role_specs(self) -> list[RoleSpec]:
        specs = [RoleSpec("policy", "lm", True)]
        external = getattr(self, "external", {})  # models loaded by path are not roles on the base
        specs += [RoleSpec(role, "score", False) for role in SCORE_ROLES if role not in external]
        return specs + [RoleSpec(critic, "score", True) for critic in self.critics]

    def attach(self, roles) -> None:
        super().attach(roles)
        for role, critic in zip(SCORE_ROLES, ("reward_critic", "cost_critic")):
            if role in self.external:
                continue  # an external model's weights do not fit the policy's base: the critic starts fresh
            state = self.stage_outputs.states[role]
            roles.load_role_state_dict(role, state)
            if critic in self.critics:
                roles.load_role_state_dict(critic, state)  # critics start from the score models

    def score(self, role: str, prompts: list[str], texts: list[str]) -> torch.Tensor:
        """R or C of each (prompt, response) by the model itself (evaluation scores; training uses ctx.signals)."""
        if role in self.external:
            return self.external[role].score(prompts, texts).to(self.ctx.device)
        return score_texts(self.ctx, self.roles, role, prompts, texts)

    def external_scorer(self, role: str):
        """The component's own external model for ``role`` (``None``: the trained stage is used)."""
        model = self.external.get(role)
        return None if model is None else (lambda records, texts: model.score([r.prompt for r in records], texts))

    def train_items(self):
        return self.ctx.data.train_prompts

    def optimizer_specs(self) -> dict[str, OptimizerSpec]:
        specs = {"policy": OptimizerSpec(self.roles.parameters_of("policy"), self.cfg.actor_optim, self.num_iterations)}
        for critic in self.critics:
            specs[critic] = OptimizerSpec(self.roles.parameters_of(critic), self.cfg.critic_optim, self.num_iterations)
        return specs

    # ----------------------------------------------------------------- the pieces subclasses change
    def sequence_reward(self, rewards: torch.Tensor, costs: torch.Tensor) -> torch.Tensor:
        """Score fed to the reward stream: R (``ppo``, ``safe_rlhf``; ``reward_shaping``: R - w C)."""
        return rewards

    def cost_stream_score(self, costs: torch.Tensor) -> torch.Tensor:
        """Sequence score fed to the cost stream: C (Safe RLHF; RePO: {C - d}+)."""
        return costs

    def violation_mask(self, costs: torch.Tensor) -> torch.Tensor | None:
        """Which responses carry the cost advantage: all (``None``; RePO's mask form: C > d only)."""
        return None

    # ----------------------------------------------------------------- one iteration
    def training_step(self, batch, host) -> dict[str, float]:
        cfg, ctx, roles = self.cfg, self.ctx, self.roles
        prompts = [record.prompt for record in batch]
        started = time.perf_counter()
        exp = collect(ctx, roles, "policy", prompts, cfg.rollout, generator=self.generator, critics=self.critics)
        generated = time.perf_counter()
        # the training signals (alignbench.signals): the reward and cost models, or the oracle under signals=oracle
        rewards = ctx.signals.reward(batch, exp.texts).to(exp.mask.device)
        costs = ctx.signals.cost(batch, exp.texts).to(exp.mask.device)
        scored = time.perf_counter()

        mask = exp.mask
        kl = kl_penalty(exp.old_logp, exp.ref_logp, cfg.kl_estimator)
        reward_stream = shape_token_rewards(self.sequence_reward(rewards, costs), kl, mask, cfg.kl_coef, +1.0,
                                            cfg.score_clamp)
        reward_adv, reward_returns = gae(reward_stream, exp.values["reward_critic"], mask, cfg.gamma, cfg.gae_lambda)
        returns = {"reward_critic": reward_returns}
        metrics: dict[str, float] = {}
        if self.lagrangian:
            cost_stream = shape_token_rewards(self.cost_stream_score(costs), kl, mask, cfg.kl_coef, -1.0,
                                              cfg.score_clamp)
            cost_adv, cost_returns = gae(cost_stream, exp.values["cost_critic"], mask, cfg.gamma, cfg.gae_lambda)
            returns["cost_critic"] = cost_returns
            dual = self.lagrange.update(costs)  # before the actor step
            lam = dual["lambda"]
            advantages = combine_lagrangian(reward_adv, cost_adv, lam, self.violation_mask(costs))
            if not cfg.normalize_by_lambda:
                advantages = advantages * (1.0 + lam)
            metrics.update({"train/lambda": lam, "train/J_C": dual["J_C"]})
        else:
            advantages = reward_adv
        if cfg.whiten_advantages:
            advantages = masked_whiten(advantages, mask)

        def ptx_in_loss() -> tuple[torch.Tensor, dict[str, float]]:
            ptx = self.ptx_loss()
            return cfg.ptx_coef * ptx, {"ptx_loss": float(ptx.detach())}

        def after_policy_step(rows: list[torch.Tensor]) -> dict[str, float]:
            """safe-rlhf's separate PTX step, then one step of each critic on the same rows."""
            index, stats = rows[0], {}
            if cfg.ptx_coef and cfg.ptx_separate_step:
                ptx = self.ptx_loss()
                stats["losses/policy/ptx_grad_norm"] = host.optimize("policy", cfg.ptx_coef * ptx)["grad_norm"]
                stats["losses/policy/ptx_loss"] = float(ptx.detach())
            part = exp.select(index)
            for critic in self.critics:
                value_loss, value_stats = critic_loss(roles, critic, part, returns[critic][index],
                                                      value_clip=cfg.value_clip)
                host.optimize(critic, value_loss)
                stats.update({f"losses/{critic}/{name}": value for name, value in value_stats.items()})
            return stats

        loss_of = clipped_surrogate(roles, "policy", [(exp, advantages)], cfg,
                                    extra_loss=ptx_in_loss if cfg.ptx_coef and not cfg.ptx_separate_step else None)
        metrics.update(policy_update(host, "policy", [exp.size], loss_of, epochs=cfg.epochs,
                                     minibatches=cfg.minibatches, generator=self.generator,
                                     after_step=after_policy_step))
        trained = time.perf_counter()

        metrics.update(self.rollout_metrics(batch, exp, rewards, costs, kl))
        for critic in self.critics:
            metrics[f"losses/{critic}/explained_variance"] = explained_variance(exp.values[critic], returns[critic],
                                                                                mask)
        generated_tokens = float(mask.sum())
        metrics.update({
            "timing/generation": generated - started, "timing/scoring": scored - generated,
            "timing/train": trained - scored, "perf/gen_tokens": generated_tokens,
            "perf/train_tokens": generated_tokens * cfg.epochs,
            "perf/tokens_per_s": generated_tokens / max(trained - started, 1e-9),
        })
        return metrics

    def rollout_metrics(self, batch, exp, rewards, costs, kl) -> dict[str, float]:
        """Constraint and quality metrics of this rollout batch (per-category violation rates too)."""
        d = self.cfg.lagrange.threshold
        violating = (costs > d).float()
        metrics = {
            "train/reward": float(rewards.mean()), "train/episode_cost": float(costs.mean()),
            "train/violation_rate": float(violating.mean()),
            "train/cost_p95": float(np.quantile(costs.float().cpu().numpy(), 0.95)),
            "train/kl": float(masked_mean(kl, exp.mask)),
            "train/response_length": float(exp.mask.sum(1).float().mean()),
        }
        categories = [record.category for record in batch]
        for category in sorted(set(categories)):
            rows = torch.tensor([c == category for c in categories])
            metrics[f"train/category/{category}/violation_rate"] = float(violating[rows].mean())
        # after the iteration the host measures these answers with the evaluation judge (monitor/true_*):
        # does the reward model's optimum stay safe?
        self.monitored_answers = (list(batch), list(exp.texts))
        return metrics

    def ptx_loss(self) -> torch.Tensor:
        """SFT cross-entropy on a random batch of SFT examples (PTX term)."""
        examples = self.ctx.data.sft_examples
        index = torch.randint(len(examples), (self.cfg.ptx_batch_size,), generator=self.generator).tolist()
        batch = encode_prompt_response(self.ctx.tokenizer, self.ctx.model_cfg, [examples[i]["prompt"] for i in index],
                                       [examples[i]["response"] for i in index], limits=self.ctx.limits)
        batch = {k: v.to(self.ctx.device) for k, v in batch.items()}
        return response_cross_entropy(self.roles, "policy", batch)

    # ----------------------------------------------------------------- state and evaluation
    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"generator": self.generator.get_state()}
        if self.lagrange is not None:
            state["lagrange"] = self.lagrange.state_dict()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"])
        if self.lagrange is not None:
            self.lagrange.load_state_dict(state["lagrange"])

    def eval_scorer(self):
        """Score evaluation samples with the frozen reward and cost models too."""
        def scorer(records, texts):
            prompts = [record.prompt for record in records]
            return (self.score("reward_model", prompts, texts).tolist(),
                    self.score("cost_model", prompts, texts).tolist())
        return scorer


@dataclass
class RewardShapingConfig(PPOConfig):
    """PPO's settings and the fixed penalty weight w of the shaped score R - w C."""

    cost_penalty: float = param(1.0, "w of the shaped reward R - w C (Safe RLHF's reward-shaping baseline; w = 0 "
                                     "is PPO)", at_least(0))


@register_algorithm("reward_shaping")
class RewardShaping(PPO):
    """PPO on R - w C with a fixed penalty w (``algo.cost_penalty``): Safe RLHF's shaping baseline."""

    config_class = RewardShapingConfig

    def sequence_reward(self, rewards: torch.Tensor, costs: torch.Tensor) -> torch.Tensor:
        return rewards - self.cfg.cost_penalty * costs


@register_algorithm("safe_rlhf")
class SafeRLHF(PPO):
    """PPO-Lagrangian with reward and cost critics and an adaptive multiplier (Safe RLHF)."""

    lagrangian = True
