"""trainer=fsdp on the CPU (FSDP2 over 2 gloo ranks): sharding and releasing a RoleSet, the single-process
trajectory within tolerance, rollouts / scoring / evaluation on shards, checkpoint and resume."""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import pytest
import torch

import alignbench.algorithms  # noqa: F401  (registers algorithms)
from alignbench.config import ModelConfig, TinyArchConfig, validate_config
from alignbench.errors import ConfigError
from alignbench.registry import ALGORITHMS
from alignbench.summary import read_summary
from conftest import run_cli

# as tests/test_ddp.py: near-greedy rollouts, no batch-level whitening, the smoke Safe RLHF run
RL = ["algo=safe_rlhf", "experiment=smoke", "algo.steps=4", "algo.batch_size=8", "algo.whiten_advantages=false",
      "algo.rollout.temperature=1e-6", "logger=none"]
TRACKED = ("train/lambda", "train/J_C", "losses/policy/policy_loss", "losses/reward_critic/value_loss",
           "losses/cost_critic/value_loss", "train/reward", "train/episode_cost")
# The FSDP run decodes with the model's forward and scores with plain forwards; one process uses the
# fused CPU passes, packed scoring and shared prompts. Same maths, different float rounding: 1e-3 relative.
TOLERANCE = dict(rel=1e-3, abs=1e-4)


