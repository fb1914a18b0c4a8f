"""Evaluation throughput: the harness's generation on model=tiny, or on SmolLM2 against HF ``generate``.

    python benchmarks/eval_speed.py [--prompts 200 --samples 4 --batch-size 128]
    python benchmarks/eval_speed.py --model smollm2_135m [--prompts 32 --batch-size 16 --max-new-tokens 128]

``--model tiny`` (default): 200 world prompts x 4 samples through ``evaluate`` on the random-initialised
tiny model, which rarely emits EOS, so every sample runs to max_new_tokens (the worst case). Last
stdout line: JSON with seconds, samples, generated tokens and tokens per second.

``--model smollm2_135m``: SmolLM2-135M-Instruct as ``conf/model/smollm2_135m.yaml`` loads it (GGUF,
fp32, its chat template), the first ``--prompts`` evaluation prompts of the safety world, in batches of
``--batch-size`` (the model config's ``eval.batch_size``), ``--max-new-tokens`` new tokens, greedy and
sampled (temperature 1, no top-k/top-p, as the model config's evaluation decodes). Each round times,
back to back, the harness's ``generate_texts`` (what ``evaluate`` calls; the ``auto`` engine, fused on
the CPU) and ``model.generate`` on the same left-padded batches with the same settings, greedy then
sampled; tokens are the real answer tokens (EOS included) each side produced. ``speedup_vs_generate``
is the smaller of the greedy and sampled speedups (harness tokens/s / generate tokens/s, summed over
the rounds after the warm-up round). Decoding streams every weight once per step, so its GB/s
(fp32 weight bytes x decode steps / seconds, for ``generate``'s static batches) is set against ``copy_``
bandwidth measured in the same run. The harness decodes with ``--batching`` (default: the model config's
``eval.batching``, continuous): ``batch_size`` slots refilled as answers end, the shared prompt prefix once.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from alignbench.utils.memory import exec_with_tuned_heap, heap_label

if __name__ == "__main__":  # the allocator settings run.py starts under (utils.memory), before torch
    exec_with_tuned_heap()  # ALIGNBENCH_HEAP=system: glibc's defaults

import torch  # noqa: E402

from alignbench.config import EvalConfig, GenerationConfig, ModelConfig
from alignbench.data.world import SafetyWorld
from alignbench.eval.harness import PolicyResponder, evaluate, generate_texts
from alignbench.eval.judges import WorldJudge
from alignbench.models.loading import load_base
from alignbench.models.roles import RoleSet
from alignbench.models.text import TextLimits, encode_prompts


def context(tokenizer, model_cfg, eval_cfg=None):
    def decode(ids, mask):
        return [tokenizer.decode([t for t, m in zip(row, keep) if m], skip_special_tokens=True)
                for row, keep in zip(ids.tolist(), mask.tolist())]

    return SimpleNamespace(tokenizer=tokenizer, model_cfg=model_cfg, device=torch.device("cpu"), eval_cfg=eval_cfg,
                           limits=TextLimits.for_model(model_cfg), decode=decode)


def tiny(args) -> dict:
    world = SafetyWorld()
    model_cfg = ModelConfig()
    base, tokenizer = load_base(model_cfg, vocabulary=world.vocabulary(), seed=0)
    roles = RoleSet(base, [], model_cfg)
    records = (world.prompts("eval") * 2)[: args.prompts]
    eval_cfg = EvalConfig(samples_per_prompt=args.samples, batch_size=args.batch_size, batching=args.batching,
                          generation=GenerationConfig(max_new_tokens=args.max_new_tokens, engine=args.engine))
    responder = PolicyResponder(context(tokenizer, model_cfg, eval_cfg), roles, role="reference")
    started = time.perf_counter()
    result = evaluate(responder, records, WorldJudge(world=world), eval_cfg, seed=0)
    seconds = time.perf_counter() - started
    return {"prompts": len(records), "samples_per_prompt": args.samples, "seconds": round(seconds, 2),
            "generated_tokens": result.generated_tokens, "tokens_per_s": round(result.generated_tokens / seconds, 1),
            "threads": torch.get_num_threads(), "engine": args.engine, "batching": args.batching,
            "heap": heap_label()}


def copy_bandwidth_gb_s(megabytes: int = 256, reps: int = 5) -> float:
    """``copy_`` of ``megabytes`` fp32: (read + write bytes) / median seconds."""
    source = torch.randn(megabytes * 2**20 // 4)
    target = torch.empty_like(source)
    target.copy_(source)
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        target.copy_(source)
        times.append(time.perf_counter() - started)
    return 2 * source.numel() * 4 / statistics.median(times) / 1e9


def hf_generate(model, tokenizer, model_cfg, limits, prompts, generation, batch_size, seed
                ) -> tuple[int, int, list[list[int]]]:
    """``model.generate`` over the harness's batches: (real answer tokens incl. EOS, decode steps,
    each answer's token ids up to its first EOS)."""
    eos, tokens, steps, answers_ids = tokenizer.eos_token_id, 0, 0, []
    torch.manual_seed(seed)
    with torch.inference_mode():
        for start in range(0, len(prompts), batch_size):
            ids, mask = encode_prompts(tokenizer, model_cfg, prompts[start:start + batch_size], limits=limits)
            out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=generation.max_new_tokens,
                                 do_sample=generation.do_sample, temperature=generation.temperature if generation.do_sample else None,
                                 top_k=None, top_p=None, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)
            answers = out[:, ids.shape[1]:]
            steps += answers.shape[1]
            ended = (answers == eos).int().cumsum(1)
            real = (ended == 0) | ((ended == 1) & (answers == eos))  # up to the first EOS
            tokens += int(real.sum())
            answers_ids += [row[keep].tolist() for row, keep in zip(answers, real)]
    return tokens, steps, answers_ids


