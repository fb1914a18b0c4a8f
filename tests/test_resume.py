"""Exact resume: N iterations straight == k iterations, preempted, resumed to N — for every algorithm.

Each case runs in-process (``run_job``) three times on model=tiny: straight to N in one output dir;
then in another dir up to iteration k, where the test sends itself SIGTERM or SIGUSR1 (the real
preemption path: checkpoint at the end of the iteration, ``Preempted``), and again with
``resume=auto``. On CPU with fixed seeds everything is deterministic, so the comparison is bitwise:
the RL stage's ``history.jsonl`` rows (all metrics but wall-clock timings), lambda, the final
trainable weights, optimiser states and the component's own state (generators, counters, pools).

Also here: the checkpoint files themselves (what they hold, atomic writes, corrupted/truncated/unsafe
files, checksums and the fallback past a corrupted one, config and data mismatches, resume=false over
existing checkpoints) and the data position.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

import alignbench.algorithms  # noqa: F401 - registers the algorithms
from alignbench.config import validate_config
from alignbench.errors import CheckpointError, Preempted
from alignbench.registry import ALGORITHMS
from alignbench.training import checkpoint as ckpt
from conftest import compose

COMMON = ["experiment=smoke", "logger=none", "eval.enabled=false", "trainer.num_threads=1",
          "trainer.checkpoint_every=1"]
PPO_SMALL = ["algo.steps=4", "algo.batch_size=8"]
# name -> (overrides, fit stage that is interrupted, N iterations, stop after k, signal)
CASES = {
    "sft": (["algo=sft", "stage=sft", "stages.sft.steps=6", "stages.sft.batch_size=8", "stages.reuse=false"],
            "sft", 6, 3, signal.SIGUSR1),
    "ppo": (["algo=ppo", *PPO_SMALL], "rl", 4, 2, signal.SIGTERM),
    "safe_rlhf": (["algo=safe_rlhf", *PPO_SMALL, "algo.lagrange.window=12"], "rl", 4, 2, signal.SIGUSR1),
    "repo": (["algo=repo", *PPO_SMALL], "rl", 4, 1, signal.SIGTERM),
    "waltzrl": (["algo=waltzrl", "algo.steps=4", "algo.batch_size=4"], "rl", 4, 2, signal.SIGTERM),
    "triplay": (["algo=triplay", "algo.iterations=1", "algo.phase_steps={red: 1, blue: 1, eval: 1}",
                 "algo.attacker_warmup_steps=2", "algo.evaluator_warmup_steps=1", "algo.warmup_batch_size=4",
                 "algo.batch_size=2", "algo.group_size=2", "algo.eval_replay=2", "algo.phase_metrics=false",
                 "algo.warmup_cache=false"], "rl", 5, 3, signal.SIGUSR1),
}
REGISTERED = [name for name in CASES if name in ALGORITHMS.names()]
VOLATILE = ("timing/", "perf/tokens_per_s", "perf/peak_rss_mb")  # wall-clock and memory measurements: the only keys allowed to differ


def make_rc(overrides: list[str], out: Path, cache: Path, resume: bool = False):
    cfg = compose([*COMMON, *overrides, f"resume={str(resume).lower()}"], out, cache)
    return validate_config(cfg, ALGORITHMS.get(cfg.algo.name).config_class)


def run(rc, *, stop_at: tuple[str, int, int] | None = None, monkeypatch=None, captured=None):
    """``run_job`` with a sink writing history.jsonl; ``stop_at=(stage, k, signal)`` preempts there."""
    from alignbench.config import LoggerConfig
    from alignbench.training import pipeline
    from alignbench.training.module import AlignmentModule
    from alignbench.training.sink import MetricsSink

    original = AlignmentModule.training_step
    if stop_at is not None:
        def training_step(self, batch, batch_idx):
            original(self, batch, batch_idx)
            if self.stage == stop_at[0] and self.iteration == stop_at[1]:
                os.kill(os.getpid(), stop_at[2])  # as a scheduler would; handled at the iteration end
        monkeypatch.setattr(AlignmentModule, "training_step", training_step)
    if captured is not None:  # the SFT stage's final weights (they go to the cache, not a checkpoint)
        train_stage = pipeline._train_stage

        def recording(stage, ctx, seed):
            weights, metrics = train_stage(stage, ctx, seed)
            captured[stage] = weights
            return weights, metrics
        monkeypatch.setattr(pipeline, "_train_stage", recording)
    Path(rc.output_dir).mkdir(parents=True, exist_ok=True)
    sink = MetricsSink(LoggerConfig(name="none"), rc.output_dir, run_name="t", group="t", job_type="t", config={})
    try:
        return pipeline.run_job(rc, sink)
    finally:
        sink.finish()
        if monkeypatch is not None:
            monkeypatch.setattr(AlignmentModule, "training_step", original)
            if captured is not None:
                monkeypatch.setattr(pipeline, "_train_stage", train_stage)


def stage_rows(out: Path, stage: str) -> list[dict]:
    rows = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k != "step" and not k.startswith(VOLATILE)}
            for row in rows if row["stage"] == stage]


def assert_same(a, b, where: str = "") -> None:
    """Bitwise equality of nested checkpoint content."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), f"{where} differs"
    elif isinstance(a, dict):
        assert set(a) == set(b), f"{where}: keys {sorted(set(a) ^ set(b))[:5]}"
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for index, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{index}]")
    else:
        assert a == b or (a != a and b != b), f"{where}: {a!r} != {b!r}"


