"""Peak memory of the Safe RLHF role set: one shared base + LoRA adapters vs six full copies.

The six roles of PPO-Lagrangian (policy, reference, reward model, cost model, reward critic, cost
critic) are built on the same Llama-architecture model, each mode in its own fresh process; each
trainable role (policy and both critics) then takes one AdamW step so optimiser state is counted.
Peak RSS is read from the kernel (ru_maxrss) and reported both as the whole process and as the part
above the process's footprint after imports (what the roles themselves cost).

    python benchmarks/memory.py [--hidden 512 --layers 8 --vocab 32000]

Last stdout line: JSON with shared_peak_mb, full_copies_peak_mb, ratio (of the role costs) and the
absolute peaks.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def measure(mode: str, hidden: int, layers: int, vocab: int) -> dict:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from alignbench.algorithms.ppo import SafeRLHF
    from alignbench.config import ModelConfig
    from alignbench.models.roles import RoleSet

    import peft  # noqa: F401 - imported lazily by RoleSet: load it before the baseline, so the roles' cost is theirs

    torch.set_num_threads(2)
    baseline = peak_mb()
    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 4 // 1,
                         num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64),
                         num_key_value_heads=max(1, hidden // 64), max_position_embeddings=512)
    base = LlamaForCausalLM(config)
    params_m = sum(p.numel() for p in base.parameters()) / 1e6
    specs = SafeRLHF.role_specs(type("S", (), {"critics": ("reward_critic", "cost_critic")})())
    roles = RoleSet(base, specs, ModelConfig(adapters=(mode == "shared")))
    ids = torch.randint(0, vocab, (4, 64))
    mask = torch.ones_like(ids)
    for role in ("policy", "reward_critic", "cost_critic"):
        optimizer = torch.optim.AdamW(roles.parameters_of(role), lr=1e-4)
        if role == "policy":
            loss = roles.lm_logits(role, ids, mask).float().logsumexp(-1).mean()
        else:
            loss = roles.scores(role, ids, mask).pow(2).mean()
        loss.backward()
        optimizer.step()
    with torch.no_grad():  # frozen roles forward too
        roles.lm_logits("reference", ids, mask)
        roles.scores("reward_model", ids, mask)
        roles.scores("cost_model", ids, mask)
    return {"mode": mode, "peak_mb": peak_mb(), "baseline_mb": baseline, "params_m": params_m}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=32000)
    parser.add_argument("--mode", choices=["shared", "full"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mode:  # child process: measure one mode and print its JSON
        print(json.dumps(measure(args.mode, args.hidden, args.layers, args.vocab)))
        return
    results = {}
    for mode in ("shared", "full"):
        out = subprocess.run([sys.executable, __file__, "--mode", mode, "--hidden", str(args.hidden),
                              "--layers", str(args.layers), "--vocab", str(args.vocab)],
                             capture_output=True, text=True, check=True)
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    shared = results["shared"]["peak_mb"] - results["shared"]["baseline_mb"]
    full = results["full"]["peak_mb"] - results["full"]["baseline_mb"]
    print(json.dumps({
        "shared_peak_mb": round(shared, 1), "full_copies_peak_mb": round(full, 1), "ratio": round(shared / full, 3),
        "shared_process_peak_mb": round(results["shared"]["peak_mb"], 1),
        "full_process_peak_mb": round(results["full"]["peak_mb"], 1),
        "process_ratio": round(results["shared"]["peak_mb"] / results["full"]["peak_mb"], 3),
        "model_params_m": round(results["shared"]["params_m"], 1), "roles": 6,
    }))


if __name__ == "__main__":
    main()
