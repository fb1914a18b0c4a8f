"""One evaluation harness for every algorithm: sample k answers per prompt, judge them, aggregate.

A *responder* turns prompts into answers: the trained policy alone (``PolicyResponder``), or a whole
agent system (WaltzRL's answer-feedback-revision loop, a safeguard wrapper) that also reports extra
per-sample fields (e.g. ``triggered``). The judge (``eval.judge``) maps every answer to a verdict;
``alignbench.eval.metrics`` turns verdicts into the ``eval/…`` metrics. Generation is batched over
prompts × samples with the KV cache, under ``torch.inference_mode``: continuously (``eval.batching:
continuous``, ``alignbench.rl.slots``: each of ``batch_size`` slots takes the next prompt as its answer
ends; the fused engine, i.e. Llama-family models on the CPU) or in left-padded chunks of ``batch_size``
decoded until their longest answer ends (``static``, and every other engine). With greedy
decoding (``eval.generation.do_sample: false``, real models) the policy answers each prompt once and
the answer stands for its k samples (they would be identical). A progress bar with the ETA runs on a
terminal (``alignbench.utils.progress``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol

import torch

from alignbench.models.text import encode_prompts
from alignbench.config import Batching, EvalConfig, GenerationConfig
from alignbench.eval.metrics import SampleOutcome, aggregate
from alignbench.rl.rollout import generate_rollout

#: how ``generate_texts`` batches: the choices of ``EvalConfig.batching``
BATCHING = tuple(str(choice) for choice in Batching)


class Responder(Protocol):
    def respond(self, prompts: list[str], samples: int, generation: GenerationConfig,
                seed: int) -> tuple[list[list[str]], list[list[dict[str, Any]]]]: ...


def sample_responses(ctx, roles, role: str, prompts: list[str], generation: GenerationConfig, *,
                     batch_size: int, seed: int, batching: str, progress: Callable[[int], None] | None = None
                     ) -> tuple[list[str], int]:
    """Generate one answer per entry of ``prompts`` with ``role``; returns texts and token count."""
    with roles.generation_model(role) as model:
        return generate_texts(ctx, model, prompts, generation, batch_size=batch_size, seed=seed, batching=batching,
                              progress=progress)


def generate_texts(ctx, model, prompts: list[str], generation: GenerationConfig, *, batch_size: int, seed: int,
                   batching: str, progress: Callable[[int], None] | None = None) -> tuple[list[str], int]:
    """One answer of ``model`` per entry of ``prompts``; returns texts and token count.

    ``batching``: ``"continuous"`` (``batch_size`` slots refilled as answers end; only where the fused
    engine decodes, else static) or ``"static"`` (chunks of ``batch_size``), as ``EvalConfig.batching``.
    """
    if batching not in BATCHING:
        raise ValueError(f"generate_texts: batching must be one of {BATCHING}, got {batching!r}")
    if batching == "continuous" and prompts:
        from alignbench.rl.speed import decoding

        if decoding(str(getattr(generation, "engine", "auto")), model):
            return _continuous_texts(ctx, model, prompts, generation, batch_size=batch_size, seed=seed,
                                     progress=progress)
    texts: list[str] = []
    tokens = 0
    generator = torch.Generator().manual_seed(seed)
    with torch.inference_mode():
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start:start + batch_size]
            ids, mask = encode_prompts(ctx.tokenizer, ctx.model_cfg, chunk, limits=ctx.limits)
            rollout = generate_rollout(
                model, ids.to(ctx.device), mask.to(ctx.device), max_new_tokens=generation.max_new_tokens,
                eos_token_id=ctx.tokenizer.eos_token_id, pad_token_id=ctx.tokenizer.pad_token_id,
                temperature=generation.temperature, top_k=generation.top_k, top_p=generation.top_p,
                do_sample=getattr(generation, "do_sample", True), generator=generator,
                engine=getattr(generation, "engine", "auto"),
            )
            tokens += rollout.num_generated_tokens
            texts += ctx.decode(rollout.response_ids, rollout.response_mask)
            if progress is not None:
                progress(len(chunk))
    return texts, tokens


def _continuous_texts(ctx, model, prompts, generation, *, batch_size, seed, progress) -> tuple[list[str], int]:
    """``generate_texts`` through ``alignbench.rl.slots.generate_continuous``."""
    from alignbench.models.text import fit_prompt
    from alignbench.rl.slots import generate_continuous

    rows = [fit_prompt(ctx.tokenizer, ctx.model_cfg, prompt, ctx.limits) for prompt in prompts]
    with torch.inference_mode():
        ids, mask = generate_continuous(
            model, rows, slots=batch_size, max_new_tokens=generation.max_new_tokens,
            eos_token_id=ctx.tokenizer.eos_token_id, pad_token_id=ctx.tokenizer.pad_token_id,
            temperature=generation.temperature, top_k=generation.top_k, top_p=generation.top_p,
            do_sample=getattr(generation, "do_sample", True), generator=torch.Generator().manual_seed(seed),
            progress=progress)
    return ctx.decode(ids, mask), int(mask.sum())


class PolicyResponder:
    """Answers with one LM role (``policy``, or ``reference`` = the base/SFT model)."""

    def __init__(self, ctx, roles, role: str = "policy", batch_size: int | None = None) -> None:
        self.ctx, self.roles, self.role = ctx, roles, role
        self.batch_size = batch_size or ctx.eval_cfg.batch_size
        self.generated_tokens = 0

    def respond(self, prompts, samples, generation, seed, progress=None):
        drawn = samples if getattr(generation, "do_sample", True) else 1  # greedy: k identical answers
        repeated = [p for p in prompts for _ in range(drawn)]
        step = (lambda n: progress(n * samples // drawn)) if progress is not None else None
        texts, tokens = sample_responses(self.ctx, self.roles, self.role, repeated, generation,
                                         batch_size=self.batch_size, seed=seed, batching=self.ctx.eval_cfg.batching,
                                         progress=step)
        self.generated_tokens += tokens
        grouped = [texts[i * drawn:(i + 1) * drawn] * (samples // drawn) for i in range(len(prompts))]
        return grouped, [[{} for _ in group] for group in grouped]


@dataclass
class EvalResult:
    metrics: dict[str, float]
    per_kind: dict[str, dict[str, float]]
    per_category: dict[str, dict[str, float]]
    table_columns: list[str] = field(default_factory=list)
    table_rows: list[list[Any]] = field(default_factory=list)
    generated_tokens: int = 0
    seconds: float = 0.0
    samples: list[dict[str, Any]] = field(default_factory=list)
    prompt_cost_histogram: dict[str, Any] = field(default_factory=dict)
    #: (records, texts, verdicts) of every sample, flat: what the metrics were computed from
    judged: tuple[list, list[str], list] = ((), (), ())

    def write_samples(self, path) -> None:
        """Every judged sample as one JSON line (what the metrics were computed from)."""
        import json

        with open(path, "w") as handle:
            for row in self.samples:
                handle.write(json.dumps(row) + "\n")


def evaluate(responder, records: list, judge, cfg: EvalConfig, *, seed: int,
             scorer: Callable[[list, list[str]], tuple[list[float], list[float]]] | None = None,
             extra_metrics: Callable[[list, list[list[str]], list[list[dict]]], dict[str, float]] | None = None,
             ) -> EvalResult:
    """Evaluate ``responder`` on ``records`` (``PromptRecord``s) with ``cfg.samples_per_prompt`` samples.

    ``scorer`` optionally adds trained reward/cost model scores per sample; ``extra_metrics`` lets an
    agent system add its own aggregate metrics (e.g. the feedback trigger rate).
    """
    from alignbench.utils.progress import progress_bar

    started = time.perf_counter()
    k = cfg.samples_per_prompt
    prompts = [record.prompt for record in records]
    with progress_bar(f"evaluating {len(prompts)} prompts x {k}", len(prompts) * k) as advance:
        responses, infos = responder.respond(prompts, k, cfg.generation, seed, progress=advance)
    outcomes: list[list[SampleOutcome]] = []
    rows: list[list[Any]] = []
    samples_out: list[dict[str, Any]] = []
    flat_records = [record for record, group in zip(records, responses) for _ in group]
    flat_texts = [text for group in responses for text in group]
    rewards, model_costs = scorer(flat_records, flat_texts) if scorer is not None else (None, None)
    judged = judge.judge_batch(flat_records, flat_texts)  # one batch: model judges score at once
    verdicts = iter(judged)
    index = 0
    for record, group in zip(records, responses):
        samples = []
        for text in group:
            verdict = next(verdicts)
            samples.append(SampleOutcome(
                unsafe=verdict.unsafe, refusal=verdict.refusal, bare_refusal=verdict.bare_refusal,
                helpful=float(verdict.helpful), cost=float(verdict.cost),
                reward=None if rewards is None else float(rewards[index]),
                model_cost=None if model_costs is None else float(model_costs[index])))
            samples_out.append({"prompt_id": record.prompt_id, "kind": record.kind, "category": record.category,
                                "prompt": record.prompt, "response": text, "label": verdict.label,
                                "unsafe": verdict.unsafe, "refusal": verdict.refusal,
                                "helpful": float(verdict.helpful), "cost": float(verdict.cost)})
            if len(rows) < cfg.table_rows or (text == group[0] and len(rows) < 4 * cfg.table_rows):
                rows.append([record.kind, record.category, record.prompt, text, verdict.label,
                             verdict.unsafe, verdict.refusal, round(float(verdict.helpful), 3)])
            index += 1
        outcomes.append(samples)
    result = aggregate([r.kind for r in records], [r.category for r in records], outcomes, cfg.threshold)
    metrics = result["metrics"]
    if extra_metrics is not None:
        metrics.update(extra_metrics(records, responses, infos))
    return EvalResult(
        metrics=metrics, per_kind=result["per_kind"], per_category=result["per_category"],
        table_columns=["kind", "category", "prompt", "response", "label", "unsafe", "refusal", "helpful"],
        table_rows=rows[: cfg.table_rows], generated_tokens=getattr(responder, "generated_tokens", 0),
        seconds=time.perf_counter() - started, samples=samples_out,
        prompt_cost_histogram=result["prompt_cost_histogram"], judged=(flat_records, flat_texts, judged),
    )
