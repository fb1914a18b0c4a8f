"""utils.memory: freed tensors held in glibc's heap go back to the OS (the fused copy's rebuilds rely on it)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from alignbench.utils.memory import _malloc_trim, return_freed_memory


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(_malloc_trim() is None or not os.path.exists("/proc/self/statm"), reason="needs glibc and /proc")
def test_freed_heap_blocks_leave_the_rss_after_a_trim():
    big = torch.ones(4 << 20)
    del big  # a freed 16 MB block raises glibc's mmap threshold: 4 MB tensors now come from the heap
    blocks = [torch.ones(1 << 20) for _ in range(64)]  # 256 MB, touched
    keep = torch.ones(1 << 20)  # the heap's top stays in use, so only a trim in the middle can release the rest
    held = _rss_mb()
    del blocks
    freed_not_returned = _rss_mb()
    assert return_freed_memory()
    returned = _rss_mb()
    assert held - freed_not_returned < 64  # glibc kept the freed blocks
    assert freed_not_returned - returned > 192  # the trim gave back most of the 256 MB
    del keep


@pytest.mark.skipif(_malloc_trim() is None or not os.path.exists("/proc/self/statm"), reason="needs glibc and /proc")
def test_release_off_keeps_the_freed_pages(monkeypatch):
    """``trainer.release_memory=false`` (``set_release(False)``): every trim is a no-op, the pages stay."""
    from alignbench.utils import memory

    monkeypatch.setattr(memory, "_RELEASE", [True])  # restored after the test
    monkeypatch.setattr(memory, "_IN_STEPS", [False])
    big = torch.ones(4 << 20)
    del big
    blocks = [torch.ones(1 << 20) for _ in range(64)]
    keep = torch.ones(1 << 20)
    del blocks
    freed_not_returned = _rss_mb()
    memory.set_release(False)
    assert not memory.releasing()
    assert memory.return_freed_memory() is False
    assert freed_not_returned - _rss_mb() < 32  # still held
    memory.set_release(True)
    assert memory.return_freed_memory()
    assert freed_not_returned - _rss_mb() > 192
    del keep


def test_a_job_applies_trainer_release_memory(composed, monkeypatch):
    """``run_job`` sets the switch from the job's config before anything allocates."""
    from alignbench.config import validate_config
    from alignbench.registry import ALGORITHMS
    from alignbench.training import pipeline
    from alignbench.utils import memory

    import alignbench.algorithms  # noqa: F401 - registers every algorithm

    monkeypatch.setattr(memory, "_RELEASE", [True])
    monkeypatch.setattr(memory, "_IN_STEPS", [False])
    seen = []

    def stop(*args, **kwargs):
        seen.append((memory.releasing(), memory.releasing_in_steps()))
        raise RuntimeError("stop after the settings")

    monkeypatch.setattr(pipeline, "build_context", stop)
    for overrides, expected in ((["trainer.release_memory=false"], (False, False)),
                                (["trainer.release_memory_in_steps=true"], (True, True)), ([], (True, False))):
        cfg = composed(["experiment=smoke", "logger=none", *overrides])
        rc = validate_config(cfg, ALGORITHMS.get(cfg.algo.name).config_class)
        with pytest.raises(RuntimeError, match="stop after the settings"):
            pipeline.run_job(rc, sink=None)
        assert seen.pop() == expected, overrides


