"""Hydra task function: validate the config, run the job, write ``summary.json``, report errors.

User mistakes (``UserError``: bad config values, missing models, malformed data) print one line
``alignbench: error: …`` and exit with status 2 — no traceback unless ``HYDRA_FULL_ERROR=1``. Inside
a multirun a failing job never stops the sweep: it writes its failed ``summary.json`` (with the error
and, for unexpected exceptions, the traceback in ``error.log``) and the next job starts.
DDP worker ranks (``LOCAL_RANK`` > 0, launched by Lightning) run the job but write no summary and
log nothing. Lightning's launcher re-runs the command line in every worker at the first ``fit``; in a
multirun the job runs inside ``job_launch_scope``, which makes that command the current job alone
(its overrides, no ``-m``, its output dir), so workers run exactly this job and exit, and the next job
of the sweep launches fresh ones (``alignbench.utils.distributed``).

Preemption (SIGTERM or SIGUSR1): training writes a checkpoint at the end of the current iteration,
the job writes ``summary.json`` with ``status: "preempted"`` and exits with ``EXIT_PREEMPTED`` (75),
also inside a multirun (the whole sweep is being stopped). Rerunning the same command with
``resume=true`` continues from the checkpoint; jobs whose summary already says ``ok`` are skipped.
``NumericalFaultError`` (``max_nan_steps`` non-finite iterations in a row) is one line too, exit 1.
Override values whose key looks like a secret (``+hf_token=...``) are written as ``***``.
"""

from __future__ import annotations

import math
import os
import sys
import time
import traceback
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from alignbench.errors import EXIT_PREEMPTED, NumericalFaultError, Preempted, UserError
from alignbench.summary import HISTORY_FILE, build_summary, write_summary


def _hydra_info() -> tuple[str, bool, list[str], str]:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    return hc.runtime.output_dir, hc.mode == RunMode.MULTIRUN, list(hc.overrides.task), hc.job.name


def _rank() -> int:
    return int(os.environ.get("LOCAL_RANK", os.environ.get("RANK", "0")) or 0)


