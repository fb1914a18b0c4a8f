"""Faults a job on a shared cluster meets, end to end: a second job on a live run directory, Ctrl-C,
data that changed under a resume, a full disk, an unwritable run directory, a busy stage cache."""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

from alignbench.errors import EXIT_INTERRUPTED, StorageError
from alignbench.summary import read_history, read_summary
from alignbench.training import checkpoint as ckpt
from alignbench.utils.files import HeldLock
from conftest import ROOT, run_cli, stop_during_training

COMMAND = ["algo=safe_rlhf", "experiment=smoke", "algo.steps=10", "algo.batch_size=8", "logger=none",
           "eval.enabled=false", "trainer.num_threads=1", "trainer.checkpoint_every=1"]


def _env() -> dict[str, str]:
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    return env


def _alignbench_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("alignbench:")]


def test_a_second_job_on_a_live_run_dir_is_refused_and_ctrl_c_leaves_an_interrupted_summary(tmp_path, stage_cache):
    # the first job must outlive the second one's start-up (it imports every algorithm before Hydra composes):
    # enough iterations that it is still training when the second one asks; Ctrl-C ends it long before
    command = [*COMMAND, "algo.steps=1000", f"hydra.run.dir={tmp_path}"]

    def second_job_then_ctrl_c(process) -> None:
        second = run_cli(command)  # e.g. a requeue while the first still runs
        assert second.returncode == 2
        (line,) = _alignbench_lines(second.stderr)
        assert f"{tmp_path} is in use by another alignbench job, pid {process.pid} on " in line
        assert not (tmp_path / "summary.json").exists()  # the refused job wrote nothing into the live one's dir
        assert process.poll() is None  # and the first job goes on
        process.send_signal(signal.SIGINT)  # Ctrl-C

    code, stderr, seconds = stop_during_training(command, tmp_path, second_job_then_ctrl_c)
    assert code == EXIT_INTERRUPTED and seconds < 60, (code, stderr[-3000:])
    assert "Traceback" not in stderr
    lines = _alignbench_lines(stderr)
    assert lines[0].startswith("alignbench: interrupted: stopping at the end of this iteration with a checkpoint")
    assert len(lines) == 2 and lines[1].startswith("alignbench: interrupted: received SIGINT during training; "
                                                   "checkpoint")
    summary = read_summary(tmp_path)
    assert summary["status"] == "interrupted" and summary["checkpoint"] == str(tmp_path / "checkpoints" / "last.ckpt")
    stopped = ckpt.load_checkpoint(summary["checkpoint"])["iteration"]
    assert stopped == max(row["iteration"] for row in read_history(tmp_path) if row["stage"] == "rl") < 1000


def _pairs(flip: bool) -> str:
    rows = []
    for p in range(40):
        for r in range(2):
            rows.append({"prompt": f"how do i do task {p} ?", "response_0": f"i can not help {r}",
                         "response_1": f"here is task {p} step {r}", "better_response_id": int(flip),
                         "safer_response_id": 0, "is_response_0_safe": True, "is_response_1_safe": bool(r)})
    return "".join(json.dumps(row) + "\n" for row in rows)


def test_resuming_on_changed_data_is_refused_before_anything_trains(tmp_path, stage_cache):
    data = tmp_path / "pairs.jsonl"
    data.write_text(_pairs(flip=False))
    command = ["algo=ppo", "experiment=smoke", "data=preference_jsonl", f"data.path={data}", "eval.judge=keyword",
               "eval.enabled=false", "logger=none", "trainer.num_threads=1", "stages.sft.steps=4",
               "stages.reward_model.steps=2", "algo.steps=1", f"hydra.run.dir={tmp_path / 'run'}"]
    first = run_cli(command)
    assert first.returncode == 0, first.stderr[-3000:]
    entries = sorted(p.name for p in (stage_cache / "stages").iterdir())
    data.write_text(_pairs(flip=True))  # the same file name, other labels
    again = run_cli(command)
    assert again.returncode == 2
    (line,) = _alignbench_lines(again.stderr)  # the rerun of the finished job
    assert line.startswith(f"alignbench: error: checkpoint {tmp_path / 'run' / 'checkpoints' / 'last.ckpt'} was "
                           f"trained on other data (data fingerprint ")
    assert "the contents behind data.path changed" in line and "Traceback" not in again.stderr
    assert sorted(p.name for p in (stage_cache / "stages").iterdir()) == entries  # no stage retrained first
    assert read_summary(tmp_path / "run")["status"] == "ok"  # the finished run's results are left alone

    (tmp_path / "run" / "summary.json").unlink()  # as if preempted after its last checkpoint: refused all the same
    again = run_cli(command)
    assert again.returncode == 2 and "was trained on other data" in again.stderr
    assert sorted(p.name for p in (stage_cache / "stages").iterdir()) == entries


