"""Evaluation throughput on model=tiny: 200 world prompts x 4 samples, batched with the KV cache.

    python benchmarks/eval_speed.py [--prompts 200 --samples 4 --batch-size 128]

A random-initialised tiny model rarely emits EOS, so every sample runs to max_new_tokens: the
worst case for generation time. Last stdout line: JSON with seconds, samples, generated tokens and
tokens per second.
"""

from __future__ import annotations

import argparse
import json
import time
from types import SimpleNamespace

import torch

from alignbench.models.text import TextLimits
from alignbench.config import EvalConfig, GenerationConfig, ModelConfig
from alignbench.data.world import SafetyWorld
from alignbench.eval.harness import PolicyResponder, evaluate
from alignbench.eval.judges import WorldJudge
from alignbench.models.loading import load_base
from alignbench.models.roles import RoleSet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=200)
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--engine", default="auto", help="rollout engine: auto (fused on CPU for Llama models) | fused | lean | hf")
    args = parser.parse_args()

    world = SafetyWorld()
    model_cfg = ModelConfig()
    base, tokenizer = load_base(model_cfg, vocabulary=world.vocabulary(), seed=0)
    roles = RoleSet(base, [], model_cfg)
    records = (world.prompts("eval") * 2)[: args.prompts]
    eval_cfg = EvalConfig(samples_per_prompt=args.samples, batch_size=args.batch_size,
                          generation=GenerationConfig(max_new_tokens=args.max_new_tokens, engine=args.engine))

    def decode(ids, mask):
        return [tokenizer.decode([t for t, m in zip(row, keep) if m], skip_special_tokens=True)
                for row, keep in zip(ids.tolist(), mask.tolist())]

    ctx = SimpleNamespace(tokenizer=tokenizer, model_cfg=model_cfg, device=torch.device("cpu"), eval_cfg=eval_cfg,
                          limits=TextLimits.for_model(model_cfg), decode=decode)
    responder = PolicyResponder(ctx, roles, role="reference")
    started = time.perf_counter()
    result = evaluate(responder, records, WorldJudge(world=world), eval_cfg, seed=0)
    seconds = time.perf_counter() - started
    print(json.dumps({"prompts": len(records), "samples_per_prompt": args.samples, "seconds": round(seconds, 2),
                      "generated_tokens": result.generated_tokens,
                      "tokens_per_s": round(result.generated_tokens / seconds, 1),
                      "threads": torch.get_num_threads(), "engine": args.engine}))


if __name__ == "__main__":
    main()
