"""Give the C heap's freed memory back to the operating system (glibc ``malloc_trim``).

glibc serves a CPU tensor of up to 32 MB from its heap once a tensor of that size has been freed (its
``mmap`` threshold rises with every freed large block), and a freed block in the middle of the heap stays
counted in the process's RSS. A job that drops one set of weights and builds another (the fused copy of
``alignbench.rl.fused_llama`` after a policy update or an adapter switch) would then hold both: on the
SmolLM2 safe_rlhf smoke job, 300-460 MB of freed memory sat in the heap before each rebuild
(benchmarks/README.md). ``malloc_trim(0)`` releases every free page of every arena (glibc >= 2.8) and
takes a few milliseconds; call it where a large set of tensors has just been freed.

Its price is paid by the next pass that allocates as much again: every page comes back through a page
fault. Inside an RL iteration that is the update after each rollout: SmolLM2's training pass took 0.8-1.2
million page faults (127-142 GFLOP/s) after the fused copy's rebuild had trimmed the last update's pages,
0.15-0.23 million (151-153 GFLOP/s) when they were held; holding them raised the SmolLM2 smoke job's peak
to 2,059-2,137 MB end to end, over its 2 GB target, so the trims stay by default (benchmarks/README.md).
On the 11M benchmark model the same trims hand 600-670 MB back every iteration and cost 13-20% of its time:
``set_release(False)`` (``trainer.release_memory=false``, ``rl_step.py --release-memory off``) turns every
call here into a no-op for a job that has the memory to spare.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

__all__ = ["releasing", "return_freed_memory", "set_release"]

_RELEASE = [True]  # trainer.release_memory of the running job (set_release)


@functools.cache
def _malloc_trim():
    """glibc's ``malloc_trim``, or None (another C library: musl, macOS)."""
    name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):
        return None
    if trim is not None:
        trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


def set_release(enabled: bool) -> None:
    """Whether ``return_freed_memory`` trims (``trainer.release_memory``; the job sets it at its start)."""
    _RELEASE[0] = bool(enabled)


def releasing() -> bool:
    return _RELEASE[0]


def return_freed_memory() -> bool:
    """Release the heap's free pages to the OS; True when glibc did (False: nothing to release, no glibc,
    or ``set_release(False)``)."""
    if not _RELEASE[0]:
        return False
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False
