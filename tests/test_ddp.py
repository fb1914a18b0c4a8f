"""trainer=ddp on the CPU (2 processes, gloo): same trajectory as one process, sweeps, stage cache,
preemption of both ranks and an exact resume (trainer=fsdp: tests/test_fsdp.py)."""

from __future__ import annotations

import fcntl
import json
import os
import signal
import threading
from pathlib import Path

import pytest
import torch

import alignbench.algorithms  # noqa: F401  (registers algorithms)
from alignbench.summary import read_summary
from alignbench.training import checkpoint as ckpt
from alignbench.training.stages import cached_stage
from alignbench.utils.distributed import job_argv
from conftest import run_cli, stop_during_training
from test_resume import assert_same

# Near-greedy rollouts (temperature 1e-6) take sampling noise out of the comparison: with sampling, one
# process and two ranks draw different random numbers for the same rows. Advantage whitening is
# batch-level (local under DDP), so it is off here; everything else is the smoke Safe RLHF run.
RL = ["algo=safe_rlhf", "experiment=smoke", "algo.steps=4", "algo.batch_size=8", "algo.whiten_advantages=false",
      "algo.rollout.temperature=1e-6", "logger=none"]
TRACKED = ("train/lambda", "train/J_C", "losses/policy/policy_loss", "losses/reward_critic/value_loss", "losses/cost_critic/value_loss",
           "train/reward", "train/episode_cost")


def _rl_history(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "history.jsonl").read_text().splitlines()]
    return [row for row in rows if row.get("stage") == "rl"]


@pytest.mark.slow
def test_ddp_gives_the_single_process_trajectory(tmp_path):
    cache = tmp_path / "cache"  # empty: the DDP run trains the SFT, reward and cost stages on both ranks
    env = {"ALIGNBENCH_CACHE": str(cache)}
    ddp = run_cli([*RL, "trainer=ddp", f"hydra.run.dir={tmp_path / 'ddp'}"], env=env, timeout=1500)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    # the stages were written once, by rank 0, and both ranks trained them together
    assert sorted(p.name.split("-")[0] for p in (cache / "stages").iterdir() if not p.name.startswith(".")) == [
        "cost_model", "reward_model", "sft"]
    assert not [p for p in (cache / "stages").iterdir() if p.name.startswith(".") and not p.name.endswith(".lock")]
    assert "GLOBAL_RANK: 1" in (tmp_path / "ddp" / "train_ddp_process_1.log").read_text()

    one = run_cli([*RL, "trainer.num_threads=1", "eval.enabled=false", f"hydra.run.dir={tmp_path / 'one'}"],
                  env=env, timeout=1500)
    assert one.returncode == 0, one.stderr[-3000:]
    summary = read_summary(tmp_path / "one")
    assert summary["metrics"]["stages/sft/cached"] == 1.0  # the DDP run's stages, loaded

    ddp_rows, one_rows = _rl_history(tmp_path / "ddp"), _rl_history(tmp_path / "one")
    assert [r["iteration"] for r in ddp_rows] == [r["iteration"] for r in one_rows] == [1, 2, 3, 4]
    for ddp_row, one_row in zip(ddp_rows, one_rows):
        for key in TRACKED:
            assert ddp_row[key] == pytest.approx(one_row[key], rel=1e-3, abs=1e-4), (ddp_row["iteration"], key)
        # token counts are summed over ranks: the global batch's
        assert ddp_row["perf/gen_tokens"] == one_row["perf/gen_tokens"]
    assert ddp_rows[-1]["train/lambda"] != ddp_rows[0]["train/lambda"]  # the multiplier did move

    # rank 0 evaluated and wrote the summary; the worker wrote none of its own
    ddp_summary = read_summary(tmp_path / "ddp")
    assert ddp_summary["status"] == "ok" and "eval/unsafe_rate" in ddp_summary["metrics"]


# sampling at temperature 1 with the threshold d = 0: each rank's generator, RNG and cost window differ
PREEMPTIBLE = ["algo=safe_rlhf", "experiment=smoke", "algo.steps=4", "algo.batch_size=8", "algo.lagrange.threshold=0.0",
               "algo.lagrange.window=16", "logger=none", "trainer=ddp", "eval.enabled=false",
               "trainer.checkpoint_every=1"]
VOLATILE = ("timing/", "perf/tokens_per_s", "perf/peak_rss_mb")


def _children(pid: int) -> list[int]:
    kids = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            kids += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            pass
    return kids


def _stable(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "step" and not k.startswith(VOLATILE)} for row in rows]


