"""TriPlay-RL's held-out measurements at the end of each phase (the metrics of ``triplay.py``'s docstring).

A mixin of ``TriPlay``: it reads the component's world, held-out seeds, roles, judge panel, Self-BLEU
and embedder, and samples attacks and answers through its ``_attacks`` / ``_answers`` helpers with a
fixed seed, so every phase is measured on the same randomness.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from alignbench.algorithms.triplay_rewards import (
    accuracy, mean_pairwise_cosine, panel_labels, panel_votes, strategy_entropy, strategy_template,
)
from alignbench.models.compute import METER


class TriPlayHeldoutMetrics:
    """``phase_metrics`` and the attacker / defender / evaluator measurements it combines."""

    def phase_metrics(self, phase: str) -> dict[str, float]:
        """Measure the role(s) the phase changed (all three after the warm-up) on held-out data."""
        started = time.perf_counter()
        seed = int(self.ctx.rc.seed) + 7919  # the same sampling randomness at every phase end
        metrics: dict[str, float] = {}
        with METER.phase("monitor"):  # held-out measurement, not training compute
            if phase in ("warmup", "red"):
                metrics.update(self.attacker_metrics(seed))
            if phase in ("warmup", "blue"):
                metrics.update(self.defender_metrics(seed))
            if phase in ("warmup", "eval"):
                metrics.update(self.evaluator_metrics(seed))
        metrics["timing/phase_metrics"] = time.perf_counter() - started
        for key, value in metrics.items():  # the first measurement of each metric (after the warm-up)
            self.first_metrics.setdefault(key, value)
        self.last_metrics.update(metrics)
        return metrics

    def attacker_metrics(self, seed: int) -> dict[str, float]:
        wrapper_names = tuple(self.world.wrappers)
        seeds = [s for s in self.heldout_seeds for _ in range(self.cfg.metric_samples)]
        train_seeds = [s for s in self.seeds[:len(self.heldout_seeds)] for _ in range(self.cfg.metric_samples)]
        train_records = self._attacks(train_seeds, seed + 5)
        train_answers = self._answers("reference", 1.0, [r.prompt for r in train_records], seed + 6)
        train_success = np.mean([r.meta["relevance"] > 0 and self.world.judge(r, a).unsafe
                                 for r, a in zip(train_records, train_answers)])
        records = self._attacks(seeds, seed)
        attacks = [r.prompt for r in records]
        relevant = np.array([r.meta["relevance"] for r in records]) > 0
        fixed = self._answers("reference", 1.0, attacks, seed + 1)
        current = self._answers("current", 1.0, attacks, seed + 2)
        unsafe_fixed = np.array([self.world.judge(r, a).unsafe for r, a in zip(records, fixed)])
        unsafe_current = np.array([self.world.judge(r, a).unsafe for r, a in zip(records, current)])
        requests = self._requests(seeds)
        templates = attacks if requests is None else [strategy_template(a, r) for a, r in zip(attacks, requests)]
        bleu_div = 1.0 - self.bleu.of_set(templates, self.cfg.metric_bleu_pairs, seed)
        embed_div = 1.0 - mean_pairwise_cosine(self.embedder(templates))
        raw_div = 0.5 * (2.0 - self.bleu.of_set(attacks, self.cfg.metric_bleu_pairs, seed)
                         - mean_pairwise_cosine(self.embedder(attacks)))
        wrappers = np.array([r.meta["wrapper"] for r in records])
        hits = unsafe_fixed & relevant
        return {"triplay/attack_success_rate": float(hits.mean()),
                "triplay/attack_success_rate_current": float((unsafe_current & relevant).mean()),
                "triplay/attack_relevance": float(relevant.mean()),
                "triplay/attack_success_rate_train_seeds": float(train_success),
                "triplay/attack_diversity": 0.5 * (bleu_div + embed_div),
                "triplay/attack_diversity_bleu": bleu_div, "triplay/attack_diversity_embedding": embed_div,
                "triplay/attack_diversity_raw": raw_div,
                "triplay/attack_strategy_entropy": strategy_entropy(list(wrappers), len(wrapper_names) + 1),
                "triplay/attack_distinct": len(set(attacks)) / max(1, len(attacks)),
                # the share of each jailbreak wrapper among the attacks (what P_div trades against success)
                **{f"triplay/attack_wrapper/{name}": float(np.mean(wrappers == name))
                   for name in (*wrapper_names, "none")},
                # success against the fixed defender per wrapper (only the wrappers the attacker used)
                **{f"triplay/attack_success_by_wrapper/{name}": float(hits[wrappers == name].mean())
                   for name in (*wrapper_names, "none") if (wrappers == name).any()}}

    def defender_metrics(self, seed: int) -> dict[str, float]:
        from alignbench.eval.harness import PolicyResponder, evaluate

        eval_cfg = dataclasses.replace(self.ctx.eval_cfg, samples_per_prompt=self.cfg.phase_eval_samples)
        result = evaluate(PolicyResponder(self.ctx, self.roles, "defender"), self.ctx.data.eval_prompts,
                          self.ctx.judge, eval_cfg, seed=seed)
        keys = ("unsafe_rate", "bare_refusal_rate", "over_refusal_rate", "helpfulness")
        return {f"triplay/defender/{k}": result.metrics[f"eval/{k}"] for k in keys if f"eval/{k}" in result.metrics}

    def heldout_pairs(self, seed: int) -> tuple[list, list[str]]:
        """The world's evaluator examples of the eval split plus (attack, answer) pairs on held-out seeds."""
        records, replies = map(list, zip(*[self._split_evaluator_example(row)
                                           for row in self.world.evaluator_sft_examples("eval")]))
        attacks = self._attacks(self.heldout_seeds, seed)
        prompts = [r.prompt for r in attacks]
        records += attacks + attacks
        replies += self._answers("current", 1.0, prompts, seed + 3) + self._answers("reference", 1.0, prompts, seed + 4)
        return records, replies

    def evaluator_metrics(self, seed: int) -> dict[str, float]:
        """Accuracy against the true labels of the evaluator, each judge and the vote.

        Headline numbers are on the evaluator's domain (``evaluator_kinds``: answers to harmful and
        jailbreak prompts, attacks included); ``*_all_kinds`` adds the benign/borderline answer checks.
        """
        records, replies = self.heldout_pairs(seed)
        truth = [self.world.judge(r, a).label for r, a in zip(records, replies)]
        predicted = self.evaluator_labels([r.prompt for r in records], replies)
        labels = panel_labels(self.panel, records, replies)
        votes = panel_votes(self.panel, labels)
        domain = [i for i, r in enumerate(records) if r.kind in self.cfg.evaluator_kinds]
        attacks = [i for i, r in enumerate(records) if r.prompt_id.startswith("attack/")]

        def acc(pred, rows):
            return accuracy([pred[i] for i in rows], [truth[i] for i in rows])

        everything = list(range(len(records)))
        metrics = {"triplay/evaluator_acc": acc(predicted, domain), "triplay/vote_acc": acc(votes, domain),
                   "triplay/evaluator_acc_attacks": acc(predicted, attacks),
                   "triplay/evaluator_acc_all_kinds": acc(predicted, everything)}
        for name, judged in labels.items():
            metrics[f"triplay/judge_acc/{name}"] = acc(judged, domain)
            metrics[f"triplay/judge_acc_all_kinds/{name}"] = acc(judged, everything)
        metrics["triplay/best_judge_acc"] = max(metrics[f"triplay/judge_acc/{name}"] for name in labels)
        return metrics