@pytest.mark.parametrize("name", REGISTERED)
def test_resume_matches_an_uninterrupted_run(name, tmp_path, stage_cache, monkeypatch):
    overrides, stage, total, stop, sig = CASES[name]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    straight_weights, resumed_weights = {}, {}
    run(make_rc(overrides, straight, stage_cache), monkeypatch=monkeypatch, captured=straight_weights)

    with pytest.raises(Preempted) as info:
        run(make_rc(overrides, resumed, stage_cache), stop_at=(stage, stop, sig), monkeypatch=monkeypatch)
    assert signal.Signals(sig).name in str(info.value) and "rerun the same command" in str(info.value)
    directory = ckpt.checkpoint_dir(resumed, stage)
    partial = ckpt.load_checkpoint(directory / "last.ckpt")
    assert partial["iteration"] == stop and partial["num_iterations"] == total
    assert partial["data"]["consumed_batches"] == stop
    (directory / ".last.ckpt.99999.tmp").write_bytes(b"half a checkpoint")  # a save killed half-way
    with (resumed / "history.jsonl").open("a") as handle:  # a row logged after the checkpoint
        handle.write(json.dumps({"step": 999, "stage": stage, "iteration": stop + 1, "x": 1.0}) + "\n")

    run(make_rc(overrides, resumed, stage_cache, resume=True), monkeypatch=monkeypatch, captured=resumed_weights)

    rows_straight, rows_resumed = stage_rows(straight, stage), stage_rows(resumed, stage)
    assert [r["iteration"] for r in rows_resumed] == [r["iteration"] for r in rows_straight]
    assert sorted({r["iteration"] for r in rows_resumed if r["iteration"] > 0}) == list(range(1, total + 1))
    for a, b in zip(rows_straight, rows_resumed):
        assert_same(a, b, f"history iteration {a['iteration']}")
    assert all(v == 0 for r in rows_straight for k, v in r.items() if k.endswith("/nan_skipped"))
    if stage == "rl":
        final_a = ckpt.load_checkpoint(straight / "checkpoints" / "last.ckpt")
        final_b = ckpt.load_checkpoint(resumed / "checkpoints" / "last.ckpt")
        assert final_a["iteration"] == final_b["iteration"] == total
        for key in ("roles", "optimizers", "schedulers", "component", "data", "nan"):
            assert_same(final_a[key], final_b[key], key)
        assert_same(final_a["rng"]["torch"], final_b["rng"]["torch"], "rng")
        if "lagrange" in final_a["component"]:
            assert any("train/lambda" in r for r in rows_straight)
            assert final_a["component"]["lagrange"]["calls"] == total
        # no frozen weights: only trainable roles, adapters and heads
        trainable = {key.split("/")[0] for key in final_a["roles"]}
        assert "reward_model" not in trainable and "cost_model" not in trainable
        assert not any("base_layer" in key or "embed_tokens" in key for key in final_a["roles"])
    else:
        assert_same(straight_weights[stage], resumed_weights[stage], f"{stage} weights")
        assert not directory.exists()  # stage checkpoints are dropped once the stage is cached


# ---------------------------------------------------------------------------------- data position
def test_resumed_sampler_yields_exactly_the_unconsumed_batches():
    from types import SimpleNamespace

    from alignbench.data.datamodule import ComponentDataModule

    items = list(range(13))
    component = SimpleNamespace(train_items=lambda: items, num_iterations=7, batch_size=4, collate=list)
    full = [b for b in ComponentDataModule(component, seed=5).train_dataloader()]
    assert len(full) == 7 and sum(len(b) for b in full) == 28  # iterations x batch_size, reshuffled per pass
    for start in (1, 3, 6, 7):
        tail = [b for b in ComponentDataModule(component, seed=5, start_iteration=start).train_dataloader()]
        assert tail == full[start:]