@pytest.mark.skipif(_malloc_trim() is None or not os.path.exists("/proc/self/statm"), reason="needs glibc and /proc")
def test_a_training_step_keeps_its_freed_pages_unless_in_steps_is_set(monkeypatch):
    """Inside ``in_training_step`` the trims wait (the step's next pass reuses the pages) unless
    ``trainer.release_memory_in_steps``; outside it they trim as before."""
    from alignbench.utils import memory

    monkeypatch.setattr(memory, "_RELEASE", [True])
    monkeypatch.setattr(memory, "_IN_STEPS", [False])

    def freed_heap():  # 256 MB freed in the middle of the heap, a live block above it
        big = torch.ones(4 << 20)
        del big
        blocks = [torch.ones(1 << 20) for _ in range(64)]
        keep = torch.ones(1 << 20)
        del blocks
        return keep

    keep = freed_heap()
    before = _rss_mb()
    with memory.in_training_step():
        with memory.in_training_step():  # nested: still inside the step
            assert memory.return_freed_memory() is False
        assert memory.return_freed_memory() is False
    assert before - _rss_mb() < 32  # held through the step
    assert memory.return_freed_memory() and before - _rss_mb() > 192  # after it: trimmed
    memory.set_release(True, in_steps=True)
    keep = freed_heap()
    before = _rss_mb()
    with memory.in_training_step():
        assert memory.return_freed_memory() and before - _rss_mb() > 192
    del keep


def test_the_training_module_runs_each_step_inside_the_scope():
    """``AlignmentModule.training_step`` marks the algorithm's step (its rollout and update) as one."""
    from types import SimpleNamespace

    from alignbench.algorithms.base import AlgorithmComponent
    from alignbench.training.module import AlignmentModule
    from alignbench.utils import memory

    class Peeking(AlgorithmComponent):
        seen: list = []

        def training_step(self, batch, host):
            self.seen.append(memory._STEP_DEPTH[0])
            return {}

        def monitor(self):
            self.seen.append(memory._STEP_DEPTH[0])
            return {}

    module = AlignmentModule(Peeking(SimpleNamespace(steps=1, batch_size=1), SimpleNamespace(signals=None)),
                             None, None, "rl")
    module._step_schedulers = lambda: None  # no Lightning trainer attached here
    module.training_step("batch", 0)
    assert Peeking.seen == [1, 0] and memory._STEP_DEPTH[0] == 0


TUNED = ("glibc.malloc.tcache_count=0:glibc.malloc.mmap_threshold=1073741824:"
         "glibc.malloc.trim_threshold=4294967296")
glibc_only = pytest.mark.skipif(_malloc_trim() is None, reason="glibc's tunables")


@glibc_only
def test_a_command_starts_itself_again_once_under_the_heap_tunables(monkeypatch):
    """``exec_with_tuned_heap``: the same interpreter and arguments, GLIBC_TUNABLES added, then never again."""
    from alignbench.utils import memory

    calls = []

    def execve(path, argv, env):
        calls.append((path, argv, env))
        raise SystemExit("replaced")

    monkeypatch.setattr(memory.os, "execve", execve)
    monkeypatch.setattr(memory.sys, "orig_argv", ["python3", "run.py", "algo=repo", "seed=2"])
    monkeypatch.setattr(memory.sys, "argv", ["run.py", "algo=repo", "seed=2"])
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.delenv("ALIGNBENCH_HEAP", raising=False)
    assert not memory.heap_tuned()
    with pytest.raises(SystemExit, match="replaced"):
        memory.exec_with_tuned_heap()
    path, argv, env = calls[0]
    assert path == sys.executable and argv == [sys.executable, "run.py", "algo=repo", "seed=2"]
    assert env["GLIBC_TUNABLES"] == TUNED and env["PATH"] == os.environ["PATH"]

    monkeypatch.setenv("GLIBC_TUNABLES", env["GLIBC_TUNABLES"])  # the process it started: runs on
    memory.exec_with_tuned_heap()
    assert len(calls) == 1 and memory.heap_tuned()

    # a user's own tunables stay, theirs first (glibc takes a name's first value)
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.tcache_count=2:glibc.cpu.x86_shstk=off")
    with pytest.raises(SystemExit, match="replaced"):
        memory.exec_with_tuned_heap()
    assert calls[1][2]["GLIBC_TUNABLES"] == ("glibc.malloc.tcache_count=2:glibc.cpu.x86_shstk=off:"
                                             "glibc.malloc.mmap_threshold=1073741824:"
                                             "glibc.malloc.trim_threshold=4294967296")

    monkeypatch.delenv("GLIBC_TUNABLES")
    monkeypatch.setenv("ALIGNBENCH_HEAP", "system")  # the user's choice: glibc's defaults
    memory.exec_with_tuned_heap()
    monkeypatch.setenv("ALIGNBENCH_HEAP", "tuned")
    monkeypatch.setattr(memory.sys, "argv", ["-"])  # a script on stdin cannot be read twice
    memory.exec_with_tuned_heap()
    assert len(calls) == 2
    monkeypatch.setenv("ALIGNBENCH_HEAP", "fast")
    with pytest.raises(SystemExit, match="ALIGNBENCH_HEAP='fast': expected 'tuned' \\(the default\\) or 'system'"):
        memory.exec_with_tuned_heap()


