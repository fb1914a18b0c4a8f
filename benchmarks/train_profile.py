"""Where the GRPO training phase's time goes: matrix products against everything else, with a ceiling.

``rl_step.py``'s ``train_fraction_of_gemm_peak`` divides the training phase's useful FLOPs (its FLOP model,
real tokens only) by the phase's time and the GEMM peak of the same run. This script takes that phase
apart on the same workload (``rl_step.AlignbenchGRPO``: same model, prompts, group, new tokens, beta):
each of ``--reps`` iterations collects a fresh batch (rollout and reference scoring, as a real iteration
does, with the heap trims `--release-memory` chooses) and times its update; one more iteration's update runs under ``torch.profiler``, whose
``aten::mm`` / ``aten::addmm`` / ``aten::bmm`` calls give the products' own time and FLOPs (from their
shapes). Reported, besides the rl_step figures:

- ``gemm_s`` / ``gemm_share``: the products' time and their share of the profiled phase;
- ``gemm_gflops_per_s`` and ``gemm_fraction_of_peak``: the rate the products themselves ran at;
- ``ceiling_fraction_of_gemm_peak``: the phase's useful FLOPs over the products' time alone, i.e. the
  ``train_fraction_of_gemm_peak`` the phase would reach if every other operator took no time;
- ``gemm_shapes``: the products by shape (calls, seconds, fraction of the peak), the longest first;
- ``train_fraction_each``: each timed update's fraction of the peak (its batch's useful FLOPs over its time);
- ``other_ops``: the other operators by their own (self) time, the largest first;
- ``page_faults``: minor page faults during the timed updates (the pages the heap trims handed back).

    python benchmarks/train_profile.py --model smollm2_135m [--mode full|lora] [--release-memory on|in-steps|off]

Last stdout line: JSON. Profiling adds a few per cent of overhead to the profiled pass; the rate figures
come from the unprofiled passes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

from alignbench.utils.memory import exec_with_tuned_heap, heap_label, in_training_step

if __name__ == "__main__":  # the allocator settings run.py starts under (utils.memory), before torch
    exec_with_tuned_heap()

import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import rl_step  # noqa: E402

GEMM_OPS = ("aten::mm", "aten::addmm", "aten::bmm")


def gemm_flops(name: str, shapes: list) -> float:
    """FLOPs of one product call from its input shapes (``addmm``: bias, a, b; ``bmm``: batched)."""
    if name == "aten::addmm":
        shapes = shapes[1:]
    a, b = shapes[0], shapes[1]
    if name == "aten::bmm":
        return 2.0 * a[0] * a[1] * a[2] * b[2]
    return 2.0 * a[0] * a[1] * b[1]


def split_profile(events, peak: float | None = None) -> dict:
    """The products' self time and FLOPs, and every other operator's self time, from ``key_averages``
    grouped by input shape (a leaf ``aten::`` operator's self time is its whole time). ``gemm_shapes``:
    the products by shape, the longest first, each with its calls, seconds and (given ``peak`` GFLOP/s)
    the fraction of the peak it ran at."""
    gemm_s = gemm_flop = other_s = 0.0
    other: dict[str, list[float]] = {}
    shapes = []
    for event in events:
        seconds = event.self_cpu_time_total / 1e6
        if event.key in GEMM_OPS:
            flop = event.count * gemm_flops(event.key, event.input_shapes)
            gemm_s += seconds
            gemm_flop += flop
            rate = flop / seconds / 1e9 / peak if peak and seconds > 0 else None
            shapes.append({"op": event.key, "shapes": event.input_shapes, "calls": int(event.count), "s": round(seconds, 6),
                           "fraction_of_peak": None if rate is None else round(rate, 3)})
        elif re.match(r"aten::", event.key) and seconds > 0:
            other_s += seconds
            entry = other.setdefault(event.key, [0.0, 0])
            entry[0] += seconds
            entry[1] += event.count
    ranked = sorted(other.items(), key=lambda item: -item[1][0])
    return {"gemm_s": gemm_s, "gemm_flop": gemm_flop, "other_aten_s": other_s,
            "other_ops": {name: {"s": round(s, 4), "calls": int(calls)} for name, (s, calls) in ranked[:15]},
            "gemm_shapes": sorted(shapes, key=lambda row: -row["s"])[:20]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["tiny_llama", "smollm2_135m"], default="tiny_llama")
    parser.add_argument("--mode", choices=["full", "lora"], default="full")
    parser.add_argument("--reps", type=int, default=3, help="timed updates, each on a freshly collected batch")
    rl_step.add_release_option(parser)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=None)
    parser.add_argument("--beta", type=float, default=0.04)
    parser.add_argument("--threads", type=int, default=2)
    for name, default in (("lora-r", 16), ("hidden", 384), ("intermediate", 1024), ("layers", 6), ("heads", 6)):
        parser.add_argument(f"--{name}", type=int, default=default)
    args = parser.parse_args()
    args.engine = "auto"
    if args.new_tokens is None:
        args.new_tokens = rl_step.NEW_TOKENS_DEFAULT[args.model]
    if args.reps < 1:
        parser.error("--reps must be >= 1")
    torch.set_num_threads(args.threads)
    rl_step.apply_release(args)
    peak = rl_step.gemm_peak(args.threads)["peak"]

    with tempfile.TemporaryDirectory(prefix="alignbench-train-profile-") as tmp:
        folder = Path(tmp) / "model"
        tokenizer, prompts, _, params_m = rl_step.build_workload(args, folder)
        ours = rl_step.AlignbenchGRPO(args, folder, tokenizer, prompts)
        ours.step()  # warm-up
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(folder)
        factor = 3.0 if args.mode == "full" else 2.0
        seconds, useful, faults = [], [], []
        for rep in range(args.reps + 1):  # the last one under the profiler
            profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True)
            with in_training_step():  # as rl_step's iteration (a job's training step) runs
                exp, advantages, shape = ours.collect()
                with profiler if rep == args.reps else contextlib.nullcontext():
                    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                    started = time.perf_counter()
                    ours.update(exp, advantages)
                    seconds.append(time.perf_counter() - started)
                    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
            useful.append(rl_step.executed_flops(config, shape["prompt_lengths"], shape["response_lengths"],
                                                 args.group, shape["steps"], factor)["train"])
        profiled_s = seconds.pop()
    parts = split_profile(profiler.key_averages(group_by_input_shape=True), peak)
    rate = statistics.median(f / s for f, s in zip(useful, seconds)) / 1e9  # the unprofiled passes
    gemm_rate = parts["gemm_flop"] / parts["gemm_s"] / 1e9
    result = {
        "model": args.model, "mode": args.mode, "model_params_m": round(params_m, 2),
        "train_s": [round(s, 4) for s in seconds], "train_gflop_useful_last": round(useful[-1] / 1e9, 1),
        "train_gflops_per_s": round(rate, 1), "gemm_peak_gflops_per_s": peak,
        "train_fraction_of_gemm_peak": round(rate / peak, 3),
        "train_fraction_each": [round(f / s / 1e9 / peak, 3) for f, s in zip(useful, seconds)],
        "profiled_s": round(profiled_s, 4), "gemm_s": round(parts["gemm_s"], 4),
        "gemm_share": round(parts["gemm_s"] / profiled_s, 3),
        "gemm_gflop_executed": round(parts["gemm_flop"] / 1e9, 1), "gemm_gflops_per_s": round(gemm_rate, 1),
        "gemm_fraction_of_peak": round(gemm_rate / peak, 3),
        "ceiling_fraction_of_gemm_peak": round(useful[-1] / parts["gemm_s"] / 1e9 / peak, 3),
        "other_aten_s": round(parts["other_aten_s"], 4), "other_ops": parts["other_ops"],
        "gemm_shapes": parts["gemm_shapes"],
        "page_faults": faults[:-1], "page_faults_profiled": faults[-1], "release_memory": args.release_memory, "heap": heap_label(),
        "new_tokens": args.new_tokens, "prompts": args.prompts, "group": args.group, "threads": args.threads,
        "load_avg_1m": rl_step.load_average(), "torch": torch.__version__,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