def _fill_disk_at(limit_bytes: int):
    def preexec() -> None:  # in the child: writes past the limit fail (EFBIG) as on a full disk
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))
    return preexec


def test_a_full_disk_during_a_checkpoint_is_one_line_naming_the_file(tmp_path, stage_cache):
    full = subprocess.run([sys.executable, str(ROOT / "run.py"), *COMMAND, f"hydra.run.dir={tmp_path}"], cwd=ROOT,
                          env=_env(), capture_output=True, text=True, timeout=900, preexec_fn=_fill_disk_at(2**20))
    assert full.returncode == 2, full.stderr[-3000:]
    assert "Traceback" not in full.stderr and "unexpected pos" not in full.stderr
    (line,) = _alignbench_lines(full.stderr)
    assert line.startswith("alignbench: error: cannot write ") and "MB free there" in line
    assert str(tmp_path) in line or str(stage_cache) in line  # a checkpoint, or a stage cache entry when cold
    assert not list((tmp_path / "checkpoints").glob(".*.tmp"))  # no half-written file left behind
    assert read_summary(tmp_path)["status"] == "failed"


def test_a_failed_checkpoint_write_keeps_the_previous_one(tmp_path):
    manager = ckpt.CheckpointManager(tmp_path)
    small = {"format": ckpt.FORMAT, "version": ckpt.VERSION, "stage": "rl", "iteration": 1, "num_iterations": 2,
             "roles": {"w": torch.zeros(4)}}
    manager.save(small, 1)
    real_save = torch.save

    def failing(obj, handle, *args, **kwargs):  # what torch's zip writer raises on a full disk
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 2046848 vs 2046740")

    torch.save = failing
    try:
        with pytest.raises(StorageError) as info:
            manager.save({**small, "iteration": 2}, 2)
    finally:
        torch.save = real_save
    assert str(tmp_path / "last.ckpt") in str(info.value) and "\n" not in str(info.value)
    assert ckpt.load_checkpoint(tmp_path / "last.ckpt")["iteration"] == 1
    assert not list(tmp_path.glob(".*.tmp"))


def test_an_unwritable_run_dir_is_one_line_not_a_hydra_traceback(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("")  # a file where a folder should be: no user, root included, can create the run dir
    result = run_cli(["algo=sft", "experiment=smoke", "logger=none", f"hydra.run.dir={blocker / 'run'}"])
    assert result.returncode == 2 and "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.strip()]
    assert line.startswith(f"alignbench: error: cannot write run directory (hydra.run.dir) {blocker / 'run'}: ")


def test_a_job_waiting_for_the_stage_cache_says_who_holds_it(tmp_path, capsys):
    path = tmp_path / ".lock"
    holder = HeldLock(path, "stage cache, sft-0123")
    assert holder.acquire(wait=False)
    entered = threading.Event()

    def waiter() -> None:
        with HeldLock(path, "stage cache, sft-0123"):
            entered.set()

    thread = threading.Thread(target=waiter, daemon=True)
    thread.start()
    time.sleep(0.5)
    assert not entered.is_set()  # it waits ...
    holder.release()
    thread.join(timeout=10)
    assert entered.is_set()  # ... until the holder is done
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("alignbench:")]
    assert line.startswith(f"alignbench: waiting for {path} (stage cache, sft-0123), held by pid {os.getpid()} on ")
