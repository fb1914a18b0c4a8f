"""A fake multirun on disk for the report tests: summaries, histories and eval_samples.jsonl as jobs write them.

Per-prompt outcomes are laid out by hand (``samples``) and the summary's metrics are computed from them
by the evaluation harness's own ``alignbench.eval.metrics.aggregate``, so a job's files agree exactly as
a real job's do. Prompts: ``N_HARMFUL`` harmful and ``N_BENIGN`` benign, ``K`` samples each.
"""

from __future__ import annotations

import json
from pathlib import Path

from alignbench.eval.metrics import SampleOutcome, aggregate
from alignbench.summary import build_summary, write_summary

N_HARMFUL, N_BENIGN, K = 10, 10, 2
PROMPTS = [(f"harmful/{i}", "harmful") for i in range(N_HARMFUL)] + [(f"benign/{i}", "benign") for i in range(N_BENIGN)]


def samples(unsafe: int, refusals: int, helpful: float, shift: int = 0) -> list[dict]:
    """Sample rows: ``unsafe`` of the 2 N_HARMFUL harmful samples are unsafe and ``refusals`` of the benign
    ones are refusals (consecutive slots from ``shift``); every benign answer has helpfulness ``helpful``."""
    rows = []
    slots = {"harmful": 2 * N_HARMFUL, "benign": 2 * N_BENIGN}
    seen = {"harmful": 0, "benign": 0}
    for pid, kind in PROMPTS:
        for _ in range(K):
            slot = (seen[kind] + shift) % slots[kind]
            seen[kind] += 1
            bad = kind == "harmful" and slot < unsafe
            refusal = kind == "benign" and slot < refusals
            rows.append({"prompt_id": pid, "kind": kind, "category": "c", "prompt": pid, "response": "r",
                         "label": "negative" if bad else "positive", "unsafe": bad, "refusal": refusal,
                         "helpful": 0.0 if kind == "harmful" or refusal else helpful, "cost": 1.0 if bad else -1.0})
    return rows


def metrics_of(rows: list[dict]) -> dict[str, float]:
    """The summary metrics the harness computes from these samples (threshold d = 0)."""
    kinds = [kind for _, kind in PROMPTS]
    outcomes = [[SampleOutcome(unsafe=r["unsafe"], refusal=r["refusal"], bare_refusal=False, helpful=r["helpful"],
                               cost=r["cost"]) for r in rows if r["prompt_id"] == pid] for pid, _ in PROMPTS]
    return aggregate(kinds, ["c"] * len(kinds), outcomes, 0.0)["metrics"]


def write_job(job_dir: Path, overrides: list[str], summary: dict | None = None, history: list | None = None,
              rows: list[dict] | None = None) -> Path:
    (job_dir / ".hydra").mkdir(parents=True)
    (job_dir / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in overrides))
    (job_dir / ".hydra" / "config.yaml").write_text("eval:\n  threshold: 0.0\n")
    if summary is not None:
        write_summary(job_dir, summary)
    if history:
        (job_dir / "history.jsonl").write_text("".join(json.dumps(row) + "\n" for row in history))
    if rows is not None:
        (job_dir / "eval_samples.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    return job_dir


#: an algorithm's training phases besides the SFT stage (models.compute's phase names); the PPO family's by default
TRAINING_PHASES = {"sft": (), "safeguard": (), "waltzrl": ("cost_model", "label_model", "waltzrl_warmup", "rl"),
                   "triplay": ("cost_model", "label_model", "triplay_warmup", "rl")}


def summary(algo: str, seed: int, overrides: list[str], metrics: dict, flops: float = 1e12, **fields) -> dict:
    perf = {"wall_s": 100.0 + seed, "gen_tokens": 5000, "train_tokens": 20000, "peak_rss_mb": 900.0, "flops": flops}
    # the phases a real head_to_head job of this algorithm has (the widest per-phase table the report draws):
    # the SFT stage's 1e12, about the rest of the training FLOPs shared by its other training phases, varying
    # with the seed as real counts do (so the table's cells carry intervals as wide as a real report's)
    trained = TRAINING_PHASES.get(algo, ("reward_model", "cost_model", "rl"))
    jitter = 1.0 + 0.0137 * seed
    compute = {"sft": {"flops": 1e12, "recorded": True},
               **{phase: {"flops": (flops - 1e12) / len(trained) * jitter, "recorded": phase != "rl"}
                  for phase in trained},
               "eval": {"flops": 1.23e10 * jitter, "recorded": False}, "export": {"flops": 5.4e7 * jitter, "recorded": False}}
    if algo == "triplay":
        compute["monitor"] = {"flops": 1.7e11 * jitter, "recorded": False}
    return build_summary(algo=algo, model="tiny", data="world", seed=seed, perf=perf, overrides=overrides,
                         status="ok", metrics=metrics, compute=compute, **fields)


def history(seed: int, with_lambda: bool = False) -> list[dict]:
    """An SFT stage (iterations 1-3, its own axis) then 5 RL iterations; ``perf/flops`` grows with both."""
    rows = [{"step": i, "stage": "sft", "iteration": i, "sft/loss": 1.0 / i, "train/reward": 99.0,
             "perf/flops": 1e11 * i} for i in range(1, 4)]
    for i in range(1, 6):
        row = {"step": 3 + i, "stage": "rl", "iteration": i, "train/reward": 0.1 * i + seed,
               "train/episode_cost": 1.0 - 0.1 * i, "perf/flops": 1e12 + 1e11 * i}
        if with_lambda:
            row["train/lambda"] = 0.2 * i
        rows.append(row)
    rows.append({"step": 9, "stage": "eval", "iteration": 0, "eval/unsafe_rate": 0.5})
    return rows


def triplay_history(seed: int) -> list[dict]:
    """TriPlay's in-fit warm-up (iterations 1-3, phase 0; its last row holds the held-out measurement RL starts
    from, an earlier one a value no curve may show), then red phases logging held-out attack success."""
    rows = [{"step": i, "stage": "rl", "iteration": i, "train/triplay_phase": 0.0, "train/warmup/attacker_loss": 1.0,
             "perf/flops": 1e12} for i in range(1, 4)]
    rows[1]["triplay/attack_success_rate"] = 0.99
    rows[2]["triplay/attack_success_rate"] = 0.05 + 0.01 * seed
    rows += [{"step": 3 + i, "stage": "rl", "iteration": 3 + i, "train/triplay_phase": 1.0,
              "triplay/attack_success_rate": 0.1 * i + 0.01 * seed, "perf/flops": 1e12 + 1e10 * i} for i in range(1, 4)]
    return rows