# ---------------------------------------------------------------------------------- checkpoint files
def _state(iteration: int) -> dict:
    return {"format": ckpt.FORMAT, "version": ckpt.VERSION, "stage": "rl", "iteration": iteration,
            "num_iterations": 10, "roles": {"policy/adapter.w": torch.full((3,), float(iteration))},
            "component": {"lagrange": {"log_lambda": torch.tensor(0.5, dtype=torch.float64), "costs": [1.0]}},
            "rng": ckpt.capture_rng(), "fingerprint": {"algo": "a"}, "data_fingerprint": "fedcba9876543210"}


def test_manager_keeps_last_and_numbered_and_prunes(tmp_path):
    manager = ckpt.CheckpointManager(tmp_path, keep=2)
    for iteration in (1, 2, 3, 4):
        manager.save(_state(iteration), iteration)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["iteration-000003.ckpt", "iteration-000004.ckpt",
                                                          "last.ckpt"]
    assert ckpt.load_checkpoint(manager.latest())["iteration"] == 4
    (tmp_path / "last.ckpt").unlink()  # without last.ckpt the highest numbered one is the latest
    assert manager.latest().name == "iteration-000004.ckpt"


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "bit_flip"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_newest_intact_one(tmp_path, damage, capsys):
    manager = ckpt.CheckpointManager(tmp_path)
    for iteration in (1, 2, 3):
        manager.save(_state(iteration), iteration)
    last, third = tmp_path / "last.ckpt", tmp_path / "iteration-000003.ckpt"
    assert last.stat().st_ino == third.stat().st_ino  # the numbered copy is a hard link: the same bytes
    data = bytearray(last.read_bytes())
    if damage == "truncated":
        data = data[: len(data) // 2]
    elif damage == "garbage":
        data = bytearray(os.urandom(len(data)))
    elif damage == "empty":
        data = bytearray()
    else:  # one flipped bit inside a tensor's data: the file still unpickles, only the checksum sees it
        raw = torch.full((3,), 3.0).numpy().tobytes()
        offset = bytes(data).index(raw)
        data[offset + 1] ^= 0x04
    last.write_bytes(bytes(data))  # in place: the hard link iteration-000003.ckpt is damaged too
    with pytest.raises(ckpt.CorruptCheckpointError) as info:
        ckpt.load_checkpoint(last)
    assert str(last) in str(info.value) and "\n" not in str(info.value)
    if damage == "bit_flip":
        assert "checksum" in str(info.value)
    state, path = ckpt.find_resume_state(tmp_path, resume=True, stage="rl", fingerprint={"algo": "a"},
                                         num_iterations=10)
    assert path.name == "iteration-000002.ckpt" and state["iteration"] == 2  # never the hard link of the bad one
    (line,) = [line for line in capsys.readouterr().out.splitlines() if line.startswith("alignbench:")]
    assert str(last) in line and "resuming from the newest intact checkpoint" in line
    assert "iteration-000003.ckpt" not in line and str(path) in line


def test_no_intact_checkpoint_left_is_one_line_naming_distinct_files_only(tmp_path):
    manager = ckpt.CheckpointManager(tmp_path)
    manager.save(_state(1), 1)
    manager.save(_state(2), 2)
    (tmp_path / "iteration-000001.ckpt").write_bytes(b"")
    (tmp_path / "last.ckpt").write_bytes(b"broken")  # iteration-000002.ckpt is the same file
    with pytest.raises(CheckpointError) as info:
        ckpt.find_resume_state(tmp_path, resume=True, stage="rl", fingerprint={"algo": "a"}, num_iterations=10)
    message = str(info.value)
    assert "\n" not in message and "no intact checkpoint is left" in message and "iteration-000001.ckpt" in message
    assert "iteration-000002.ckpt" not in message  # a hard link of last.ckpt is no alternative


def test_a_checkpoint_of_another_program_is_refused_not_skipped(tmp_path):
    manager = ckpt.CheckpointManager(tmp_path)
    manager.save(_state(1), 1)
    (tmp_path / "last.ckpt").unlink()
    torch.save({"state_dict": {"w": torch.zeros(2)}}, tmp_path / "last.ckpt")
    with pytest.raises(CheckpointError, match="not written by alignbench"):
        ckpt.find_resume_state(tmp_path, resume=True, stage="rl", fingerprint={"algo": "a"}, num_iterations=10)


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch /tmp/alignbench-pwned",))


def test_checkpoint_with_arbitrary_objects_is_refused_not_executed(tmp_path):
    path = tmp_path / "last.ckpt"
    marker = Path("/tmp/alignbench-pwned")
    marker.unlink(missing_ok=True)
    with open(path, "wb") as handle:
        torch.save({"format": ckpt.FORMAT, "payload": _Exploit()}, handle)
    with pytest.raises(CheckpointError, match="refused"):
        ckpt.load_checkpoint(path)
    assert not marker.exists()


def test_numpy_rng_and_python_rng_round_trip_through_a_checkpoint(tmp_path):
    import random

    import numpy as np

    state = _state(1)
    state["extra"] = {"array": np.arange(4.0), "scalar": np.float64(2.5)}
    ckpt.atomic_save(state, tmp_path / "last.ckpt")
    loaded = ckpt.load_checkpoint(tmp_path / "last.ckpt")
    assert np.array_equal(loaded["extra"]["array"], np.arange(4.0))
    expected = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    ckpt.restore_rng(loaded["rng"])
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expected


def test_resume_refuses_another_config_and_fresh_runs_refuse_to_overwrite(tmp_path):
    manager = ckpt.CheckpointManager(tmp_path)
    manager.save(_state(3), 3)
    with pytest.raises(CheckpointError, match="algo changed"):
        ckpt.find_resume_state(tmp_path, resume=True, stage="rl", fingerprint={"algo": "b"}, num_iterations=10)
    with pytest.raises(CheckpointError, match="this run has 20"):
        ckpt.find_resume_state(tmp_path, resume=True, stage="rl", fingerprint={"algo": "a"}, num_iterations=20)
    with pytest.raises(CheckpointError, match="resume=auto"):
        ckpt.find_resume_state(tmp_path, resume=False, stage="rl", fingerprint={"algo": "a"}, num_iterations=10)
    with pytest.raises(CheckpointError, match="trained on other data") as info:
        ckpt.find_resume_state(tmp_path, resume=True, stage="rl", fingerprint={"algo": "a"}, num_iterations=10,
                               data_fingerprint="0123456789abcdef")
    assert "\n" not in str(info.value) and "data.path" in str(info.value)
    two_ranks = {**_state(3), "world_size": 2, "ranks": [{"component": {}, "rng": {}}]}
    with pytest.raises(CheckpointError, match="written by 2 DDP rank\\(s\\), this run has 1"):
        ckpt.check_world_size(two_ranks, tmp_path / "last.ckpt", 1)
    ckpt.check_world_size({**two_ranks, "iteration": 10}, tmp_path / "last.ckpt", 1)  # finished: weights only
    state, path = ckpt.find_resume_state(tmp_path, resume=True, stage="rl", fingerprint={"algo": "a"},
                                         num_iterations=10)
    assert state["iteration"] == 3 and path == tmp_path / "last.ckpt"
    empty = tmp_path / "empty"
    assert ckpt.find_resume_state(empty, resume=True, stage="rl", fingerprint={}, num_iterations=1) == (None, None)


def test_fingerprint_ignores_settings_that_may_change_on_resume(composed):
    base = ckpt.config_fingerprint(composed(["algo=safe_rlhf"]))
    assert ckpt.config_fingerprint(composed(["algo=safe_rlhf", "trainer.checkpoint_every=5", "resume=true",
                                             "trainer.num_threads=1", "logger=none", "max_nan_steps=9"])) == base
    changed = ckpt.config_fingerprint(composed(["algo=safe_rlhf", "algo.kl_coef=0.1"]))
    assert changed["algo"] != base["algo"] and changed["model"] == base["model"]


def test_history_rewind_drops_rows_past_the_checkpoint(tmp_path):
    history = tmp_path / "history.jsonl"
    rows = [{"step": 1, "stage": "sft", "iteration": 5}, {"step": 2, "stage": "rl", "iteration": 1},
            {"step": 3, "stage": "rl", "iteration": 2}, {"step": 4, "stage": "rl", "iteration": 3}]
    history.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 5, "sta')  # killed mid-write
    with history.open("a") as sink_handle:  # a sink holding the file open in append mode keeps working
        assert ckpt.rewind_history(history, "rl", 2) == 2
        sink_handle.write(json.dumps({"step": 4, "stage": "rl", "iteration": 3}) + "\n")
    kept = [json.loads(line) for line in history.read_text().splitlines()]
    assert [(r["stage"], r["iteration"]) for r in kept] == [("sft", 5), ("rl", 1), ("rl", 2), ("rl", 3)]
    assert ckpt.last_history_step(history) == 4

