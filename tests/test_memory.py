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
