"""Preemption: SIGTERM/SIGUSR1/SIGUSR2 -> checkpoint, ``status: preempted``, exit 75; the same command
(``resume=auto``, the default) finishes the run. Ctrl-C -> ``status: interrupted``, exit 130. SIGKILL in
the middle of a checkpoint write leaves the previous complete checkpoint."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch

from alignbench.errors import EXIT_PREEMPTED, Interrupted, Preempted
from alignbench.summary import build_summary, read_history, read_summary, write_summary
from alignbench.training import checkpoint as ckpt
from alignbench.training.callbacks import PREEMPTION
from conftest import compose, run_cli, stop_during_training

STEPS = 10
COMMAND = ["algo=safe_rlhf", "experiment=smoke", f"algo.steps={STEPS}", "algo.batch_size=8", "logger=none",
           "eval.enabled=false", "trainer.num_threads=1", "trainer.checkpoint_every=3"]


def _rl_rows(out: Path) -> list[dict]:
    return [row for row in read_history(out) if row["stage"] == "rl"] if (out / "history.jsonl").exists() else []


def test_slurm_sigusr2_exits_75_for_requeue_and_the_same_command_continues(tmp_path, stage_cache):
    # submitit (hydra/launcher=slurm) signals preemption with SIGUSR2, then requeues the same command
    code, stderr, seconds_to_exit = stop_during_training(
        [*COMMAND, f"hydra.run.dir={tmp_path}"], tmp_path, lambda process: process.send_signal(signal.SIGUSR2))
    assert code == EXIT_PREEMPTED, stderr[-3000:]
    assert seconds_to_exit < 60, seconds_to_exit  # at the end of the current iteration (about a second here)
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.startswith("alignbench:")]
    assert len(lines) == 1 and lines[0].startswith("alignbench: preempted: received SIGUSR2 during training")
    summary = read_summary(tmp_path)
    assert summary["status"] == "preempted" and "rerun the same command" in summary["error"]
    saved = ckpt.load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    stopped = saved["iteration"]
    assert 1 <= stopped < STEPS and summary["checkpoint"].endswith("last.ckpt")
    assert max(row["iteration"] for row in _rl_rows(tmp_path)) == stopped  # stopped at that iteration's end

    resumed = run_cli([*COMMAND, f"hydra.run.dir={tmp_path}"])  # the very same command: no resume flag
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming stage 'rl' from {tmp_path / 'checkpoints' / 'last.ckpt'} (iteration {stopped}/{STEPS})" \
        in resumed.stdout
    summary = read_summary(tmp_path)
    assert summary["status"] == "ok" and summary["error"] is None
    rows = _rl_rows(tmp_path)
    assert [row["iteration"] for row in rows] == list(range(1, STEPS + 1))  # each iteration exactly once
    steps = [row["step"] for row in read_history(tmp_path)]
    assert steps == sorted(steps) and len(set(steps)) == len(steps)  # one monotonic step for W&B
    assert ckpt.load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["iteration"] == STEPS
    assert summary["metrics"]["train/nan_skipped"] == 0.0 and "train/lambda" in summary["metrics"]


def test_a_signal_outside_training_stops_at_once_and_handlers_are_restored():
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGINT)}
    for sig, kind, code in ((signal.SIGUSR1, Preempted, 75), (signal.SIGUSR2, Preempted, 75),
                            (signal.SIGINT, Interrupted, 130)):  # Ctrl-C while loading or evaluating
        with PREEMPTION.installed():
            with pytest.raises(kind, match="outside training") as info:
                os.kill(os.getpid(), sig)
                time.sleep(1)  # the handler runs here
        assert type(info.value) is kind and info.value.exit_code == code
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_inside_training_a_signal_only_sets_a_flag():
    with PREEMPTION.deferred() as guard:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.1)
        assert guard.requested and guard.signal_name == "SIGTERM"
    PREEMPTION.reset()


def test_ctrl_c_in_training_waits_for_the_iteration_end_a_second_one_stops_at_once(capfd):
    with PREEMPTION.deferred() as guard:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)
        assert guard.signal_name == "SIGINT" and "stopping at the end of this iteration" in capfd.readouterr().err
        with pytest.raises(Interrupted, match="twice during training; stopped at once") as info:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)
        assert info.value.exit_code == 130 and info.value.status == "interrupted"
        os.kill(os.getpid(), signal.SIGTERM)  # a preemption signal outranks Ctrl-C: the job must be requeued
        time.sleep(0.1)
        stop = guard.stop("during training")
        assert type(stop) is Preempted and stop.exit_code == 75
    PREEMPTION.reset()


def test_the_signal_is_handed_on_to_the_launcher_handler_it_replaced():
    # submitit installs its own SIGUSR2 handler (checkpoint the submission, scontrol requeue, exit);
    # after alignbench's checkpoint and summary, forward() calls it with the signal
    seen = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: seen.append(signum))
    try:
        with PREEMPTION.deferred() as guard:
            os.kill(os.getpid(), signal.SIGUSR2)
            time.sleep(0.1)
            assert seen == []  # alignbench's handler ran, not submitit's
            guard.forward()
        assert seen == [signal.SIGUSR2]
    finally:
        signal.signal(signal.SIGUSR2, previous)
        PREEMPTION.reset()


def test_sigkill_in_the_middle_of_a_save_keeps_the_previous_checkpoint(tmp_path):
    def state(iteration):
        return {"format": ckpt.FORMAT, "version": ckpt.VERSION, "stage": "rl", "iteration": iteration,
                "num_iterations": 9, "roles": {"policy/w": torch.randn(64, 64)}, "fingerprint": {}}

    manager = ckpt.CheckpointManager(tmp_path)
    manager.save(state(2), 2)
    pid = os.fork()
    if pid == 0:  # child: die half-way through writing the next checkpoint
        real_save = torch.save

        def dying_save(obj, handle, *args, **kwargs):
            real_save(obj, handle, *args, **kwargs)
            handle.truncate(handle.tell() // 2)
            handle.flush()
            os.kill(os.getpid(), signal.SIGKILL)

        torch.save = dying_save
        try:
            manager.save(state(4), 4)
        finally:
            os._exit(3)  # never reached
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert any(p.name.endswith(".tmp") for p in tmp_path.iterdir())  # the half-written file
    loaded, path = ckpt.find_resume_state(tmp_path, resume=True, stage="rl", fingerprint={}, num_iterations=9)
    assert path.name == "last.ckpt" and loaded["iteration"] == 2
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())  # cleaned up on resume


def test_resume_of_a_finished_job_does_nothing(tmp_path, stage_cache, monkeypatch, capsys):
    from alignbench import cli

    overrides = [*COMMAND, "resume=true"]
    write_summary(tmp_path, build_summary(algo="safe_rlhf", model="tiny", data="world", seed=0, status="ok",
                                          metrics={"eval/helpfulness": 0.5}))
    before = (tmp_path / "summary.json").read_text()
    monkeypatch.setattr(cli, "_hydra_info", lambda: (str(tmp_path), False, overrides, "run"))
    assert cli.main(compose(overrides, tmp_path, stage_cache)) is None
    assert "nothing to resume" in capsys.readouterr().err
    assert (tmp_path / "summary.json").read_text() == before and not (tmp_path / "history.jsonl").exists()


def test_preempted_summaries_are_valid_and_need_a_reason():
    from alignbench.summary import validate_summary

    good = build_summary(algo="a", model="m", data="d", seed=0, status="preempted", error="received SIGTERM")
    assert validate_summary(good) == []
    assert validate_summary({**good, "error": None}) == ["a job with status 'preempted' must carry an error message"]
    assert validate_summary({**good, "status": "interrupted", "error": None}) == [
        "a job with status 'interrupted' must carry an error message"]
    assert json.loads(json.dumps(good))["status"] == "preempted"
