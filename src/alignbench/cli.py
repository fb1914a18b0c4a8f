"""Hydra task function: validate the config, run the job, write ``summary.json``, report errors.

User mistakes (``UserError``: bad config values, missing models, malformed data) print one line
``alignbench: error: …`` and exit with status 2 — no traceback unless ``HYDRA_FULL_ERROR=1``. Inside
a multirun a failing job never stops the sweep: it writes its failed ``summary.json`` (with the error
and, for unexpected exceptions, the traceback in ``error.log``) and the next job starts.
DDP worker ranks (``LOCAL_RANK`` > 0, launched by Lightning) run the job but write no summary, log
nothing and return at once in multirun mode so they never start a sweep of their own.
"""

from __future__ import annotations

import math
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from alignbench.errors import UserError
from alignbench.summary import build_summary, write_summary


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
    if multirun and rank > 0 and os.environ.get("ALIGNBENCH_DDP_CHILD") != "1":
        return None
    started = time.perf_counter()
    identity = {
        "algo": str(OmegaConf.select(cfg, "algo.name", default="?")),
        "model": str(OmegaConf.select(cfg, "model.name", default="?")),
        "data": str(OmegaConf.select(cfg, "data.name", default="?")),
        "seed": int(cfg.seed) if isinstance(cfg.get("seed"), int) else 0,
        "overrides": overrides,
    }
    sink = None
    try:
        from alignbench.config import validate_config
        from alignbench.registry import ALGORITHMS
        from alignbench.training.pipeline import run_job
        from alignbench.training.sink import MetricsSink
        import alignbench.algorithms  # noqa: F401 - registers the algorithms

        try:
            cls = ALGORITHMS.get(identity["algo"])
        except KeyError as exc:
            raise UserError(str(exc.args[0])) from None
        rc = validate_config(cfg, cls.config_class)
        if rank == 0:
            experiment = str(cfg.get("experiment_name") or "default")
            sink = MetricsSink(rc.logger, output_dir, run_name=f"{identity['algo']}-s{identity['seed']}",
                               group=experiment, job_type=identity["algo"],
                               config=OmegaConf.to_container(cfg, resolve=True),
                               )
        result = run_job(rc, sink)
        if rank > 0:
            return None
        extra = {k: v for k, v in result.items() if k in ("per_kind", "per_category", "skipped_rows")}
        summary = build_summary(status="ok", metrics=result["metrics"], perf=result["perf"],
                                wandb_dir=sink.wandb_dir if sink else None, **identity, **extra)
        write_summary(output_dir, summary)
        if sink is not None:
            sink.finish(0)
        _print_results(summary, output_dir)
        return objective(cfg, summary["metrics"], failed=False)
    except (UserError, Exception) as exc:  # noqa: BLE001 - every failure must leave a summary
        user_error = isinstance(exc, UserError)
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
        if not user_error:
            print(f"alignbench: traceback written to {Path(output_dir) / 'error.log'}", file=sys.stderr)
        if multirun:
            return objective(cfg, {}, failed=True)
        sys.exit(2 if user_error else 1)