def _rl_history(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    return [row for row in rows if row.get("stage") == "rl"]


# ----------------------------------------------------------------------------- sharding a RoleSet
def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _hooks(module: torch.nn.Module) -> list[int]:
    return [len(getattr(m, name)) for m in module.modules() for name in (
        "_forward_pre_hooks", "_forward_hooks", "_state_dict_pre_hooks", "_load_state_dict_pre_hooks",
        "_load_state_dict_post_hooks")]


def _shard_and_release(rank: int, world: int, port: int, out: str) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import DTensor

    from alignbench.models.roles import RoleSet, RoleSpec
    from alignbench.models.sharding import shard_roles, sharded_bytes, unshard_roles
    from alignbench.models.tiny import build_tiny_llama, build_word_tokenizer
    from alignbench.rl.rollout import generate_rollout
    from alignbench.utils.distributed import broadcast_tensors_

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    tokenizer = build_word_tokenizer([f"w{i}" for i in range(40)])
    base = build_tiny_llama(tokenizer, TinyArchConfig(hidden_size=32, intermediate_size=64, num_attention_heads=4,
                                                      num_key_value_heads=4), seed=0)
    torch.manual_seed(rank)  # each rank draws different adapters and heads: shard_roles takes rank 0's
    roles = RoleSet(base, [RoleSpec("policy"), RoleSpec("critic", "score")], ModelConfig())
    with torch.no_grad():  # non-zero adapters, so the policy differs from the reference
        for name, param in roles.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    drawn = float(sum(p.sum() for p in roles.parameters() if p.requires_grad))
    broadcast_tensors_([p for p in roles.parameters() if p.requires_grad])  # what shard_roles starts with
    ids = torch.randint(4, len(tokenizer), (4, 6), generator=torch.Generator().manual_seed(rank))
    mask = torch.ones_like(ids)

    def outputs() -> dict[str, torch.Tensor]:
        with torch.no_grad():
            with roles.generation_model("policy") as model:
                rollout = generate_rollout(model, ids, mask, max_new_tokens=5, eos_token_id=3, pad_token_id=0,
                                           do_sample=False, engine="lean")
            return {"logits": roles.lm_logits("policy", ids, mask), "reference": roles.lm_logits("reference", ids, mask),
                    "scores": roles.scores("critic", ids, mask), "rollout": rollout.response_ids.float()}

    whole, hooks, state = outputs(), _hooks(roles), roles.role_state_dict("policy")
    bytes_whole = sharded_bytes(roles)
    shard_roles(roles, init_device_mesh("cpu", (world,)))
    sharded = outputs()
    result = {
        "trainable_sums": [drawn, float(sum(p.sum() for p in state.values()))],
        "dtensors": sum(isinstance(p, DTensor) for p in roles.parameters()),
        "bytes": [bytes_whole, sharded_bytes(roles)],
        "sharded_diff": {k: float((sharded[k] - whole[k]).abs().max()) for k in whole},
        "state_diff": max(float((roles.role_state_dict("policy")[k] - v).abs().max()) for k, v in state.items()),
    }
    # one backward + step on the shards, then release: the released model computes what the shards did
    loss = roles.lm_logits("policy", ids, mask).logsumexp(-1).mean() + roles.scores("critic", ids, mask).mean()
    loss.backward()
    torch.optim.SGD([p for p in roles.parameters() if p.requires_grad], lr=0.5).step()
    trained = outputs()
    unshard_roles(roles)
    released = outputs()
    result["released_diff"] = {k: float((released[k] - trained[k]).abs().max()) for k in trained}
    result["trained_moved"] = float((trained["logits"] - whole["logits"]).abs().max())
    result["hooks_restored"] = _hooks(roles) == hooks
    result["left_dtensors"] = sum(isinstance(p, DTensor) for p in roles.parameters())
    shard_roles(roles, init_device_mesh("cpu", (world,)))  # a released model shards again
    result["reshard_diff"] = float((outputs()["logits"] - released["logits"]).abs().max())
    Path(out, f"rank{rank}.json").write_text(json.dumps(result))
    dist.destroy_process_group()


def test_roles_shard_compute_the_same_and_release_whole(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_shard_and_release, args=(2, _free_port(), str(tmp_path)), nprocs=2)
    results = [json.loads((tmp_path / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    # the ranks drew different adapters; both then worked with rank 0's
    assert results[0]["trainable_sums"][0] != results[1]["trainable_sums"][0]
    assert results[1]["trainable_sums"][1] == results[0]["trainable_sums"][1]
    for result in results:
        assert result["dtensors"] > 0
        whole, local = result["bytes"]
        assert local < 0.6 * whole  # each rank holds about half of every tensor
        assert max(result["sharded_diff"].values()) < 1e-5, result["sharded_diff"]
        assert result["state_diff"] == 0.0  # role_state_dict gathers whole tensors
        assert result["trained_moved"] > 1e-3  # the step on the shards changed the policy
        assert max(result["released_diff"].values()) < 1e-5, result["released_diff"]
        assert result["hooks_restored"] and result["left_dtensors"] == 0
        assert result["reshard_diff"] < 1e-5


# ----------------------------------------------------------------------------- start-up checks
def test_deepspeed_is_refused_naming_fsdp(composed):
    cfg = composed(["algo=safe_rlhf", "trainer.strategy=deepspeed_stage_2"])
    with pytest.raises(ConfigError, match="DeepSpeed allows one optimiser") as error:
        validate_config(cfg, ALGORITHMS.get("safe_rlhf").config_class)
    assert "trainer=fsdp" in str(error.value) and "\n" not in str(error.value)
    assert not (Path(__file__).parents[1] / "conf" / "trainer" / "deepspeed.yaml").exists()


@pytest.mark.parametrize("override, key", [("algo.rollout.engine=fused", "algo.rollout.engine=fused"),
                                           ("eval.generation.engine=vllm", "eval.generation.engine=vllm")])
def test_fsdp_refuses_decoders_that_need_whole_weights(composed, override, key):
    cfg = composed(["algo=safe_rlhf", "trainer=fsdp", override])
    with pytest.raises(ConfigError, match="cannot decode FSDP-sharded weights") as error:
        validate_config(cfg, ALGORITHMS.get("safe_rlhf").config_class)
    assert key in str(error.value)
    assert validate_config(composed(["algo=safe_rlhf", "trainer=fsdp"]),
                           ALGORITHMS.get("safe_rlhf").config_class).trainer.fsdp


@pytest.mark.parametrize("algo", ["waltzrl", "triplay", "single_rl"])
def test_algorithms_whose_ranks_may_diverge_are_refused_under_fsdp(algo):
    from alignbench.config import TrainerConfig
    from alignbench.registry import algorithm_class
    from alignbench.training.strategy import check_strategy

    def check(strategy, name):
        check_strategy(TrainerConfig(strategy=strategy), name, algorithm_class({"name": name}))

    with pytest.raises(ConfigError, match=f"algo={algo} does not run under trainer=fsdp") as error:
        check("fsdp", algo)
    assert "use trainer=ddp" in str(error.value) and "safe_rlhf" in str(error.value)
    check("ddp", algo)
    for ready in ("sft", "ppo", "safe_rlhf", "repo", "reward_shaping"):
        check("fsdp", ready)


# ----------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_fsdp_gives_the_single_process_trajectory_and_resumes(tmp_path):
    cache = tmp_path / "cache"  # empty: the FSDP run trains the SFT, reward and cost stages sharded
    env = {"ALIGNBENCH_CACHE": str(cache)}
    fsdp_args = [*RL, "trainer=fsdp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.num_threads=1",
                 "trainer.checkpoint_every=2"]
    fsdp = run_cli([*fsdp_args, f"hydra.run.dir={tmp_path / 'fsdp'}"], env=env, timeout=1500)
    assert fsdp.returncode == 0, fsdp.stderr[-3000:]
    assert "stage 'rl' roles sharded over 2 ranks" in fsdp.stdout
    assert "GLOBAL_RANK: 1" in (tmp_path / "fsdp" / "train_ddp_process_1.log").read_text()
    summary = read_summary(tmp_path / "fsdp")  # every rank evaluated on the shards, rank 0 wrote it
    assert summary["status"] == "ok" and "eval/unsafe_rate" in summary["metrics"]
    assert len((tmp_path / "fsdp" / "eval_samples.jsonl").read_text().splitlines()) == 24 * 2

    one = run_cli([*RL, "trainer.num_threads=1", "eval.enabled=false", f"hydra.run.dir={tmp_path / 'one'}"],
                  env=env, timeout=1500)
    assert one.returncode == 0, one.stderr[-3000:]
    assert read_summary(tmp_path / "one")["metrics"]["stages/sft/cached"] == 1.0  # the FSDP run's stages

    fsdp_rows, one_rows = _rl_history(tmp_path / "fsdp"), _rl_history(tmp_path / "one")
    assert [r["iteration"] for r in fsdp_rows] == [r["iteration"] for r in one_rows] == [1, 2, 3, 4]
    for fsdp_row, one_row in zip(fsdp_rows, one_rows):
        for key in TRACKED:
            assert fsdp_row[key] == pytest.approx(one_row[key], **TOLERANCE), (fsdp_row["iteration"], key)
        assert fsdp_row["perf/gen_tokens"] == one_row["perf/gen_tokens"]
    assert fsdp_rows[-1]["train/lambda"] != fsdp_rows[0]["train/lambda"]

    # resume: iteration 2's checkpoint (weights and AdamW states gathered whole) in a fresh run dir
    resumed_dir = tmp_path / "resumed"
    (resumed_dir / "checkpoints").mkdir(parents=True)
    shutil.copy(tmp_path / "fsdp" / "checkpoints" / "iteration-000002.ckpt", resumed_dir / "checkpoints" / "last.ckpt")
    resumed = run_cli([*fsdp_args, "eval.enabled=false", "resume=true", f"hydra.run.dir={resumed_dir}"], env=env,
                      timeout=1500)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming stage 'rl'" in resumed.stdout and "(iteration 2/4)" in resumed.stdout
    resumed_rows = _rl_history(resumed_dir)
    assert [r["iteration"] for r in resumed_rows] == [3, 4]
    for resumed_row, fsdp_row in zip(resumed_rows, fsdp_rows[2:]):
        for key in TRACKED:
            assert resumed_row[key] == pytest.approx(fsdp_row[key], rel=1e-6, abs=1e-7), (resumed_row["iteration"], key)