@glibc_only
def test_a_restart_that_fails_runs_on_under_glibc_s_heap_and_says_so(monkeypatch, capsys):
    from alignbench.utils import memory

    def execve(path, argv, env):
        raise FileNotFoundError(2, "No such file or directory")

    monkeypatch.setattr(memory.os, "execve", execve)
    monkeypatch.setattr(memory.sys, "orig_argv", ["python3", "run.py"])
    monkeypatch.setattr(memory.sys, "argv", ["run.py"])
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    monkeypatch.delenv("ALIGNBENCH_HEAP", raising=False)
    memory.exec_with_tuned_heap()  # returns: the command goes on
    warning = capsys.readouterr().err
    assert "could not restart" in warning and "glibc's default heap" in warning
    assert not memory.heap_tuned() and memory.heap_label() == "system"


def test_the_command_line_entry_point_tunes_the_heap_before_anything_else(monkeypatch):
    from alignbench import app
    from alignbench.utils import memory

    def stop():
        raise RuntimeError("heap first")

    monkeypatch.setattr(memory, "exec_with_tuned_heap", stop)
    monkeypatch.setattr(sys, "argv", ["run.py", "algo=no_such_algo"])
    with pytest.raises(RuntimeError, match="heap first"):
        app.main()


PAGE_FAULTS_CHILD = """
import resource
from alignbench.utils.memory import exec_with_tuned_heap, heap_tuned
exec_with_tuned_heap()
import torch
faults = []
for _ in range(8):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    logits, block = torch.ones(100 << 20), torch.ones(3 << 20)  # 400 MB (an LM head's output), 12 MB
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    del logits, block
print(heap_tuned(), *faults)
"""


@glibc_only
@pytest.mark.parametrize("heap", ["tuned", "system"])
def test_under_the_tuned_heap_a_freed_tensor_s_pages_are_reused(heap):
    """The reason for the tunables: with glibc's defaults every 12 MB and 400 MB tensor of a loop takes fresh
    pages (page faults: 3,072 + 102,400 each time, measured); tuned, the heap settles within the next two rounds
    (one of them pages in once more, as the freed blocks and their alignment fragments merge), then takes none."""
    env = {key: value for key, value in os.environ.items() if key != "GLIBC_TUNABLES"}
    done = subprocess.run([sys.executable, "-c", PAGE_FAULTS_CHILD], capture_output=True, text=True, timeout=300,
                          env={**env, "ALIGNBENCH_HEAP": heap})
    assert done.returncode == 0, done.stderr[-2000:]
    tuned, *faults = done.stdout.split()
    faults = [int(count) for count in faults]
    assert tuned == str(heap == "tuned")
    fresh_pages = (100 << 20) * 4 // os.sysconf("SC_PAGE_SIZE")  # 102,400 of 4 KB
    assert faults[0] > 0.9 * fresh_pages  # the first time, every page is new
    if heap == "tuned":
        assert sum(faults[1:3]) < 1.1 * fresh_pages and max(faults[3:]) < 0.01 * fresh_pages
    else:
        assert min(faults[1:]) > 0.9 * fresh_pages
