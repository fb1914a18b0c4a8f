"""utils.memory: freed tensors held in glibc's heap go back to the OS (the fused copy's rebuilds rely on it)."""

from __future__ import annotations

import os

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
    seen = []

    def stop(*args, **kwargs):
        seen.append(memory.releasing())
        raise RuntimeError("stop after the settings")

    monkeypatch.setattr(pipeline, "build_context", stop)
    cfg = composed(["experiment=smoke", "logger=none", "trainer.release_memory=false"])
    rc = validate_config(cfg, ALGORITHMS.get(cfg.algo.name).config_class)
    with pytest.raises(RuntimeError, match="stop after the settings"):
        pipeline.run_job(rc, sink=None)
    assert seen == [False]
