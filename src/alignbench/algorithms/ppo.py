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
   surrogate -mean(min(rho A, clip(rho, 0.8, 1.2) A)); optional PTX: ptx_coeff * SFT cross-entropy, added to
   the loss or (``ptx_separate_step``, as safe-rlhf's scripts do) minimised in an update of its own.
   Critics: 0.5 * max((V - Ret)^2, (clip(V, V_old ± 5) - Ret)^2), each with its own optimiser.

RePO (``alignbench.algorithms.repo``) subclasses ``SafeRLHF`` and changes step 4 and the advantage.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from alignbench.algorithms.base import AlgorithmComponent, OptimizerSpec
from alignbench.algorithms.sft import response_cross_entropy
from alignbench.models.text import encode_prompt_response
from alignbench.config import AlgoConfig, ConfigError, GenerationConfig, OptimConfig
from alignbench.models.roles import RoleSpec
from alignbench.registry import register_algorithm
from alignbench.rl.advantages import combine_lagrangian, gae
from alignbench.rl.experience import actor_loss, collect, critic_loss, mean_of, minibatches, score_texts
from alignbench.rl.lagrange import LagrangeMultiplier
from alignbench.rl.losses import explained_variance, kl_penalty, masked_mean, masked_whiten
from alignbench.rl.shaping import shape_token_rewards
from alignbench.utils.distributed import all_reduce_mean, world_size


@dataclass
class LagrangeConfig:
    """Dual variable settings (Safe RLHF defaults: init 1, lr 0.1, max 5, window 128, d = 0)."""

    init: float = 1.0
    lr: float = 0.1
    lambda_max: float = 5.0
    threshold: float = 0.0
    window: int = 128
    delay: int = 0
    mode: str = "average"  # average (Safe RLHF) | rectified (RePO)
    rectified_slack: float = 0.0


@dataclass
class ScoreModelSource:
    """Where a frozen reward/cost model comes from: the trained stage (``path: null``) or a model id/folder.

    ``path`` takes Safe RLHF's published models (``PKU-Alignment/beaver-7b-v1.0-reward`` / ``-cost``,
    safe-rlhf ``*ForScore`` checkpoints) or any one-label ``*ForSequenceClassification`` reward model;
    the stage is then not trained, the model is scored with its own tokenizer and ``template``
    (``null``: the beaver conversation template for safe-rlhf checkpoints), and the critic that would
    start from it starts from a fresh head on the policy's base instead. See ``models/external.py``.
    """

    path: str | None = None
    template: str | None = None
    dtype: str = "auto"  # auto = the model's dtype (model.dtype) | float32 | bfloat16 | float16
    batch_size: int = 16
    max_length: int = 1024


@dataclass
class PPOConfig(AlgoConfig):
    name: str = "ppo"
    steps: int = 60
    batch_size: int = 32
    rollout: GenerationConfig = field(default_factory=GenerationConfig)
    actor_optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=1e-5, weight_decay=0.01,
                                                                         scheduler="cosine", warmup_ratio=0.03))
    critic_optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=5e-6))
    kl_beta: float = 0.02
    kl_estimator: str = "k1"
    clip_eps: float = 0.2
    value_clip: float = 5.0
    gamma: float = 1.0
    gae_lambda: float = 0.95
    epochs: int = 1
    minibatches: int = 1
    whiten_advantages: bool = False
    score_clamp: float = 50.0
    cost_penalty: float = 0.0  # w of reward_shaping: R - w C
    lagrange: LagrangeConfig = field(default_factory=LagrangeConfig)
    #: RePO's rectified penalty {C - d}+ in the cost stream: none (Safe RLHF: the cost stream carries C) |
    #: critic (the cost stream and its critic carry {C - d}+, the gradient of E[R - lambda {C - d}+]) |
    #: mask (the cost stream carries C and only responses with C > d keep the cost advantage)
    rectification: str = "none"
    normalize_by_lambda: bool = True  # divide the combined advantage by (1 + lambda)
    ptx_coeff: float = 0.0
    #: PTX as its own actor update after each RL update (safe-rlhf's ``ptx_step``) instead of a term of the
    #: RL loss; either way the policy minimises ptx_coeff * SFT cross-entropy on the SFT examples
    ptx_separate_step: bool = False
    ptx_batch_size: int = 8
    entropy_coef: float = 0.0
    reward_model: ScoreModelSource = field(default_factory=ScoreModelSource)
    cost_model: ScoreModelSource = field(default_factory=ScoreModelSource)

    def check(self) -> None:
        super().check()
        for role in SCORE_ROLES:
            source = getattr(self, role)
            if source.dtype not in ("auto", "float32", "bfloat16", "float16"):
                raise ConfigError(f"config value 'algo.{role}.dtype' must be auto, float32, bfloat16 or float16")
            if source.batch_size < 1 or source.max_length < 8:
                raise ConfigError(f"config values 'algo.{role}.batch_size' (>= 1) and 'max_length' (>= 8) are out of range")
        for key, value in (("kl_beta", self.kl_beta), ("clip_eps", self.clip_eps), ("value_clip", self.value_clip),
                           ("ptx_coeff", self.ptx_coeff), ("cost_penalty", self.cost_penalty)):
            if value < 0:
                raise ConfigError(f"config value 'algo.{key}' must be >= 0 (got {value})")
        if self.epochs < 1 or self.minibatches < 1:
            raise ConfigError("config values 'algo.epochs' and 'algo.minibatches' must be >= 1")
        if self.kl_estimator not in ("k1", "k2", "k3", "abs"):
            raise ConfigError(f"config value 'algo.kl_estimator' must be k1, k2, k3 or abs (got {self.kl_estimator!r})")
        if self.rectification not in ("none", "critic", "mask"):
            raise ConfigError(f"config value 'algo.rectification' must be none, critic or mask (got {self.rectification!r})")
        if self.lagrange.mode not in ("average", "rectified"):
            raise ConfigError(f"config value 'algo.lagrange.mode' must be average or rectified")
        if self.lagrange.init <= 0 or self.lagrange.lr < 0 or self.lagrange.window < 1:
            raise ConfigError("config values 'algo.lagrange.init' (> 0), 'lr' (>= 0), 'window' (>= 1) are out of range")


