"""How alignbench's GRPO iteration time grows when the response length or the batch doubles.

The iteration, model and prompts are those of ``benchmarks/rl_step.py`` (rollout with the KV cache,
reference log-probs, GRPO advantages, clipped loss with KL, one AdamW step). Three workloads run in
alternating rounds so that load drift hits them alike: the base (``--prompts`` x ``--group``,
``--new-tokens``), twice the new tokens, and twice the prompts. A doubling costs at most about 2x
when nothing in the iteration is quadratic in practice: the KV cache keeps each decode step to one
token's work (attention over the cache grows linearly per step), and the scoring and training
passes are linear in the sequence length up to attention.

    python benchmarks/scaling.py [--prompts 8 --group 4 --new-tokens 32 --reps 3]

Last stdout line: JSON with ``time_ratio_2x_tokens``, ``time_ratio_2x_batch`` and the medians.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rl_step import AlignbenchGRPO, build_workload, load_average  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--beta", type=float, default=0.04)
    parser.add_argument("--mode", choices=["full", "lora"], default="full")
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--engine", default="auto")
    parser.add_argument("--reps", type=int, default=3, help="rounds; each round times every workload once")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=384)
    parser.add_argument("--intermediate", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=6)
    parser.add_argument("--heads", type=int, default=6)
    args = parser.parse_args()
    args.model = "tiny_llama"  # rl_step's built Llama of --hidden/--layers (its SmolLM2 workload is rl_step's own)
    torch.set_num_threads(args.threads)
    load_before = load_average()

    variants = {"base": {}, "2x_tokens": {"new_tokens": 2 * args.new_tokens}, "2x_batch": {"prompts": 2 * args.prompts}}
    with tempfile.TemporaryDirectory(prefix="alignbench-scaling-") as tmp:
        folder = Path(tmp) / "model"
        wide = copy.copy(args)
        wide.prompts = 2 * args.prompts
        tokenizer, prompts, _, params_m = build_workload(wide, folder)
        runners = {}
        for name, change in variants.items():
            settings = copy.copy(args)
            for key, value in change.items():
                setattr(settings, key, value)
            runner = AlignbenchGRPO(settings, folder, tokenizer, prompts[: settings.prompts])
            runner.step()  # warm-up
            runners[name] = runner
        times = {name: [] for name in variants}
        tokens = {name: [] for name in variants}
        for _ in range(args.reps):
            for name, runner in runners.items():
                times[name].append(runner.step())
                tokens[name].append(runner.last["tokens"])

    median = {name: statistics.median(values) for name, values in times.items()}
    print(json.dumps({
        "time_ratio_2x_tokens": round(median["2x_tokens"] / median["base"], 3),
        "time_ratio_2x_batch": round(median["2x_batch"] / median["base"], 3),
        "base_s_per_iter": round(median["base"], 3), "2x_tokens_s_per_iter": round(median["2x_tokens"], 3),
        "2x_batch_s_per_iter": round(median["2x_batch"], 3),
        "generated_tokens": {name: int(statistics.median(values)) for name, values in tokens.items()},
        "prompts": args.prompts, "group": args.group, "new_tokens": args.new_tokens, "beta": args.beta,
        "mode": args.mode, "model_params_m": round(params_m, 2), "threads": args.threads, "reps": args.reps,
        "load_avg_1m_before": load_before, "load_avg_1m_after": load_average(),
    }))


if __name__ == "__main__":
    main()
