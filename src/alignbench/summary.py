"""The ``summary.json`` contract written by every job and read by the report and the tests.

Schema (one JSON object, written atomically into the job's Hydra output dir)::

    {"algo": str, "model": str, "data": str, "seed": int,
     "status": "ok" | "failed" | "preempted" | "interrupted", "error": str | null,
     "metrics": {"eval/...": float, "train/...": float, ...},   # final eval + last value of train keys
     "perf": {"wall_s": float, "gen_tokens": int, "train_tokens": int, "peak_rss_mb": float,
              "cpu_s": float, "threads": int, "heap_tuned": 0.0 | 1.0, "fwd_tokens": int, "flops": float,
              "eval_gen_tokens": int, "eval_flops": float},
     "overrides": [str, ...],
     ... optional extra keys (e.g. "per_kind", "per_category", "skipped_rows", "stages", "checkpoint",
     "split": {how train / held-out were split, prompt and row counts, duplicates}, "worker_exit_codes",
     "compute", "tradeoff")}

``cpu_s`` is the process's CPU time (user + system) over the job: unlike ``wall_s`` it does not grow when
other processes share the cores; ``threads`` is torch's intra-op thread count (``trainer.num_threads``);
``heap_tuned`` is 1.0 when the process ran under glibc's settings for tensor memory
(``alignbench.utils.memory.exec_with_tuned_heap``), 0.0 under glibc's defaults (``ALIGNBENCH_HEAP=system``,
a job started in-process): timings of the two differ.
``startup_s`` (present when the job trained anything) is the time from the process's creation to its
first training step: interpreter start, imports, config, data, model and Lightning set-up
(``benchmarks/startup.py``).
``perf``'s compute figures (``alignbench.models.compute``) count *training*: every stage the job builds
on (SFT, reward and cost models, warm-ups; a cached stage at the cost recorded when it was trained),
every role's passes, generation included. ``gen_tokens`` are sampled tokens, ``train_tokens`` tokens
through passes with grad, ``fwd_tokens`` through passes without, ``flops`` the estimated FLOPs of all
of them; ``eval_gen_tokens`` / ``eval_flops`` are the final evaluation's. ``compute`` has the same
counts per phase (``{"sft": {"gen_tokens", "fwd_tokens", "train_tokens", "flops", "recorded"}, ...}``,
``recorded``: taken from a stage cache). ``tradeoff`` (``experiment=frontier``) names the trade-off
knob the job set and its value: ``{"knob": "algo.lagrange.threshold", "value": -1.5, "point": 2}``.

Besides it, every job writes ``history.jsonl``: one JSON object per logging call,
``{"step": int, "<metric name>": float, ...}``, the metric history the report draws curves from.

This module must not import torch: the report reads summaries on machines without the stack.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

SUMMARY_FILE = "summary.json"
HISTORY_FILE = "history.jsonl"
REQUIRED_KEYS = ("algo", "model", "data", "seed", "status", "error", "metrics", "perf", "overrides")
PERF_KEYS = ("wall_s", "gen_tokens", "train_tokens", "peak_rss_mb")
#: written by every job since compute accounting (older summaries lack them; readers use .get)
COMPUTE_KEYS = ("cpu_s", "threads", "fwd_tokens", "flops", "eval_gen_tokens", "eval_flops")
#: ok: finished; failed: stopped by an error; preempted: stopped by SIGTERM/SIGUSR1/SIGUSR2 after writing
#: a checkpoint (``error`` says where), the same command finishes it; interrupted: the same after Ctrl-C
STATUSES = ("ok", "failed", "preempted", "interrupted")


class SummaryError(ValueError):
    """A summary file is missing, unreadable or breaks the contract; the message names the file."""


def _finite_or_none(value: Any) -> Any:
    """JSON has no NaN/inf: store them as null so every reader can parse the file."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_none(v) for v in value]
    return value


def build_summary(
    *,
    algo: str,
    model: str,
    data: str,
    seed: int,
    status: str,
    error: str | None = None,
    metrics: dict[str, float] | None = None,
    perf: dict[str, float] | None = None,
    overrides: list[str] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """Assemble a contract-conforming summary dict (missing perf fields default to 0)."""
    perf_full = {key: 0 for key in PERF_KEYS}
    perf_full.update(perf or {})
    summary = {
        "algo": algo,
        "model": model,
        "data": data,
        "seed": int(seed),
        "status": status,
        "error": error,
        "metrics": dict(metrics or {}),
        "perf": perf_full,
        "overrides": list(overrides or []),
    }
    summary.update(extra)
    return _finite_or_none(summary)


def validate_summary(summary: Any) -> list[str]:
    """Return the list of contract violations (empty when the summary is valid)."""
    if not isinstance(summary, dict):
        return ["summary is not a JSON object"]
    problems = [f"missing key '{key}'" for key in REQUIRED_KEYS if key not in summary]
    if problems:
        return problems
    if summary["status"] not in STATUSES:
        problems.append(f"status must be one of {STATUSES}, got {summary['status']!r}")
    if summary["status"] != "ok" and not summary["error"]:
        problems.append(f"a job with status '{summary['status']}' must carry an error message")
    if not isinstance(summary["seed"], int):
        problems.append("seed must be an integer")
    if not isinstance(summary["metrics"], dict):
        problems.append("metrics must be an object")
    if not isinstance(summary["perf"], dict):
        problems.append("perf must be an object")
    else:
        problems += [f"perf is missing '{key}'" for key in PERF_KEYS if key not in summary["perf"]]
    if not isinstance(summary["overrides"], list):
        problems.append("overrides must be a list")
    return problems


def write_summary(output_dir: str | os.PathLike, summary: dict[str, Any]) -> Path:
    """Validate and write ``summary.json`` atomically (temporary file + rename)."""
    problems = validate_summary(summary)
    if problems:
        raise SummaryError(f"refusing to write an invalid summary: {'; '.join(problems)}")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    target = output_dir / SUMMARY_FILE
    fd, tmp = tempfile.mkstemp(dir=output_dir, prefix=".summary.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(_finite_or_none(summary), handle, indent=2, sort_keys=False)
            handle.write("\n")
        os.replace(tmp, target)
    except BaseException:  # a full disk: leave no half-written temporary file behind
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def read_summary(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a summary; ``path`` is the file or the job directory holding it."""
    path = Path(path)
    if path.is_dir():
        path = path / SUMMARY_FILE
    if not path.exists():
        raise SummaryError(f"{path}: no summary.json (the job did not finish writing its output)")
    try:
        summary = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SummaryError(f"{path}: not valid JSON ({exc})") from None
    problems = validate_summary(summary)
    if problems:
        raise SummaryError(f"{path}: {'; '.join(problems)}")
    return summary


def read_history(job_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """Read a job's ``history.jsonl`` (empty list when absent); unparsable lines are reported."""
    path = Path(job_dir) / HISTORY_FILE
    if not path.exists():
        return []
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise SummaryError(f"{path}:{number}: not valid JSON ({exc})") from None
    return rows
