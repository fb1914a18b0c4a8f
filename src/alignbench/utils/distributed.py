"""Data-parallel helpers (``trainer=ddp``): ranks, gradient and metric averaging, one job per launch.

Every function is a no-op (or returns the single-process answer) when ``torch.distributed`` is not
initialised, so the same code runs in one process and under DDP. Ranks are read from the process
group once Lightning has set it up, and from the launcher's environment (``RANK``, or ``NODE_RANK``
and ``LOCAL_RANK``) before that.

DDP design in alignbench (see also ``benchmarks/README.md``):

* Lightning's subprocess launcher re-runs the command line in each extra rank at the first
  ``trainer.fit``. ``alignbench.cli`` makes that command exactly the current job (no ``-m``), so a
  worker rank runs one job and exits; between multirun jobs the parent tears the process group
  down so that the next job launches fresh workers (``job_launch_scope``).
* Every rank trains uncached stages together; only rank 0 holds the stage-cache lock and writes the
  entry, and the hit/miss decision is rank 0's (``alignbench.training.stages``).
* Each rank rolls out its share of every RL batch (``batch_size / world_size`` prompts: the same
  prompts a single process would use, split in order). Gradients of each optimiser are averaged
  across ranks in ``AlignmentModule.optimize`` (DDP's reducer is bypassed: it cannot follow several
  optimisers with disjoint parameters under manual optimisation), the Lagrange multiplier averages
  J_C across ranks (``all_reduce_mean``), logged metrics are rank means (token counts: sums), and
  only rank 0 logs, evaluates and writes the summary.
* Stopping: at every iteration end the ranks take the largest signal number any of them received
  (``max_over_ranks``), so a preemption or Ctrl-C stops all of them at the same boundary; a checkpoint
  gathers each rank's own state to rank 0 (``gather_objects``). Rank 0 then stops Lightning's
  child-process observer (``release_workers``: it would SIGKILL rank 0 within 5 s of a worker exiting
  75) and reports the workers' exit codes (``wait_for_workers``).

FSDP (``trainer=fsdp``, ``alignbench.models.sharding``) keeps the same data split, but the weights are
DTensor shards: every forward all-gathers them, so all ranks run the same sequence of forwards
(rollouts stop when every rank's rows have finished: ``any_rank``), gradients are reduce-scattered
by FSDP itself, and reading a weight whole (checkpoints, stage outputs, export) is a collective
(``full_tensor``, ``gathered``) that every rank calls.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Any, Iterator

import torch

LAUNCH_ENV = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def is_distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _slurm_tasks() -> int:
    """Tasks of this SLURM job step (srun / submitit start one process per rank): 0 outside SLURM."""
    return int(os.environ.get("SLURM_NTASKS", "0") or 0) if "SLURM_PROCID" in os.environ else 0


def world_size() -> int:
    if is_distributed():
        return torch.distributed.get_world_size()
    if os.environ.get("WORLD_SIZE"):
        return int(os.environ["WORLD_SIZE"])
    return max(1, _slurm_tasks())


def rank() -> int:
    """Global rank: the process group's, else the launcher's environment, else 0.

    Before the process group exists the value is exact with ``RANK`` or ``LOCAL_WORLD_SIZE`` set;
    otherwise it is still 0 exactly for the first process of the first node (all that callers ask).
    """
    if is_distributed():
        return torch.distributed.get_rank()
    if os.environ.get("RANK"):
        return int(os.environ["RANK"])
    if _slurm_tasks() > 1:  # hydra/launcher=slurm with several tasks: each task is a rank
        return int(os.environ["SLURM_PROCID"])
    local = int(os.environ.get("LOCAL_RANK", "0") or 0)
    node = int(os.environ.get("NODE_RANK", "0") or 0)
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", "0") or 0)
    return node * max(per_node, local + 1) + local


def is_rank_zero() -> bool:
    return rank() == 0


def _device_for_collectives() -> torch.device:
    backend = torch.distributed.get_backend()
    return torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")


def all_reduce_mean(value: torch.Tensor) -> torch.Tensor:
    """Mean of ``value`` over ranks (identity in one process); used for the Lagrange J_C."""
    if not is_distributed() or world_size() == 1:
        return value
    tensor = value.detach().to(_device_for_collectives(), torch.float64).clone()
    torch.distributed.all_reduce(tensor)
    return (tensor / world_size()).to(value.device, value.dtype)


def all_reduce_gradients_(params: list[torch.nn.Parameter]) -> None:
    """Average the gradients of ``params`` over ranks in place (one flat all-reduce).

    A parameter without a gradient on this rank contributes zeros, so every rank reduces tensors
    of the same shapes whatever its local batch touched.
    """
    if not is_distributed() or world_size() == 1:
        return
    params = [p for p in params if p.requires_grad]
    if not params:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    grads = [p.grad for p in params]
    flat = torch._utils._flatten_dense_tensors(grads)
    torch.distributed.all_reduce(flat)
    flat /= world_size()
    for grad, reduced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
        grad.copy_(reduced)


SUMMED_METRICS = ("perf/gen_tokens", "perf/train_tokens", "perf/tokens_per_s")


def mean_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """Metric dicts averaged key by key over ranks (token counts and throughput summed).

    Ranks may report different keys (e.g. per-category rates of categories only one rank saw); a
    key is averaged over the ranks that report it.
    """
    if not is_distributed() or world_size() == 1:
        return metrics
    gathered: list[Any] = [None] * world_size()
    torch.distributed.all_gather_object(gathered, {k: float(v) for k, v in metrics.items() if v is not None})
    keys = sorted({k for row in gathered for k in row})
    out = {}
    for key in keys:
        values = [row[key] for row in gathered if key in row]
        out[key] = sum(values) if key in SUMMED_METRICS else sum(values) / len(values)
    return out


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (as is in one process)."""
    if not is_distributed() or world_size() == 1:
        return obj
    box = [obj]
    torch.distributed.broadcast_object_list(box, src=src)
    return box[0]