@pytest.mark.slow
def test_ddp_sigterm_to_both_ranks_exits_75_and_the_resume_is_exact(tmp_path, stage_cache):
    straight, preempted = tmp_path / "straight", tmp_path / "preempted"
    done = run_cli([*PREEMPTIBLE, f"hydra.run.dir={straight}"], timeout=1500)
    assert done.returncode == 0, done.stderr[-3000:]

    workers = []

    def sigterm_to_every_process(process) -> None:  # what SLURM and Kubernetes do
        workers.extend(_children(process.pid))
        assert len(workers) == 1  # rank 1, launched by Lightning
        for pid in (process.pid, *workers):
            os.kill(pid, signal.SIGTERM)

    code, stderr, seconds = stop_during_training([*PREEMPTIBLE, f"hydra.run.dir={preempted}"], preempted,
                                                 sigterm_to_every_process)
    assert code == 75 and seconds < 60, (code, seconds, stderr[-3000:])
    print(f"DDP SIGTERM -> exit {code} after {seconds:.1f} s")
    assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
    lines = [line for line in stderr.splitlines() if line.startswith("alignbench:")]
    assert len(lines) == 1 and lines[0].startswith("alignbench: preempted: received SIGTERM during training; "
                                                   "checkpoint"), lines  # rank 0 speaks; rank 1 says nothing
    assert "no checkpoint yet" not in stderr and "Traceback" not in stderr
    summary = read_summary(preempted)
    assert summary["status"] == "preempted" and summary["worker_exit_codes"] == [75]  # rank 1 exited 75 too
    saved = ckpt.load_checkpoint(preempted / "checkpoints" / "last.ckpt")
    stopped = saved["iteration"]
    assert 1 <= stopped < 4 and saved["world_size"] == 2 and len(saved["ranks"]) == 1
    # each rank's own state is in the file, and it differs: a resume from rank 0's alone would diverge
    assert saved["ranks"][0]["component"]["lagrange"]["costs"] != saved["component"]["lagrange"]["costs"]

    resumed = run_cli([*PREEMPTIBLE, f"hydra.run.dir={preempted}"], timeout=1500)  # the same command
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.count(f"resuming stage 'rl' from {preempted / 'checkpoints' / 'last.ckpt'} "
                                f"(iteration {stopped}/4)") == 1
    rows_straight, rows_resumed = _stable(_rl_history(straight)), _stable(_rl_history(preempted))
    assert [r["iteration"] for r in rows_resumed] == [1, 2, 3, 4]
    assert rows_resumed == rows_straight  # every metric of every iteration, lambda included, bit for bit
    final_straight = ckpt.load_checkpoint(straight / "checkpoints" / "last.ckpt")
    final_resumed = ckpt.load_checkpoint(preempted / "checkpoints" / "last.ckpt")
    for key in ("roles", "optimizers", "component", "ranks"):
        assert_same(final_straight[key], final_resumed[key], key)
    print("lambda per iteration:", [round(r["train/lambda"], 6) for r in rows_resumed])


@pytest.mark.slow
def test_ddp_multirun_runs_each_job_once(tmp_path, stage_cache):
    result = run_cli(["-m", "seed=1,2", "trainer=ddp", "experiment=smoke", "algo=safe_rlhf", "algo.steps=2",
                      "algo.batch_size=8", "logger=none", f"hydra.sweep.dir={tmp_path}"], timeout=2400)
    assert result.returncode == 0, result.stderr[-3000:]
    jobs = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    assert [p.name for p in jobs] == ["0", "1"]  # no worker started a sweep of its own
    for job, seed in zip(jobs, (1, 2)):
        summary = read_summary(job)
        assert summary["status"] == "ok" and summary["seed"] == seed
        assert "eval/unsafe_rate" in summary["metrics"] and "train/lambda" in summary["metrics"]
        # this job's worker ran in this job's directory
        assert "GLOBAL_RANK: 1" in (job / "train_ddp_process_1.log").read_text()
    assert read_summary(jobs[0])["metrics"]["train/lambda"] != read_summary(jobs[1])["metrics"]["train/lambda"]


def test_job_argv_is_the_current_job_alone():
    argv = ["run.py", "-m", "seed=1,2", "--config-name", "config", "trainer=ddp", "hydra.sweep.dir=/x"]
    assert job_argv(argv, ["seed=2", "trainer=ddp"]) == ["run.py", "--config-name", "config", "seed=2", "trainer=ddp"]
    assert job_argv(["run.py", "--multirun", "a=1,2"], ["a=1"]) == ["run.py", "a=1"]


def test_rank_shares_make_up_the_single_process_batch():
    from torch.utils.data import BatchSampler, RandomSampler

    from alignbench.data.datamodule import RankShareBatchSampler

    def batches(rank=None, world=1):
        sampler = RandomSampler(range(50), num_samples=24, generator=torch.Generator().manual_seed(3))
        base = BatchSampler(sampler, 8, drop_last=False)
        return list(base) if rank is None else list(RankShareBatchSampler(base, rank, world))

    single, first, second = batches(), batches(0, 2), batches(1, 2)
    assert len(first) == len(second) == len(single) == 3
    assert [a + b for a, b in zip(first, second)] == single


def test_a_worker_rank_never_waits_on_the_stage_lock(tmp_path, monkeypatch):
    # rank 0 holds the lock while the ranks train the stage together: a worker must not block on it,
    # must train too, and must not write the entry
    root = tmp_path / "stages"
    root.mkdir()
    monkeypatch.setenv("LOCAL_RANK", "1")
    done = {}

    def worker():
        done["result"] = cached_stage(str(tmp_path), "sft-abc", lambda: ({"w": torch.ones(1)}, {"m": 1.0}))

    with open(root / ".sft-abc.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # what rank 0 does around its training
        thread = threading.Thread(target=worker, daemon=True)
        thread.start()
        thread.join(timeout=30)
        fcntl.flock(held, fcntl.LOCK_UN)
    assert "result" in done, "the worker blocked on rank 0's stage lock"
    weights, metrics, cached = done["result"]
    assert not cached and metrics == {"m": 1.0}
    assert not (root / "sft-abc").exists()  # only rank 0 writes entries
