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
0.15-0.23 million (151-153 GFLOP/s) when they were held (glibc's default heap). So a training step does not
trim (``in_training_step``, around every ``AlignmentModule.training_step``): the pages its rollout and its
rebuild free are the ones its own training pass takes next. Stage ends, evaluation and the export still
trim; on the SmolLM2 smoke job the peak forms in evaluation (``perf/peak_rss_mb`` per step, summary.json).
``trainer.release_memory_in_steps=true`` trims inside the steps too (the default before 2026-12-06), and
``set_release(False)`` (``trainer.release_memory=false``, ``rl_step.py --release-memory off``) turns every
call here into a no-op for a job that has the memory to spare.

**The heap every command starts with** (``exec_with_tuned_heap``). torch's CPU allocator asks glibc for
64-byte aligned blocks (``posix_memalign``); glibc carves each from a block 96 bytes larger and frees the
unaligned head (16-48 bytes) into the thread's cache (tcache), where it is never merged with its
neighbours. A freed tensor's block then cannot be joined to the free space beside it, the next request
of the same size is 96 bytes too large for it, and glibc takes fresh pages from the top of the heap: a 12 MB
tensor allocated and freed in a loop costs 3,072 page faults every time. Blocks over 32 MB (the LM
head's ``[tokens, 49152]`` logits on SmolLM2, 396 MB for 2,012 tokens; the tied embedding's gradients)
are ``mmap``-ed and unmapped at every free. So each training pass paged all its large tensors in anew.
``HEAP_TUNABLES`` turn the tcache off (small freed chunks go to fastbins, which glibc merges), serve every
block up to 1 GiB from the heap and leave the heap's top to ``return_freed_memory`` (no automatic
trim below 4 GiB): freed blocks are reused, and what goes back to the OS, and when, is this module's
choice (``trainer.release_memory``). SmolLM2's GRPO training phase: 14.3 -> 13.5 s with the trims,
12.7 -> 11.4 s without them (``benchmarks/README.md``). glibc reads its tunables only when a process
starts, hence the re-exec; ``ALIGNBENCH_HEAP=system`` keeps glibc's defaults.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import functools
import os
import resource
import sys

__all__ = ["HEAP_TUNABLES", "exec_with_tuned_heap", "heap_label", "heap_tuned", "in_training_step", "peak_rss_mb",
           "releasing", "releasing_in_steps", "return_freed_memory", "set_release"]

#: glibc malloc tunables (name, value) every alignbench command starts under (module docstring)
HEAP_TUNABLES = (
    ("glibc.malloc.tcache_count", "0"),
    ("glibc.malloc.mmap_threshold", str(1 << 30)),
    ("glibc.malloc.trim_threshold", str(4 << 30)),
)
#: environment switch: ``tuned`` (default) re-executes under ``HEAP_TUNABLES``, ``system`` keeps glibc's defaults
HEAP_SWITCH = "ALIGNBENCH_HEAP"

_RELEASE = [True]  # trainer.release_memory of the running job (set_release)
_IN_STEPS = [False]  # trainer.release_memory_in_steps of the running job (set_release)
_STEP_DEPTH = [0]  # > 0 inside a training step (in_training_step)


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


def peak_rss_mb() -> float:
    """This process's peak resident set so far, MB (``ru_maxrss``): ``perf.peak_rss_mb`` of a job's summary,
    ``perf/peak_rss_mb`` of each training step in its history (where it rose says which step set the peak)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def set_release(enabled: bool, in_steps: bool = False) -> None:
    """Whether ``return_freed_memory`` trims (``trainer.release_memory``), and whether it also trims inside a
    training step (``trainer.release_memory_in_steps``); the job sets both at its start."""
    _RELEASE[0], _IN_STEPS[0] = bool(enabled), bool(in_steps)


def releasing() -> bool:
    return _RELEASE[0]


def releasing_in_steps() -> bool:
    return _RELEASE[0] and _IN_STEPS[0]


@contextlib.contextmanager
def in_training_step():
    """Mark a training step (``AlignmentModule.training_step``, the benchmarks' iterations): inside it
    ``return_freed_memory`` trims only under ``trainer.release_memory_in_steps``.

    A step's trims (after its rollout's decode, before the fused copy's rebuild after the last update) hand
    back pages the step's own training pass allocates again at once, each through a page fault: on SmolLM2's
    GRPO step 0.6-0.7 million faults and 11.5 -> 14.1 s of training (``benchmarks/train_profile.py``). Stage
    ends, evaluation and the export still trim, which is where a job's peak forms (``perf/peak_rss_mb``)."""
    _STEP_DEPTH[0] += 1
    try:
        yield
    finally:
        _STEP_DEPTH[0] -= 1


def return_freed_memory() -> bool:
    """Release the heap's free pages to the OS; True when glibc did (False: nothing to release, no glibc,
    ``set_release(False)``, or inside a training step without ``in_steps``)."""
    if not _RELEASE[0] or (_STEP_DEPTH[0] and not _IN_STEPS[0]):
        return False
    trim = _malloc_trim()
    return bool(trim(0)) if trim is not None else False


def _heap_choice() -> str:
    choice = os.environ.get(HEAP_SWITCH, "tuned").strip().lower() or "tuned"
    if choice not in ("tuned", "system"):
        raise SystemExit(f"alignbench: error: environment variable {HEAP_SWITCH}={os.environ[HEAP_SWITCH]!r}: "
                         "expected 'tuned' (the default) or 'system'")
    return choice


def _tunable_names(value: str) -> set[str]:
    return {item.split("=", 1)[0] for item in value.split(":") if "=" in item}


def heap_tuned() -> bool:
    """Whether this process started under ``HEAP_TUNABLES`` (each name set in ``GLIBC_TUNABLES``, a value
    the user exported for one of them kept)."""
    return {name for name, _ in HEAP_TUNABLES} <= _tunable_names(os.environ.get("GLIBC_TUNABLES", ""))


def heap_label() -> str:
    """``"tuned"`` or ``"system"``: the heap this process runs on, for the benchmarks' JSON."""
    return "tuned" if heap_tuned() else "system"


def exec_with_tuned_heap() -> None:
    """Replace this process by the same command under ``HEAP_TUNABLES`` (module docstring), once.

    Call it first thing in an entry point, before anything large is allocated: ``run.py`` / the
    ``alignbench`` command and the speed benchmarks. Nothing happens when the tunables are already in
    ``GLIBC_TUNABLES`` (the re-executed process, a DDP rank started from it), when ``ALIGNBENCH_HEAP=system``,
    without glibc, or when the command cannot be run again (an interactive interpreter, a script on
    stdin). ``GLIBC_TUNABLES`` the user exported are kept, their values first.
    """
    if _heap_choice() == "system" or heap_tuned() or _malloc_trim() is None:
        return
    command = list(getattr(sys, "orig_argv", []))
    if len(command) < 2 or sys.argv[0] in ("", "-") or sys.flags.interactive:
        return
    current = os.environ.get("GLIBC_TUNABLES", "")
    have = _tunable_names(current)
    added = [f"{name}={value}" for name, value in HEAP_TUNABLES if name not in have]
    env = {**os.environ, "GLIBC_TUNABLES": ":".join(filter(None, [current, *added]))}
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execve(sys.executable, [sys.executable, *command[1:]], env)
    except OSError as error:  # no usable sys.executable: run on, under glibc's defaults (perf.heap_tuned 0.0)
        print(f"alignbench: warning: could not restart {sys.executable!r} under the tuned heap ({error}); "
              f"running with glibc's default heap", file=sys.stderr)