def broadcast_tensors_(tensors: list[torch.Tensor], src: int = 0) -> None:
    """Overwrite ``tensors`` in place with rank ``src``'s values (no-op in one process)."""
    if not is_distributed() or world_size() == 1:
        return
    device = _device_for_collectives()
    with torch.no_grad():
        for tensor in tensors:
            buffer = tensor.detach().to(device)
            torch.distributed.broadcast(buffer, src=src)
            if buffer.data_ptr() != tensor.data_ptr():
                tensor.copy_(buffer)


def any_rank(flag: bool) -> bool:
    """``flag`` or'ed over ranks (as is in one process): every rank takes the same branch."""
    return max_over_ranks(int(bool(flag))) > 0


def is_sharded(module: torch.nn.Module) -> bool:
    """Whether FSDP2 (``fully_shard``) manages any submodule of ``module``."""
    from torch.distributed.fsdp import FSDPModule

    return any(isinstance(m, FSDPModule) for m in module.modules())


def full_tensor(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor behind a DTensor shard (a collective: every rank calls it), else ``tensor``."""
    from torch.distributed.tensor import DTensor

    return tensor.full_tensor() if isinstance(tensor, DTensor) else tensor


def gathered(value: Any) -> Any:
    """``value`` (nested dicts, lists, tuples: a state dict) with every DTensor made whole."""
    if isinstance(value, dict):
        return {key: gathered(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(gathered(item) for item in value)
    return full_tensor(value) if isinstance(value, torch.Tensor) else value


def local_part(whole: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``whole`` laid out as ``like``: this rank's shard when ``like`` is a DTensor (no communication:
    every rank holds ``whole``), else ``whole`` itself."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if not isinstance(like, DTensor) or isinstance(whole, DTensor):
        return whole
    whole = whole.to(device=like.device, dtype=like.dtype)
    return distribute_tensor(whole, like.device_mesh, like.placements, src_data_rank=None)


def max_over_ranks(value: int) -> int:
    """The largest ``value`` any rank holds (as is in one process): how the ranks agree on a stop."""
    if not is_distributed() or world_size() == 1:
        return int(value)
    tensor = torch.tensor([int(value)], dtype=torch.int64, device=_device_for_collectives())
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MAX)
    return int(tensor.item())


def gather_objects(obj: Any) -> list[Any] | None:
    """Every rank's ``obj`` in rank order on rank 0, None on the others (``[obj]`` in one process)."""
    if not is_distributed() or world_size() == 1:
        return [obj]
    out: list[Any] | None = [None] * world_size() if rank() == 0 else None
    torch.distributed.gather_object(obj, out, dst=0)
    return out


def barrier() -> None:
    if is_distributed() and world_size() > 1:
        torch.distributed.barrier()


# ----------------------------------------------------------------------------- workers launched by Lightning
#: the ``subprocess.Popen`` list of the worker ranks this process launched (Lightning's launcher's own
#: list, which its child-process observer thread watches); empty in a worker or in one process
_WORKERS: list[Any] = []


def track_workers(trainer: Any) -> None:
    """Remember the worker processes Lightning's subprocess launcher started (rank 0, first fit)."""
    global _WORKERS
    procs = getattr(getattr(getattr(trainer, "strategy", None), "launcher", None), "procs", None)
    if procs:
        _WORKERS = procs


def release_workers() -> None:
    """Rank 0, before an agreed stop: let the workers exit non-zero (75, 130, 1) without Lightning's
    child-process observer killing this process (it SIGKILLs the launcher within 5 s of a worker's
    non-zero exit, which could fall before the checkpoint and summary are written)."""
    if not _WORKERS:
        return
    import threading

    for thread in threading.enumerate():
        if getattr(thread, "_child_processes", None) is _WORKERS:
            thread._child_processes = []  # its next poll sees no child and ends the thread


def wait_for_workers(timeout: float = 60.0) -> list[int | None]:
    """Exit codes of the workers this process launched, waiting up to ``timeout`` s for each
    (None: still running after it). Empty when there are none."""
    import subprocess

    codes: list[int | None] = []
    for proc in _WORKERS:
        try:
            codes.append(proc.wait(timeout=timeout))
        except subprocess.TimeoutExpired:
            codes.append(None)
    return codes


# ----------------------------------------------------------------------------- one job per launch
_HYDRA_VALUE_FLAGS = {"--config-path", "-cp", "--config-name", "-cn", "--config-dir", "-cd", "--package", "-p",
                      "--experimental-rerun"}


def job_argv(argv: list[str], job_overrides: list[str]) -> list[str]:
    """The command line that runs exactly this job: ``argv`` without ``-m`` and the sweep's
    overrides, plus the job's own overrides (Hydra flags such as ``--config-name X`` are kept)."""
    kept = [argv[0]]
    index = 1
    while index < len(argv):
        token = argv[index]
        if token in ("-m", "--multirun"):
            pass
        elif token in _HYDRA_VALUE_FLAGS and index + 1 < len(argv):
            kept += [token, argv[index + 1]]
            index += 1
        elif token.startswith("-"):
            kept.append(token)
        index += 1
    return kept + list(job_overrides)


@contextmanager
def job_launch_scope(job_overrides: list[str], output_dir: str, multirun: bool) -> Iterator[None]:
    """Around one job in the launching process: workers started by Lightning run this job only.

    In a multirun, ``sys.argv`` becomes the job's own command line and Hydra's run dir the job's
    output dir (Lightning's launcher builds the workers' command from both), and afterwards the
    process group and the launcher's environment variables are removed so the next job starts its
    own workers. A process started by an external launcher (``torchrun``: ``LOCAL_RANK`` already set)
    or a worker is left alone.
    """
    global _WORKERS
    launcher_owned = "LOCAL_RANK" not in os.environ
    if not launcher_owned:
        yield
        return
    _WORKERS = []  # this job's workers, once its first fit launches them
    saved_argv = list(sys.argv)
    saved_env = {key: os.environ.get(key) for key in LAUNCH_ENV}
    restore_run_dir = None
    if multirun:
        sys.argv = job_argv(sys.argv, job_overrides)
        restore_run_dir = _set_hydra_run_dir(output_dir)
    try:
        yield
    finally:
        sys.argv = saved_argv
        if restore_run_dir is not None:
            restore_run_dir()
        if is_distributed():
            torch.distributed.destroy_process_group()
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _set_hydra_run_dir(output_dir: str):
    """Point ``hydra.run.dir`` at ``output_dir`` (what Lightning passes to workers); returns an undo."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from omegaconf import open_dict, read_write

        node = HydraConfig.get().run
        previous = node._get_node("dir")._value() if hasattr(node, "_get_node") else node.dir
        with read_write(node), open_dict(node):
            node.dir = output_dir

        def undo() -> None:
            with read_write(node), open_dict(node):
                node.dir = previous

        return undo
    except Exception:  # noqa: BLE001 - no Hydra config: nothing to point anywhere
        return None