def _print_results(summary: dict[str, Any], output_dir: str) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console()
    metrics = summary["metrics"]
    table = Table(title=f"alignbench · algo={summary['algo']} model={summary['model']} "
                        f"data={summary['data']} seed={summary['seed']}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    headline = [k for k in metrics if k.startswith("eval/") and k.count("/") == 1]
    headline += [k for k in metrics if k.startswith("stages/") and k.endswith("accuracy")]
    headline += [k for k in metrics if k.startswith("train/") and k.count("/") == 1]
    for key in headline:
        value = metrics[key]
        table.add_row(key, "n/a" if value is None else f"{value:.4f}")
    console.print(table)
    per_kind = summary.get("per_kind") or {}
    if per_kind:
        kinds = Table(title="per prompt kind")
        columns = ["unsafe_rate", "over_refusal_rate", "helpfulness", "violation_rate", "prompts"]
        kinds.add_column("kind")
        for column in columns:
            kinds.add_column(column, justify="right")
        for kind, values in per_kind.items():
            kinds.add_row(kind, *["-" if c not in values else (f"{values[c]:.3f}" if isinstance(values[c], float)
                                                                else str(values[c])) for c in columns])
        console.print(kinds)
    perf = summary["perf"]
    console.print(f"wall {perf['wall_s']:.1f}s · generated tokens {perf['gen_tokens']} · trained tokens "
                  f"{perf['train_tokens']} · peak RSS {perf['peak_rss_mb']:.0f} MB")
    console.print(f"summary: {Path(output_dir) / 'summary.json'}")


def objective(cfg: DictConfig, metrics: dict[str, Any], failed: bool) -> float | None:
    """Value returned to a Hydra sweeper: constrained helpfulness when ``sweep_objective`` is set.

    maximise eval/helpfulness subject to eval/unsafe_rate <= epsilon; an infeasible trial scores
    ``helpfulness - penalty * (unsafe_rate - epsilon)``, a failed one ``-penalty``.
    """
    spec = cfg.get("sweep_objective")
    if not spec:
        return None
    if failed:
        return -float(spec.penalty)
    helpful = metrics.get(spec.metric)
    unsafe = metrics.get(spec.constraint_metric)
    if helpful is None or unsafe is None or not math.isfinite(helpful) or not math.isfinite(unsafe):
        return -float(spec.penalty)
    excess = max(0.0, unsafe - float(spec.epsilon))
    return float(helpful - float(spec.penalty) * excess)


def main(cfg: DictConfig) -> float | None:
    """Run one job; see module docstring for the error and multirun behaviour."""
    output_dir, multirun, overrides, _ = _hydra_info()
    rank = _rank()
    started = time.perf_counter()
    identity = {
        "algo": str(OmegaConf.select(cfg, "algo.name", default="?")),
        "model": str(OmegaConf.select(cfg, "model.name", default="?")),
        "data": str(OmegaConf.select(cfg, "data.name", default="?")),
        "seed": int(cfg.seed) if isinstance(cfg.get("seed"), int) else 0,
        "overrides": redact_overrides(overrides),
    }
    sink = None
    signals = ExitStack()
    try:
        from alignbench.config import validate_config
        from alignbench.registry import ALGORITHMS
        from alignbench.training.callbacks import PREEMPTION
        from alignbench.training.pipeline import run_job
        from alignbench.training.sink import MetricsSink
        import alignbench.algorithms  # noqa: F401 - registers the algorithms

        signals.enter_context(PREEMPTION.installed())  # SIGTERM/SIGUSR1 -> checkpoint + Preempted
        try:
            cls = ALGORITHMS.get(identity["algo"])
        except KeyError as exc:
            raise UserError(str(exc.args[0])) from None
        rc = validate_config(cfg, cls.config_class)
        if rc.resume and rank == 0:
            done = _completed_summary(output_dir)
            if done is not None:  # a requeued sweep re-runs finished jobs: nothing to do for them
                print(f"alignbench: {Path(output_dir) / 'summary.json'} says this job finished (status ok); "
                      f"nothing to resume", file=sys.stderr)
                return objective(cfg, done["metrics"], failed=False)
        if rank == 0:
            experiment = str(cfg.get("experiment_name") or "default")
            sink = MetricsSink(rc.logger, output_dir, run_name=f"{identity['algo']}-s{identity['seed']}",
                               group=experiment, job_type=identity["algo"],
                               config=OmegaConf.to_container(cfg, resolve=True),
                               )
            if rc.resume:  # keep history.jsonl's step monotonic across the interrupted and resumed runs
                from alignbench.training.checkpoint import last_history_step

                sink.step = last_history_step(Path(output_dir) / HISTORY_FILE)
        from alignbench.utils.distributed import job_launch_scope

        with job_launch_scope(overrides, output_dir, multirun):
            result = run_job(rc, sink)
        if rank > 0:
            return None
        extra_keys = ("per_kind", "per_category", "skipped_rows", "truncations", "prompt_cost_histogram")
        extra = {k: v for k, v in result.items() if k in extra_keys}
        summary = build_summary(status="ok", metrics=result["metrics"], perf=result["perf"],
                                wandb_dir=sink.wandb_dir if sink else None, **identity, **extra)
        write_summary(output_dir, summary)
        if sink is not None:
            sink.finish(0)
        _print_results(summary, output_dir)
        return objective(cfg, summary["metrics"], failed=False)
    except Preempted as exc:  # SIGTERM/SIGUSR1: a clean, resumable stop (never a sweep's "failed" job)
        if rank == 0:
            summary = build_summary(status="preempted", error=str(exc), metrics={},
                                    perf={"wall_s": time.perf_counter() - started}, **identity,
                                    checkpoint=exc.checkpoint)
            write_summary(output_dir, summary)
        if sink is not None:
            sink.finish(EXIT_PREEMPTED)
        print(f"alignbench: preempted: {exc}", file=sys.stderr)
        sys.exit(EXIT_PREEMPTED)  # also in a multirun: the whole sweep is being preempted
    except (UserError, Exception) as exc:  # noqa: BLE001 - every failure must leave a summary
        user_error = isinstance(exc, UserError)
        numerical = isinstance(exc, NumericalFaultError)  # one line, like a user error, but exit 1
        message = str(exc) if user_error else f"{type(exc).__name__}: {exc}"
        if rank == 0:
            summary = build_summary(status="failed", error=message, metrics={},
                                    perf={"wall_s": time.perf_counter() - started}, **identity)
            write_summary(output_dir, summary)
            if not user_error:
                (Path(output_dir) / "error.log").write_text(traceback.format_exc())
        if sink is not None:
            sink.finish(1)
        if os.environ.get("HYDRA_FULL_ERROR") == "1" and not multirun:
            raise
        print(f"alignbench: error: {message}", file=sys.stderr)
        if not user_error and not numerical:
            print(f"alignbench: traceback written to {Path(output_dir) / 'error.log'}", file=sys.stderr)
        if multirun:
            return objective(cfg, {}, failed=True)
        sys.exit(2 if user_error else 1)
    finally:
        signals.close()


def redact_overrides(overrides: list[str]) -> list[str]:
    """Command-line overrides with secret-looking values replaced: ``+hf_token=abc`` -> ``+hf_token=***``."""
    from alignbench.training.sink import is_secret_key

    out = []
    for item in overrides:
        key, sep, value = item.partition("=")
        out.append(f"{key}=***" if sep and value and is_secret_key(key) else item)
    return out


def _completed_summary(output_dir: str) -> dict[str, Any] | None:
    """The job's summary when it already finished successfully (``resume=true`` then does nothing)."""
    from alignbench.summary import SummaryError, read_summary

    try:
        summary = read_summary(output_dir)
    except SummaryError:
        return None
    return summary if summary.get("status") == "ok" else None
