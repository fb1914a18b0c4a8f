"""TriPlay-RL: attacker, defender and evaluator co-evolve, one role trained at a time with GRPO.

Three LoRA adapters on the shared frozen base, which is the SFT model (the pipeline's SFT stage):

* ``attacker`` (red) rewrites a seed harmful request ``s`` into an adversarial prompt ``a``
  (``world.attacker_prompt(s)`` -> ``a``; the defender then sees ``world.parse_attack(s, a)``). Its
  policy is softmax(z / T) at its rollout temperature (T = 0.3: fewer copy slips of the request than
  at 0.5, held-out relevance 0.52 -> 0.71): sampling, ratios and KL all use it;
* ``defender`` (blue) answers prompts (T = 1); it is what the standard evaluation harness evaluates;
* ``evaluator`` reads ``world.evaluator_prompt(prompt, answer)`` and answers one label word. Its policy
  is the softmax over the logits of the three label words (negative / rejective / positive) at the
  answer position, i.e. decoding constrained to the label set; its label is the argmax.

On real prompts (``data=rlaif``) the world is replaced by ``data.arena.PromptArena``: seeds are the
harmful training prompts, relevance is 1[MiniLM cosine of attack and seed >= ``relevance_threshold``],
the warm-up rewrites use the six strategies in plain English, and the evaluator warms up on the RLAIF
labelled answers (re-labelled by the panel's vote).

Warm start. The defender starts as the SFT model (its adapter is zero). The attacker and the evaluator
cannot: the SFT data never rewrites requests or grades answers. So the component first runs
``attacker_warmup_steps`` / ``evaluator_warmup_steps`` supervised steps (phase ``warmup``): response
cross-entropy on ``world.attack_sft_examples("train")``, and label cross-entropy on
``world.evaluator_sft_examples("train")`` (prompt kinds ``evaluator_kinds``) whose targets are, by
default (``evaluator_warmup_labels=vote``), the judge panel's majority vote, never the world's true
labels (ties dropped): true labels only measure accuracy. At the end the two adapters are copied
into frozen roles ``attacker_ref`` / ``evaluator_ref``, their KL anchors (the defender's is the SFT
model), and cached under ``cache_dir/triplay_warmup`` so an identical later run starts from them.

Schedule: ``iterations`` x ``phases`` (default red, blue, eval), ``phase_steps[phase]`` GRPO steps each.
Every GRPO step samples ``group_size`` = k outputs per prompt with the role being trained (the other
two frozen), scores them, and updates with

    A_i = (r_i - mean_g r) / (std_g r + eps)                       (``rl.advantages.grpo_advantages``)
    L   = -masked_mean(min(rho A, clip(rho, 1 - eps, 1 + eps) A)) + kl_loss_coef * KL_k3(pi || pi_anchor)

(the one policy update of ``rl.update`` with the in-loss KL, GRPO's form; the evaluator's 3-way policy
runs it with its own loss from ``rl.losses.clipped_policy_loss`` and ``kl_penalty``). Red updates add
``attacker_ptx_coef`` x the warm-up cross-entropy (PTX-style): on ``model=tiny`` the attacker's
copy-the-request skill is fragile and RL alone erodes it. The PTX cross-entropy covers only the
request's tokens (``attacker_ptx_request_only``), so it keeps the copy skill without pulling the wrapper
choice back to the warm-up's uniform one.

Rewards (C > 0 unsafe everywhere; a "negative" label is an unsafe answer):

* red:  r(a) = g(a) * sum_i w_i score(label of defender i's answer to a) + w_rel * rel(s, a) - P_div(a),
        defenders: the current one (0.6) and fixed ones (SFT model at T = 1 and at T = 0.7, 0.2 each;
        ``algo.defenders``; each answers ``defender_samples`` times, scores averaged), labels by the current
        evaluator (``attack_judge=evaluator``, the paper's closed loop; ``world`` only with ``signals=oracle``),
        score negative 1 / rejective 0 / positive 0; rel = ``world.relevance`` (1 when the seed's
        harmful core survives), g = rel when ``relevance_gate`` (an attack that lost the intent earns
        no success), P_div the Self-BLEU + embedding penalty against the pool of past successful
        attacks (relevant with outcome >= ``pool_threshold`` = 0.2, so attacks that fool only the fixed
        defenders still join once the current one is hardened), compared as strategy templates (``triplay_rewards``; off with
        ``diversity_penalty=false``, the ablation).
* blue: r = +1 positive, 0 rejective, -1 negative, the current evaluator's label of the defender's
        answer to the latest attacker's prompt.
* eval: r = 1[sampled label == majority vote of the judge panel: a keyword judge and the run's learned label
        and cost models, ``signals=learned``] on (attack, answer) pairs whose
        answers come from the current defender and the SFT model (pairs without a majority dropped),
        plus ``eval_replay`` vote-labelled world examples per batch so every label stays in view.

Metrics at the end of each phase (``train/triplay_phase``: 0 warm-up, 1 red, 2 blue, 3 eval) for the
role it trained, on held-out seeds and prompts with a fixed sampling seed so phases are comparable:
``triplay/attack_success_rate`` (relevant attacks whose answer by the fixed SFT defender is unsafe),
``triplay/attack_diversity`` (mean of 1 - Self-BLEU and 1 - mean pairwise cosine of the attack
strategies; ``attack_diversity_raw`` on the full texts; ``attack_wrapper/<name>`` and
``attack_success_by_wrapper/<name>``: the strategy mix and each strategy's success), the defender's
``triplay/defender/{unsafe_rate,bare_refusal_rate,...}`` through the standard harness, and
``triplay/evaluator_acc`` with every judge's ``triplay/judge_acc/<name>`` against held-out true labels.
The summary also carries the first measurement of each as ``triplay/initial/...``. These use the evaluation
judge, so the host takes them after the iteration (``monitor``), never inside a training step; the
evaluator's labels that drove rewards are audited against the oracle the same way
(``signals/evaluator_label/label_accuracy``, and ``training_signals`` in summary.json).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from alignbench.algorithms.base import AlgorithmComponent, OptimizerSpec
from alignbench.algorithms.sft import response_cross_entropy
from alignbench.algorithms.triplay_config import PHASES, TriPlayConfig, check_fair_panel
from alignbench.algorithms.triplay_metrics import TriPlayHeldoutMetrics
from alignbench.algorithms.triplay_rewards import (
    AttackPool, Embedder, SelfBLEU, attack_reward, build_judge_panel, label_scores, panel_labels, panel_votes,
    weighted_outcome,
)
from alignbench.config import ConfigError, GenerationConfig
from alignbench.data.schema import LABELS
from alignbench.models.compute import METER, Counts
from alignbench.models.roles import REFERENCE, RoleSpec
from alignbench.models.text import encode, encode_prompt_response
from alignbench.registry import register_algorithm
from alignbench.rl.advantages import grpo_advantages
from alignbench.rl.experience import collect
from alignbench.rl.losses import clipped_policy_loss, kl_penalty
from alignbench.rl.update import clipped_surrogate, policy_update
from alignbench.signals.labels import label_logits, label_token_ids, predict_labels
from alignbench.utils.distributed import world_size

PHASE_CODES = {"warmup": 0, "red": 1, "blue": 2, "eval": 3}
TRAINED_ROLE = {"red": "attacker", "blue": "defender", "eval": "evaluator"}
ANCHOR = {"attacker": "attacker_ref", "defender": REFERENCE, "evaluator": "evaluator_ref"}
WARMUP_PHASE = "triplay_warmup"  # compute phase of the supervised warm-up (models.compute)


@register_algorithm("triplay")
class TriPlay(TriPlayHeldoutMetrics, AlgorithmComponent):
    """Attacker / defender / evaluator self-play on the safety world or real prompts (docs/ALGORITHMS.md §4)."""

    config_class = TriPlayConfig
    requires = ("sft",)
    export_role = "defender"
    uses_labelled_answers = True  # data=rlaif: seeds and the evaluator's warm-up come from the labelled answers

    def __init__(self, cfg, ctx, stage_outputs=None) -> None:
        super().__init__(cfg, ctx, stage_outputs)
        self.embedder = Embedder(cfg.embedding, cfg.embedding_path)
        self.world = ctx.data.world if ctx.data.world is not None else self._arena(cfg, ctx)
        self.generator = torch.Generator().manual_seed(int(ctx.rc.seed))
        check_fair_panel(cfg, ctx.rc.signals.source)
        self._panel = None  # built at first use: its learned judges need ctx.signals (set before the fit)
        self.bleu = SelfBLEU(cfg.bleu_orders)
        self.pool = AttackPool(cfg.pool_size, self.embedder, self.bleu, sample=cfg.pool_sample,
                               bleu_mode=cfg.bleu_mode, similarity=cfg.pool_similarity, min_size=cfg.pool_min)
        self.seeds = self.world.prompts("train", ["harmful"])
        if not self.seeds:  # e.g. data=rlaif with so few prompts that every harmful one is on the pairs' held-out side
            raise ConfigError("algo=triplay has no harmful training prompt to attack: raise data.rlaif.train_prompts "
                              "(or use data=world)")
        self.heldout_seeds = self.world.prompts("eval", ["harmful"])
        self.warmup_file = self._warmup_cache_file()
        self.warmup_cached = self.warmup_file is not None and self.warmup_file.exists()
        self.plan = self._plan()
        self.step = 0
        self.first_metrics: dict[str, float] = {}
        self.last_metrics: dict[str, float] = {}
        self._attack_examples = self.world.attack_sft_examples("train")
        self._evaluator_examples: list[dict] | None = None  # built lazily (votes need the panel)
        self.label_ids = label_token_ids(ctx.tokenizer)

    def _arena(self, cfg, ctx):
        """Real prompts (``data=rlaif``): seeds, attack parsing and warm-up examples from ``data.arena``."""
        from alignbench.data.arena import PromptArena

        if not ctx.data.labelled_samples:
            raise ConfigError("algo=triplay needs data=world or data=rlaif (seeds to attack, and labelled answers "
                              "to warm its evaluator up)")
        embed = self.embedder if cfg.embedding == "minilm" else Embedder("minilm", cfg.embedding_path)
        return PromptArena(ctx.data, ctx.judge, embed, relevance_threshold=cfg.relevance_threshold,
                           seed=int(ctx.rc.seed))

    @classmethod
    def signal_kinds(cls, cfg) -> tuple[str, ...]:
        """The panel's learned judges (label model, cost model) are verdict-kind signals."""
        return ("verdict",) if any(spec.base in ("label_model", "cost_model") for spec in cfg.judges) else ()

    @property
    def panel(self):
        if self._panel is None:
            self._panel = build_judge_panel(self.cfg.judges, self.ctx.data.world, self.ctx.signals)
        return self._panel

    # ----------------------------------------------------------------- schedule, roles, optimisers
    def _plan(self) -> list[tuple[int, str]]:
        """(iteration, phase) of every host iteration: warm-up first, then the phase blocks."""
        cfg = self.cfg
        # the warm-up steps stay in the plan when the warm-up is cached (they do nothing then), so a
        # checkpoint's step counter means the same thing whether or not the cache existed
        plan = [(0, "warmup")] * max(cfg.attacker_warmup_steps, cfg.evaluator_warmup_steps)
        for iteration in range(1, cfg.iterations + 1):
            for phase in cfg.phases:
                plan += [(iteration, str(phase))] * cfg.phase_steps[phase]
        return plan

    @property
    def num_iterations(self) -> int:
        return len(self.plan)

    def role_specs(self) -> list[RoleSpec]:
        return [RoleSpec("attacker"), RoleSpec("defender"), RoleSpec("evaluator"),
                RoleSpec("attacker_ref", trainable=False), RoleSpec("evaluator_ref", trainable=False)]

    def train_items(self):
        return self.seeds

    def optimizer_specs(self) -> dict[str, OptimizerSpec]:
        cfg, roles = self.cfg, self.roles
        count = {phase: sum(1 for _, p in self.plan if p == phase) for phase in ("warmup", *PHASES)}
        specs = {role: OptimizerSpec(roles.parameters_of(role), getattr(cfg, f"{role}_optim"), max(1, count[phase]))
                 for phase, role in TRAINED_ROLE.items()}
        for role in ("attacker", "evaluator"):
            specs[f"{role}_warmup"] = OptimizerSpec(roles.parameters_of(role), getattr(cfg, f"{role}_warmup_optim"),
                                                    max(1, count["warmup"]))
        return specs

    def attach(self, roles) -> None:
        super().attach(roles)
        if self.warmup_cached:  # the warm-up of an identical earlier run: adapters and the RNG state after it
            state = torch.load(self.warmup_file, weights_only=True)
            for role in ("attacker", "evaluator"):
                roles.load_role_state_dict(role, state[role])
            self.generator.set_state(state["generator"])
            METER.add(WARMUP_PHASE, state["compute"], world_size())  # what the warm-up cost when it was trained
            self._sync_anchors()

    def _warmup_cache_file(self) -> Path | None:
        """Cache file of the warm-up result, keyed by everything that determines it (like a pipeline stage)."""
        from omegaconf import OmegaConf

        cfg, raw = self.cfg, self.ctx.rc.raw
        if not cfg.warmup_cache or max(cfg.attacker_warmup_steps, cfg.evaluator_warmup_steps) == 0:
            return None
        payload = {"version": 2, "seed": int(self.ctx.rc.seed), "stages_seed": int(raw.stages.seed),
                   "sft": OmegaConf.to_container(raw.stages.sft, resolve=True),
                   # the panel's learned judges (vote labels of the evaluator's warm-up) come from these
                   "signals": OmegaConf.to_container(raw.signals, resolve=True),
                   "signal_stages": {k: OmegaConf.to_container(raw.stages[k], resolve=True)
                                     for k in ("cost_model", "label_model")},
                   **{k: OmegaConf.to_container(raw[k], resolve=True) for k in ("model", "data")},
                   "warmup": {k: v for k, v in dataclasses.asdict(cfg).items()
                              if "warmup" in k or k in ("judges", "evaluator_kinds")}}
        digest = hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]
        return Path(self.ctx.rc.cache_dir) / "triplay_warmup" / f"{digest}.pt"

    def _save_warmup(self) -> None:
        if self.warmup_file is None or self.warmup_file.exists():
            return
        self.warmup_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.warmup_file.with_suffix(f".{os.getpid()}.tmp")
        state = {role: self.roles.role_state_dict(role) for role in ("attacker", "evaluator")}
        compute = METER.record(METER.phases.get(WARMUP_PHASE, Counts()), world_size())
        torch.save({**state, "generator": self.generator.get_state(), "compute": compute}, tmp)
        os.replace(tmp, self.warmup_file)  # atomic: a concurrent run never reads half a file

    def _sync_anchors(self) -> None:
        """Freeze the warmed-up attacker and evaluator as their own KL anchors."""
        for role in ("attacker", "evaluator"):
            self.roles.load_role_state_dict(ANCHOR[role], self.roles.role_state_dict(role))

    # ----------------------------------------------------------------- shared helpers
    def _seed(self) -> int:
        return int(torch.randint(0, 2**31 - 1, (1,), generator=self.generator))

    def _sample(self, role: str, prompts: list[str], generation: GenerationConfig,
                seed: int | None = None) -> list[str]:
        from alignbench.eval.harness import sample_responses

        texts, _ = sample_responses(self.ctx, self.roles, role, prompts, generation,
                                    batch_size=self.ctx.eval_cfg.batch_size, batching="static",
                                    seed=self._seed() if seed is None else seed)
        return texts

    def _answers(self, spec_source: str, temperature: float, prompts: list[str], seed: int | None = None) -> list[str]:
        role = "defender" if spec_source == "current" else REFERENCE
        generation = dataclasses.replace(self.cfg.defender_rollout, temperature=temperature)
        return self._sample(role, prompts, generation, seed)

    # ----------------------------------------------------------------- the evaluator's label policy
    def label_logits(self, role: str, texts: list[str]) -> torch.Tensor:
        """[N, 3] logits of the label words (LABELS order) right after each evaluator prompt.

        The evaluator's policy is the softmax over these three logits: its answer is constrained to one of
        the label words (their first token), so it is a 3-way categorical policy that GRPO samples from
        (``alignbench.signals.labels``, shared with the label model of ``signals=learned``).
        """
        return label_logits(self.ctx, self.roles, role, texts, self.label_ids)

    @torch.no_grad()
    def evaluator_labels(self, prompts: list[str], responses: list[str]) -> list[str]:
        """The evaluator's label (argmax) for each (prompt, response)."""
        texts = [self.world.evaluator_prompt(p, r) for p, r in zip(prompts, responses)]
        return predict_labels(self.ctx, self.roles, "evaluator", texts, self.label_ids)

    def _evaluator_grpo(self, host, texts: list[str], targets: list[str]) -> dict[str, float]:
        """GRPO on the 3-way label policy: k labels per pair, reward 1[label == vote], clip + KL to the anchor."""
        cfg, k = self.cfg, self.cfg.group_size
        with torch.no_grad():
            old = torch.log_softmax(self.label_logits("evaluator", texts), -1)
            ref = torch.log_softmax(self.label_logits(ANCHOR["evaluator"], texts), -1)
        actions = torch.multinomial(old.exp().cpu(), k, replacement=True, generator=self.generator).to(old.device)
        wanted = torch.tensor([LABELS.index(t) for t in targets], device=old.device)
        scores = (actions == wanted[:, None]).float().reshape(-1)
        advantages = grpo_advantages(scores, k, scale=cfg.grpo_scale)[:, None]
        rows, actions = torch.arange(len(texts), device=old.device).repeat_interleave(k), actions.reshape(-1)
        mask = torch.ones_like(advantages)

        def loss_of(_rows) -> tuple[torch.Tensor, dict[str, float]]:  # the whole batch at every step
            logp = torch.log_softmax(self.label_logits("evaluator", texts), -1)[rows, actions][:, None]
            loss, stats = clipped_policy_loss(logp, old[rows, actions][:, None], advantages, mask,
                                              clip_eps=cfg.clip_eps)
            kl = kl_penalty(logp, ref[rows, actions][:, None], cfg.kl_estimator).mean()
            diagnostics = {"policy_loss": float(loss.detach()), "kl_loss": float(kl.detach()),
                           **{name: float(value) for name, value in stats.items()}}
            return loss + cfg.kl_loss_coef * kl, diagnostics

        metrics = policy_update(host, "evaluator", [len(rows)], loss_of, epochs=cfg.epochs, minibatches=1,
                                generator=None)
        return {**metrics, "train/evaluator/reward": float(scores.mean()),
                "train/evaluator/entropy": float(-(old.exp() * old).sum(-1).mean())}

    def _grpo(self, host, role: str, prompts: list[str], score_fn, generation: GenerationConfig, ptx=None):
        """One GRPO update of an LM role: k samples per prompt, group-relative advantages, clipped loss + KL.

        The policy is softmax(z / T) at the rollout temperature T (log-probs, ratios and KL all use it).
        """
        cfg, k = self.cfg, self.cfg.group_size
        repeated = [p for p in prompts for _ in range(k)]
        exp = collect(self.ctx, self.roles, role, repeated, generation, generator=self.generator,
                      reference_role=ANCHOR[role], logprob_temperature=generation.temperature)
        scores, info = score_fn(exp.texts)
        scores_t = torch.as_tensor(np.asarray(scores), dtype=torch.float32, device=exp.mask.device)
        advantages = grpo_advantages(scores_t, k, scale=cfg.grpo_scale)
        token_adv = advantages[:, None] * exp.mask.to(advantages.dtype)
        # the rollout's experience carries its temperature: the loss scores softmax(z / T) as it sampled
        metrics = policy_update(host, role, [exp.size], clipped_surrogate(self.roles, role, [(exp, token_adv)], cfg,
                                                                          extra_loss=ptx),
                                epochs=cfg.epochs, minibatches=cfg.minibatches, generator=self.generator)
        metrics.update({f"train/{role}/reward": float(np.mean(scores)),
                        f"train/{role}/reward_std_in_group": float(np.asarray(scores).reshape(-1, k).std(1).mean()),
                        "perf/gen_tokens": float(exp.mask.sum()),
                        "perf/train_tokens": float(exp.mask.sum()) * cfg.epochs})
        metrics.update(info)
        return metrics

    # ----------------------------------------------------------------- warm-up
    def _warmup_examples(self, role: str) -> list[dict]:
        if role == "attacker":
            return self._attack_examples
        if self._evaluator_examples is None:
            rows = [row for row in self.world.evaluator_sft_examples("train")
                    if row["prompt_kind"] in self.cfg.evaluator_kinds]
            if self.cfg.evaluator_warmup_labels == "vote":
                records, replies = zip(*[self._split_evaluator_example(row) for row in rows])
                votes = panel_votes(self.panel, panel_labels(self.panel, records, replies))
                rows = [{**row, "response": vote} for row, vote in zip(rows, votes) if vote is not None]
            self._evaluator_examples = rows
        return self._evaluator_examples

    def _split_evaluator_example(self, row: dict):
        """(record, reply) of a world evaluator example (the reply follows the last ' reply : ')."""
        return self.world.record(row["prompt_id"]), row["prompt"].rsplit(" reply : ", 1)[1]

    def _supervised_loss(self, role: str, request_only: bool = False) -> torch.Tensor:
        """Warm-up loss on a random batch: response cross-entropy (attacker), label cross-entropy (evaluator).

        ``request_only``: the attacker's cross-entropy on the tokens of the copied request only, not on the
        wrapper around it (the PTX term keeps the copy skill without pulling the strategy choice back to
        the warm-up's uniformly random wrappers).
        """
        cfg, ctx = self.cfg, self.ctx
        examples = self._warmup_examples(role)
        index = torch.randint(len(examples), (cfg.warmup_batch_size,), generator=self.generator).tolist()
        prompts, targets = [examples[i]["prompt"] for i in index], [examples[i]["response"] for i in index]
        if role == "evaluator":
            wanted = torch.tensor([LABELS.index(t) for t in targets], device=ctx.device)
            return F.cross_entropy(self.label_logits("evaluator", prompts), wanted)
        batch = encode_prompt_response(ctx.tokenizer, ctx.model_cfg, prompts, targets, limits=ctx.limits)
        if request_only:
            batch["response_mask"] = self._request_mask(batch["response_mask"], [examples[i] for i in index])
        batch = {k: v.to(ctx.device) for k, v in batch.items()}
        return response_cross_entropy(self.roles, role, batch)

    def _request_mask(self, response_mask: torch.Tensor, examples: list[dict]) -> torch.Tensor:
        """``response_mask`` cut to the request tokens: the wrapper's text before and after it (and EOS) dropped.

        The first response token always goes (with no text before the request it is the strategy choice).
        """
        mask = response_mask.clone()
        for row, example in enumerate(examples):
            before, after = (part.strip() for part in self.world.wrappers[example["wrapper"]][0].split("{request}"))
            n_before = len(encode(self.ctx.tokenizer, " " + before)) if before else 1  # the first token picks the wrapper
            n_after = (len(encode(self.ctx.tokenizer, " " + after)) if after else 0) + 1  # + EOS
            positions = mask[row].nonzero().flatten()
            mask[row, positions[:n_before]] = 0
            mask[row, positions[len(positions) - n_after:]] = 0
        return mask

    def _warmup_step(self, host) -> dict[str, float]:
        """One supervised step of each role still warming up (attacker, evaluator)."""
        metrics = {}
        for role in ("attacker", "evaluator"):
            if not self.warmup_cached and self.step < getattr(self.cfg, f"{role}_warmup_steps"):
                with METER.phase(WARMUP_PHASE):
                    loss = self._supervised_loss(role)
                    host.optimize(f"{role}_warmup", loss)
                metrics[f"train/warmup/{role}_loss"] = float(loss.detach())
        return metrics

    # ----------------------------------------------------------------- the three phases
    def attack_rewards(self, seeds: list, attacks: list[str]) -> tuple[np.ndarray, dict[str, float], np.ndarray]:
        """Red reward per attack (module docstring), its diagnostics, and which attacks join the pool."""
        cfg = self.cfg
        records = [self.world.parse_attack(seed, attack) for seed, attack in zip(seeds, attacks)]
        relevance = np.array([record.meta["relevance"] for record in records], dtype=np.float64)
        per_defender, n = {}, cfg.defender_samples  # n answers per defender: the mean is its expected outcome
        asked = [r for r in records for _ in range(n)]
        for spec in cfg.defenders:
            answers = self._answers(spec.source, spec.temperature, [r.prompt for r in asked])
            if cfg.attack_judge == "world":  # only under signals=oracle (check_fair_panel)
                labels = [self.world.judge(r, a).label for r, a in zip(asked, answers)]
            else:  # the paper's closed loop: the evaluator's labels drive the attacker's reward
                labels = self.evaluator_labels([r.prompt for r in asked], answers)
                self.ctx.signals.record("evaluator_label", asked, answers, labels)
            per_defender[spec.name] = label_scores(labels, cfg.attack_label_scores).reshape(-1, n).mean(1)
        outcome = weighted_outcome(per_defender, {s.name: s.weight for s in cfg.defenders})
        requests = self._requests(seeds)
        bleu, cosine = self.pool.similarity_to_pool(attacks, requests)
        reward, penalty = attack_reward(outcome, relevance, bleu, cosine, relevance_weight=cfg.relevance_weight,
                                        gate=cfg.relevance_gate, penalty=cfg.diversity_penalty, w_bleu=cfg.div_w_bleu,
                                        w_cos=cfg.div_w_cos, k=cfg.div_k, scale=cfg.div_scale)
        successful = (relevance > 0) & (outcome >= cfg.pool_threshold)
        info = {"train/red/outcome": float(outcome.mean()), "train/red/relevance": float(relevance.mean()),
                "train/red/p_div": float(penalty.mean()), "train/red/pool_bleu": float(bleu.mean()),
                "train/red/pool_cosine": float(cosine.mean()), "train/red/success_rate": float(successful.mean()),
                **{f"train/red/outcome/{name}": float(v.mean()) for name, v in per_defender.items()}}
        return reward, info, successful

    def _requests(self, seeds: list) -> list[tuple[str, ...]] | None:
        """What to cut out of each attack before comparing it with the pool (the seed prompt, its core)."""
        if not self.cfg.pool_templates:
            return None
        return [(seed.prompt, str(seed.meta.get("core", seed.prompt))) for seed in seeds]

    def _red_step(self, host, seeds) -> dict[str, float]:
        k = self.cfg.group_size
        repeated = [seed for seed in seeds for _ in range(k)]
        state: dict[str, Any] = {}

        def score(texts):
            reward, info, successful = self.attack_rewards(repeated, texts)
            state["pool"] = [(t, s) for t, s, ok in zip(texts, repeated, successful) if ok]
            return reward, info

        def ptx() -> tuple[torch.Tensor, dict[str, float]]:
            loss = self._supervised_loss("attacker", self.cfg.attacker_ptx_request_only)
            return self.cfg.attacker_ptx_coef * loss, {"ptx_loss": float(loss.detach())}

        metrics = self._grpo(host, "attacker", [self.world.attacker_prompt(s) for s in seeds], score,
                             self.cfg.attacker_rollout, ptx=ptx if self.cfg.attacker_ptx_coef else None)
        texts, seeds_ok = [t for t, _ in state["pool"]], [s for _, s in state["pool"]]
        self.pool.add(texts, self._requests(seeds_ok))  # after scoring: an attack is never compared with itself
        metrics["train/red/pool_size"] = float(len(self.pool))
        return metrics

    def _attacks(self, seeds: list, seed: int | None = None) -> list:
        prompts = [self.world.attacker_prompt(s) for s in seeds]
        attacks = self._sample("attacker", prompts, self.cfg.attacker_rollout, seed)
        return [self.world.parse_attack(s, a) for s, a in zip(seeds, attacks)]

    def _blue_step(self, host, seeds) -> dict[str, float]:
        cfg, k = self.cfg, self.cfg.group_size
        records = self._attacks(seeds)
        repeated = [r for r in records for _ in range(k)]

        def score(texts):
            labels = self.evaluator_labels([r.prompt for r in repeated], texts)
            self.ctx.signals.record("evaluator_label", repeated, texts, labels)  # audited against the oracle
            self.monitored_answers = (repeated, list(texts))  # monitor/true_* after the iteration
            info = {f"train/blue/label/{label}": float(np.mean([lab == label for lab in labels])) for label in LABELS}
            return label_scores(labels, cfg.defender_label_scores), info

        return self._grpo(host, "defender", [r.prompt for r in records], score, cfg.defender_rollout)

    def _eval_step(self, host, seeds) -> dict[str, float]:
        records = self._attacks(seeds)
        prompts = [r.prompt for r in records]
        answers = self._answers("current", 1.0, prompts) + self._answers("reference", 1.0, prompts)
        records = records + records
        votes = panel_votes(self.panel, panel_labels(self.panel, records, answers))
        keep = [i for i, vote in enumerate(votes) if vote is not None]
        if not keep:
            return {"train/eval/kept_pairs": 0.0}
        records, answers, votes = [records[i] for i in keep], [answers[i] for i in keep], [votes[i] for i in keep]
        self.ctx.signals.record("panel_vote", records, answers, votes)  # the evaluator's targets, audited
        texts = [self.world.evaluator_prompt(r.prompt, a) for r, a in zip(records, answers)]
        replay = self._warmup_examples("evaluator")  # vote-labelled world examples keep every label in view
        index = torch.randint(len(replay), (self.cfg.eval_replay,), generator=self.generator).tolist()
        texts += [replay[i]["prompt"] for i in index]
        metrics = self._evaluator_grpo(host, texts, votes + [replay[i]["response"] for i in index])
        metrics["train/eval/kept_pairs"] = float(len(keep))
        return metrics

    # ----------------------------------------------------------------- the host's iteration
    def training_step(self, batch, host) -> dict[str, float]:
        started = time.perf_counter()
        iteration, phase = self.plan[self.step]
        self._measure = []  # phases whose held-out metrics monitor() takes after this iteration
        if self.step == 0 and phase != "warmup":  # no warm-up configured: measure the starting point too
            self._sync_anchors()
            self._measure.append("start")
        if phase == "warmup":
            metrics = self._warmup_step(host)
        else:
            step = {"red": self._red_step, "blue": self._blue_step, "eval": self._eval_step}[phase]
            metrics = step(host, list(batch))
        self.step += 1
        ended = self.step == len(self.plan) or self.plan[self.step] != (iteration, phase)
        if ended and phase == "warmup":
            self._sync_anchors()
            self._save_warmup()
        metrics["timing/train"] = time.perf_counter() - started
        if ended and self.cfg.phase_metrics:
            self._measure.append(phase)
        metrics.update({"train/triplay_phase": float(PHASE_CODES[phase]), "train/triplay_iteration": float(iteration)})
        return metrics

    def monitor(self) -> dict[str, float]:
        """The held-out phase metrics (``triplay_metrics``) at the end of a phase: they use the evaluation
        judge, so they are taken here, after the iteration, never inside a training step."""
        metrics = super().monitor()
        for phase in getattr(self, "_measure", []):
            if phase == "start":
                if self.cfg.phase_metrics and self.ctx.sink is not None:
                    self.ctx.sink.log({**self.phase_metrics("warmup"), "train/triplay_phase": 0.0,
                                       "train/triplay_iteration": 0.0}, stage="rl", iteration=0)
            else:
                metrics.update(self.phase_metrics(phase))
        self._measure = []
        return metrics

    def progress_label(self) -> str:
        """Where the plan is, for the progress bar: ``round 1/2 · red 3/5`` (or ``warmup 12/400``)."""
        if not self.plan:
            return ""
        index = min(self.step, len(self.plan) - 1)
        iteration, phase = self.plan[index]
        block = [i for i, entry in enumerate(self.plan) if entry == (iteration, phase)]
        where = f"{phase} {index - block[0] + 1}/{len(block)}"
        return where if phase == "warmup" else f"round {iteration}/{self.cfg.iterations} · {where}"

    # ----------------------------------------------------------------- state and evaluation
    def state_dict(self) -> dict[str, Any]:
        iteration, phase = self.plan[min(self.step, len(self.plan) - 1)] if self.plan else (0, "warmup")
        return {"step": self.step, "iteration": iteration, "phase": phase, "generator": self.generator.get_state(),
                "pool": self.pool.state_dict(), "first_metrics": dict(self.first_metrics),
                "last_metrics": dict(self.last_metrics),
                "anchors": {ANCHOR[r]: self.roles.role_state_dict(ANCHOR[r]) for r in ("attacker", "evaluator")},
                # the panel's votes on the warm-up examples: a resumed run reuses them instead of asking again
                "evaluator_examples": self._evaluator_examples}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step = int(state["step"])
        self.generator.set_state(state["generator"])
        self.pool.load_state_dict(state["pool"])
        self.first_metrics, self.last_metrics = dict(state["first_metrics"]), dict(state["last_metrics"])
        for role, weights in state["anchors"].items():
            self.roles.load_role_state_dict(role, weights)
        self._evaluator_examples = state.get("evaluator_examples")

    def responder(self):
        from alignbench.eval.harness import PolicyResponder

        return PolicyResponder(self.ctx, self.roles, role="defender")

    def summary_metrics(self) -> dict[str, float]:
        extras = dict(self.stage_outputs.metrics)
        extras.update(self.last_metrics)
        extras.update({k.replace("triplay/", "triplay/initial/", 1): v for k, v in self.first_metrics.items()
                       if k.startswith("triplay/")})
        return extras