def smollm2(args) -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from rl_step import smollm2_config, smollm2_yaml

    model_cfg, decoding = smollm2_config(), smollm2_yaml().eval.generation
    base, tokenizer = load_base(model_cfg, vocabulary=None, seed=0)
    roles = RoleSet(base, [], model_cfg)
    ctx = context(tokenizer, model_cfg)
    prompts = [r.prompt for r in SafetyWorld().prompts("eval")[: args.prompts]]
    weight_bytes = sum(p.numel() * p.element_size() for p in base.parameters())
    settings = {mode: GenerationConfig(max_new_tokens=args.max_new_tokens, temperature=decoding.temperature,
                                       top_k=decoding.top_k, top_p=decoding.top_p, do_sample=mode == "sampled",
                                       engine=args.engine) for mode in ("greedy", "sampled")}
    totals = {f"{side}_{mode}": [0.0, 0, 0] for side in ("harness", "generate") for mode in settings}  # s, tokens, steps
    greedy_texts = {}
    bandwidth = [copy_bandwidth_gb_s()]
    for round_index in range(args.rounds + 1):  # round 0: warm-up
        for mode, generation in settings.items():
            started = time.perf_counter()
            with roles.generation_model("reference") as model:
                texts, tokens = generate_texts(ctx, model, prompts, generation, batch_size=args.batch_size,
                                               seed=round_index, batching=args.batching)
            ours = time.perf_counter() - started
            started = time.perf_counter()
            theirs_tokens, theirs_steps, theirs_ids = hf_generate(base, tokenizer, model_cfg, ctx.limits, prompts, generation,
                                                      args.batch_size, round_index)
            theirs = time.perf_counter() - started
            if mode == "greedy":
                special = set(tokenizer.all_special_ids)
                greedy_texts = texts
                theirs_texts = [tokenizer.decode([t for t in ids if t not in special]) for ids in theirs_ids]
                same = sum(a == b for a, b in zip(texts, theirs_texts)) / len(texts)
            if round_index:
                totals[f"harness_{mode}"][0] += ours
                totals[f"harness_{mode}"][1] += tokens
                totals[f"generate_{mode}"][0] += theirs
                totals[f"generate_{mode}"][1] += theirs_tokens
                totals[f"generate_{mode}"][2] += theirs_steps
    bandwidth.append(copy_bandwidth_gb_s())
    rate = {key: tokens / seconds for key, (seconds, tokens, _) in totals.items()}
    speedups = {mode: rate[f"harness_{mode}"] / rate[f"generate_{mode}"] for mode in settings}
    peak_bw = max(bandwidth)
    # generate streams every weight once per decode step of each batch (continuous batching has other steps)
    stream = totals["generate_greedy"][2] * weight_bytes / totals["generate_greedy"][0] / 1e9
    return {
        "model": "smollm2_135m", "prompts": len(prompts), "batch_size": args.batch_size, "batching": args.batching,
        "max_new_tokens": args.max_new_tokens, "rounds": args.rounds,
        "speedup_vs_generate": round(min(speedups.values()), 3),
        "speedup_greedy": round(speedups["greedy"], 3), "speedup_sampled": round(speedups["sampled"], 3),
        "tokens_per_s": {key: round(value, 1) for key, value in rate.items()},
        "seconds": {key: round(value[0], 2) for key, value in totals.items()},
        "tokens": {key: value[1] for key, value in totals.items()},
        "generate_greedy_weight_stream_gb_per_s": round(stream, 2),
        "copy_bandwidth_gb_per_s": [round(b, 2) for b in bandwidth],
        "generate_greedy_fraction_of_copy_bw": round(stream / peak_bw, 3),
        "greedy_same_texts_as_generate": same,
        "greedy_answers_nonempty": sum(bool(t.strip()) for t in greedy_texts),
        "threads": torch.get_num_threads(), "engine": args.engine, "heap": heap_label(),
        "load_avg_1m": float(Path("/proc/loadavg").read_text().split()[0]), "cpu_count": os.cpu_count(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["tiny", "smollm2_135m"], default="tiny")
    parser.add_argument("--prompts", type=int, default=None, help="default: 200 (tiny), 32 (smollm2_135m)")
    parser.add_argument("--samples", type=int, default=4, help="samples per prompt (tiny)")
    parser.add_argument("--batch-size", type=int, default=None, help="default: 128 (tiny), eval.batch_size of "
                        "conf/model/smollm2_135m.yaml (smollm2_135m)")
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: 24 (tiny), the model config's "
                        "eval.generation.max_new_tokens (smollm2_135m)")
    parser.add_argument("--rounds", type=int, default=1, help="timed rounds after the warm-up (smollm2_135m)")
    parser.add_argument("--engine", default="auto", help="rollout engine: auto (fused on CPU for Llama models) | fused | lean | hf")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--batching", choices=["continuous", "static"], default=None,
                        help="the harness's eval.batching (default: the model config's, else EvalConfig's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    real = args.model == "smollm2_135m"
    args.prompts = args.prompts or (32 if real else 200)
    if real:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from rl_step import smollm2_yaml

        evaluation = smollm2_yaml().eval
        args.batch_size = args.batch_size or evaluation.batch_size
        args.max_new_tokens = args.max_new_tokens or evaluation.generation.max_new_tokens
        args.batching = args.batching or evaluation.get("batching")
    args.batch_size = args.batch_size or 128
    args.batching = args.batching or str(EvalConfig().batching)
    args.max_new_tokens = args.max_new_tokens or 24
    print(json.dumps(smollm2(args) if real else tiny(args)))


if __name__ == "__main__":
    main()