SCORE_ROLES = ("reward_model", "cost_model")


@register_algorithm("ppo")
class PPO(AlgorithmComponent):
    """PPO on the reward model only (lambda = 0): the baseline that should get *less* safe."""

    config_class = PPOConfig
    requires = ("sft", "reward_model", "cost_model")  # the cost model only scores, for the metrics
    lagrangian = False

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
        """Score fed to the reward stream: R (``ppo``, ``safe_rlhf``) or R - w C (``reward_shaping``)."""
        return rewards - self.cfg.cost_penalty * costs

    def cost_stream_score(self, costs: torch.Tensor) -> torch.Tensor:
        """Sequence score fed to the cost stream: C (Safe RLHF), or {C - d}+ (RePO, ``rectification=critic``)."""
        if self.cfg.rectification == "critic":
            return (costs - self.cfg.lagrange.threshold).clamp(min=0.0)
        return costs

    def violation_mask(self, costs: torch.Tensor) -> torch.Tensor | None:
        """Which responses carry the cost advantage: all, or C > d only (RePO, ``rectification=mask``)."""
        if self.cfg.rectification == "mask":
            return (costs > self.cfg.lagrange.threshold).float()
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
        reward_stream = shape_token_rewards(self.sequence_reward(rewards, costs), kl, mask, cfg.kl_beta, +1.0,
                                            cfg.score_clamp)
        reward_adv, reward_returns = gae(reward_stream, exp.values["reward_critic"], mask, cfg.gamma, cfg.gae_lambda)
        returns = {"reward_critic": reward_returns}
        metrics: dict[str, float] = {}
        if self.lagrangian:
            cost_stream = shape_token_rewards(self.cost_stream_score(costs), kl, mask, cfg.kl_beta, -1.0,
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

        updates = []
        for _ in range(cfg.epochs):
            for index in minibatches(exp.size, cfg.minibatches, self.generator):
                part = exp.select(index)
                loss, stats = actor_loss(roles, "policy", part, advantages[index], clip_eps=cfg.clip_eps,
                                         entropy_coef=cfg.entropy_coef)
                if cfg.ptx_coeff and not cfg.ptx_separate_step:
                    ptx = self.ptx_loss()
                    loss = loss + cfg.ptx_coeff * ptx
                    stats["losses/ptx_loss"] = float(ptx.detach())
                stats.update({f"losses/actor_grad_norm": host.optimize("policy", loss)["grad_norm"]})
                if cfg.ptx_coeff and cfg.ptx_separate_step:  # safe-rlhf's ptx_step: an update of its own
                    ptx = self.ptx_loss()
                    stats["losses/ptx_grad_norm"] = host.optimize("policy", cfg.ptx_coeff * ptx)["grad_norm"]
                    stats["losses/ptx_loss"] = float(ptx.detach())
                for critic in self.critics:
                    value_loss, value_stats = critic_loss(roles, critic, part, returns[critic][index],
                                                          value_clip=cfg.value_clip)
                    host.optimize(critic, value_loss)
                    stats.update(value_stats)
                updates.append(stats)
        trained = time.perf_counter()

        metrics.update(mean_of(updates))
        metrics.update(self.rollout_metrics(batch, exp, rewards, costs, kl))
        metrics["losses/explained_variance"] = explained_variance(exp.values["reward_critic"], reward_returns, mask)
        if self.lagrangian:
            metrics["losses/cost_explained_variance"] = explained_variance(exp.values["cost_critic"],
                                                                           returns["cost_critic"], mask)
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
        logits = self.roles.lm_logits("policy", batch["input_ids"], batch["attention_mask"])
        return response_cross_entropy(logits, batch["input_ids"], batch["response_mask"])

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


@register_algorithm("reward_shaping")
class RewardShaping(PPO):
    """PPO on R - w C with a fixed penalty w (``algo.cost_penalty``): Safe RLHF's shaping baseline."""


@register_algorithm("safe_rlhf")
class SafeRLHF(PPO):
    """PPO-Lagrangian with reward and cost critics and an adaptive multiplier (Safe RLHF)."""

    lagrangian = True

    def sequence_reward(self, rewards: torch.Tensor, costs: torch.Tensor) -> torch.Tensor:
        return rewards
