"""Memory per rank under trainer=fsdp: a Llama role set (policy + critic on one base, LoRA) whole in one
process vs sharded over N CPU ranks (gloo), through one LoRA training step.

Each rank builds the same base (as every rank of a job loads it), wraps it in a ``RoleSet``, shards it
with ``alignbench.models.sharding.shard_roles`` (N > 1; one process keeps it whole), then runs one policy
forward + backward + AdamW step. Reported per rank: parameter bytes held (``sharded_bytes``), resident
memory (VmRSS) after loading, after sharding and after the step, and the peak (ru_maxrss, which
includes the whole model every rank loads first).

    python benchmarks/fsdp_memory.py [--ranks 2 --hidden 1024 --layers 8 --vocab 32000]

Last stdout line: JSON with one entry per rank count.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import socket
import tempfile
from pathlib import Path


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def _rank(rank: int, world: int, port: int, args, out: str) -> None:
    import torch
    import torch.distributed as dist
    from transformers import LlamaConfig, LlamaForCausalLM

    from alignbench.config import ModelConfig
    from alignbench.models.roles import RoleSet, RoleSpec
    from alignbench.models.sharding import shard_roles, sharded_bytes

    torch.set_num_threads(1)
    if world > 1:
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        dist.init_process_group("gloo", rank=rank, world_size=world)
    config = LlamaConfig(vocab_size=args.vocab, hidden_size=args.hidden, intermediate_size=args.hidden * 11 // 4,
                         num_hidden_layers=args.layers, num_attention_heads=args.hidden // 64,
                         num_key_value_heads=args.hidden // 64, max_position_embeddings=512)
    torch.manual_seed(0)
    base = LlamaForCausalLM(config)
    row = {"rank": rank, "rss_after_load_mb": rss_mb()}
    roles = RoleSet(base, [RoleSpec("policy"), RoleSpec("critic", "score")], ModelConfig())
    row["params_whole_mb"] = sharded_bytes(roles) / 2**20
    if world > 1:
        from torch.distributed.device_mesh import init_device_mesh

        shard_roles(roles, init_device_mesh("cpu", (world,)))
    row["params_local_mb"] = sharded_bytes(roles) / 2**20
    row["rss_after_shard_mb"] = rss_mb()
    ids = torch.randint(0, args.vocab, (4, 64), generator=torch.Generator().manual_seed(rank))
    optimizer = torch.optim.AdamW(roles.parameters_of("policy"), lr=1e-4)
    loss = roles.lm_logits("policy", ids, torch.ones_like(ids)).float().logsumexp(-1).mean()
    loss.backward()
    optimizer.step()
    row["rss_after_step_mb"] = rss_mb()
    row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    Path(out, f"{world}-{rank}.json").write_text(json.dumps({k: round(v, 1) if isinstance(v, float) else v
                                                            for k, v in row.items()}))
    if world > 1:
        dist.destroy_process_group()


def main() -> None:
    import torch.multiprocessing as mp

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--vocab", type=int, default=32000)
    args = parser.parse_args()
    result = {"config": vars(args)}
    with tempfile.TemporaryDirectory() as out:
        for world in (1, args.ranks):
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                port = sock.getsockname()[1]
            mp.spawn(_rank, args=(world, port, args, out), nprocs=world)
            rows = [json.loads(Path(out, f"{world}-{r}.json").read_text()) for r in range(world)]
            result[f"{world}_ranks"] = rows
            print(json.dumps({f"{world}_ranks": rows}), flush=True)
    one, many = result["1_ranks"][0], result[f"{args.ranks}_ranks"]
    result["params_per_rank_ratio"] = round(max(r["params_local_mb"] for r in many) / one["params_local_mb"], 3)
    result["rss_after_step_ratio"] = round(max(r["rss_after_step_mb"] for r in many) / one["rss_after_step_mb"], 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
