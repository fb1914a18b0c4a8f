"""The RLAIF stage of ``data=rlaif``: the SFT model answers the training prompts, a judge labels, pairs.

Run by ``training.pipeline.run_stages`` right after the SFT stage when the job needs a stage learned
from pairs (reward, cost or label model)::

    for p in training prompts:  y_1..y_k ~ pi_SFT(. | p)  at data.rlaif.generation (sampled, T = 0.7)
    v_i = labeller(p, y_i)                                  (never the evaluation judge)
    pairs = every two distinct y_i, y_j of p                (``alignbench.data.rlaif.preference_pairs``)

The labelled answers are cached under ``cache_dir/rlaif/<key>.json``, keyed by the SFT stage's key,
the rlaif settings, the training prompts and the labeller's version, so every job of a sweep (and
every later run) labels once. The pairs are split by a salted prompt hash into training pairs and the
held-out pairs of the stages' metrics (``data.eval_fraction``). The labels' agreement with the
evaluation judge is measured on the same answers in the ``monitor`` scope of the fairness guard and
reported as ``stages/rlaif/agreement/*`` (never used for training).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from alignbench.data import rlaif
from alignbench.utils.oracle import oracle_scope

CACHE_SUBDIR = "rlaif"


def rlaif_key(ctx, sft_key: str) -> str:
    """The labelled answers' cache key (module docstring)."""
    payload = {"version": rlaif.LABELLER_VERSION, "sft": sft_key, "settings": asdict(ctx.data.rlaif),
               "prompts": [r.prompt for r in ctx.data.train_prompts], "seed": int(ctx.rc.stages.seed)}
    return "rlaif-" + hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def sample_answers(ctx, prompts: list[str], generation, *, batch_size: int, seed: int) -> list[str]:
    """One answer per entry of ``prompts`` from the base model (the SFT model at this point)."""
    from alignbench.eval.harness import generate_texts
    from alignbench.utils.progress import progress_bar

    from alignbench.models.compute import METER

    model = ctx.base.to(ctx.device).eval()
    # the compute meter counts the sampling under its own phase (the job's training compute, like a stage)
    with METER.phase("rlaif"), progress_bar(f"rlaif: sampling {len(prompts)} answers", len(prompts)) as advance:
        texts, _ = generate_texts(ctx, model, prompts, generation, batch_size=batch_size, seed=seed,
                                  batching="static", progress=advance)
    return texts


def label_answers(ctx, sample=sample_answers) -> list[dict[str, Any]]:
    """Sample ``samples_per_prompt`` answers per training prompt (and ``guided_samples`` answers to the
    guide + the prompt, and the written ``refusal_candidate``) and label them as answers to the plain
    prompt (uncached).

    ``sample(ctx, prompts, generation, batch_size=, seed=)``: one answer per prompt (``sample_answers``).
    """
    settings = ctx.data.rlaif
    seed = int(ctx.rc.stages.seed)
    records = [r for r in ctx.data.train_prompts for _ in range(settings.samples_per_prompt)]
    texts = sample(ctx, [r.prompt for r in records], settings.generation, batch_size=settings.batch_size, seed=seed)
    guided = [r for r in ctx.data.train_prompts for _ in range(settings.guided_samples)]
    if guided:  # context distillation: the guide steers the answer, the pair keeps the plain prompt
        texts += sample(ctx, [f"{settings.guide}\n\n{r.prompt}" for r in guided], settings.generation,
                        batch_size=settings.batch_size, seed=seed + 1)
    written = list(ctx.data.train_prompts) if settings.refusal_candidate else []
    texts += [settings.refusal_candidate] * len(written)
    labeller = rlaif.make_labeller(settings.labeller, settings.refusal_window)
    rows = records + guided + written
    samples = [rlaif.labelled_sample(r, t, v) for r, t, v in zip(rows, texts, labeller.judge_batch(rows, texts))]
    for row in samples[len(records):len(records) + len(guided)]:
        row["guided"] = True
    for row in samples[len(records) + len(guided):]:
        row["written"] = True
    return samples


def attach_rlaif_pairs(ctx, sft_key: str) -> tuple[str, dict[str, float]]:
    """Label (or load) the SFT model's answers, build the pairs and put them on ``ctx.data``.

    Returns ``(key, metrics)``: the key goes into the later stages' cache keys (they train on these pairs).
    """
    started = time.perf_counter()
    key = rlaif_key(ctx, sft_key)
    path = Path(ctx.rc.cache_dir) / CACHE_SUBDIR / f"{key}.json"
    cached = path.exists()
    if cached:
        samples = json.loads(path.read_text())["samples"]
    else:
        samples = label_answers(ctx)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"key": key, "labeller": ctx.data.rlaif.labeller, "samples": samples}))
        os.replace(tmp, path)  # atomic: a concurrent job never reads half a file
    pairs = rlaif.preference_pairs(samples)
    ctx.data.preference_train, ctx.data.preference_eval = rlaif.split_pairs(pairs, ctx.rc.data.eval_fraction)
    ctx.data.labelled_samples = samples
    if not ctx.data.preference_train:
        from alignbench.errors import DataError

        raise DataError(f"data=rlaif: the SFT model's {len(samples)} answers gave no training pair (every answer "
                        f"to a prompt was the same); raise data.rlaif.samples_per_prompt, data.rlaif.guided_samples "
                        f"or the temperature")
    by_prompt = {s["prompt_id"]: s for s in samples}
    records = [_record(s) for s in samples]
    with oracle_scope("monitor"):  # a measurement of the labels, never a training signal
        truth = ctx.judge.judge_batch(records, [s["response"] for s in samples])
    metrics = {"stages/rlaif/samples": float(len(samples)), "stages/rlaif/prompts": float(len(by_prompt)),
               "stages/rlaif/train_pairs": float(len(ctx.data.preference_train)),
               "stages/rlaif/heldout_pairs": float(len(ctx.data.preference_eval)),
               "stages/rlaif/cached": float(cached), "stages/rlaif/wall_s": time.perf_counter() - started}
    metrics.update({f"stages/rlaif/agreement/{k}": v for k, v in rlaif.agreement(samples, truth).items()})
    for label in ("negative", "rejective", "positive"):
        metrics[f"stages/rlaif/label/{label}"] = sum(s["label"] == label for s in samples) / len(samples)
    must_refuse = [s for s in samples if s["kind"] not in rlaif.MUST_ANSWER and not s.get("written")]
    metrics["stages/rlaif/guided_samples"] = float(sum(bool(s.get("guided")) for s in samples))
    metrics["stages/rlaif/written_samples"] = float(sum(bool(s.get("written")) for s in samples))
    # the model's own answers (sampled, guided included): 0 = none refuses a harmful prompt, so without a
    # written refusal no pair prefers refusing and no learned signal points to it
    metrics["stages/rlaif/harmful_refused"] = (sum(bool(s["refusal"]) for s in must_refuse) / len(must_refuse)
                                               if must_refuse else float("nan"))
    if ctx.sink is not None:
        ctx.sink.log(metrics, stage="rlaif", iteration=0)
    digest = hashlib.sha256(json.dumps(pairs, sort_keys=True).encode()).hexdigest()[:16]
    return f"{key}-{digest}", metrics


def _record(sample: dict[str, Any]):
    from alignbench.data.schema import PromptRecord

    return PromptRecord(sample["prompt_id"], sample["prompt"], sample["kind"], sample["category"], None, "train")
