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

Preemption (SIGTERM, SIGUSR1 or submitit's SIGUSR2): training writes a checkpoint at the end of the
current iteration, the job writes ``summary.json`` with ``status: "preempted"`` and exits with
``EXIT_PREEMPTED`` (75), also inside a multirun (the whole sweep is being stopped); Ctrl-C does the
same with ``status: "interrupted"`` and exit 130. Rerunning the same command continues from the
checkpoint (``resume=auto``, the default); jobs whose summary already says ``ok`` are skipped. One
live job per run directory: a second process on it stops at once naming the holder's pid. A
read-only or full disk is one line naming the path. ``NumericalFaultError`` (``max_nan_steps``
non-finite iterations in a row) is one line too, exit 1.
Secrets come from the environment: a config value whose key looks like a secret stops the job with one
line naming the variable to export (``alignbench.secret_keys``; the command line is refused before
Hydra reads it); the failed summary shows such overrides as ``***``.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
import traceback
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

import alignbench.config  # noqa: F401 - registers the config resolvers (${pick:...}) before anything resolves
from alignbench.errors import CheckpointError, NumericalFaultError, Preempted, RunDirError, UserError
from alignbench.summary import HISTORY_FILE, build_summary, write_summary
from alignbench.utils.files import is_storage_error, lock_run_dir, write_failure


def _hydra_info() -> tuple[str, bool, list[str], str]:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    return hc.runtime.output_dir, hc.mode == RunMode.MULTIRUN, list(hc.overrides.task), hc.job.name


def _rank() -> int:
    from alignbench.utils.distributed import rank  # global: launcher env, SLURM tasks, process group

    return rank()


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
    console.print(f"wall {perf['wall_s']:.1f}s · training: generated tokens {perf['gen_tokens']}, trained tokens "
                  f"{perf['train_tokens']}, {perf.get('flops', 0):.3g} FLOPs · peak RSS {perf['peak_rss_mb']:.0f} MB")
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


def tradeoff_point(cfg: DictConfig) -> dict[str, Any] | None:
    """``experiment=frontier``: the trade-off knob this job sets and its value, for the report.

    The experiment's ``frontier`` node names each algorithm's knob (``frontier.knobs.<algo>``, a
    config key) and the index swept (``frontier.point``); the value is read from the composed config.
    None outside a frontier sweep, or for an algorithm without a knob there.
    """
    node = cfg.get("frontier")
    algo = str(OmegaConf.select(cfg, "algo.name", default=""))
    knob = OmegaConf.select(node, f"knobs.{algo}", default=None) if node is not None else None
    if knob is None:
        return None
    try:
        value = OmegaConf.select(cfg, str(knob), throw_on_missing=True)
        value = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    except Exception as exc:  # noqa: BLE001 - the job's own validation reports a broken config
        value = f"unresolved ({type(exc).__name__})"
    return {"knob": str(knob), "value": value, "point": OmegaConf.select(node, "point", default=None)}


def prepare_hydra() -> None:
    """Before Hydra composes: register every algorithm and every config default (``alignbench.registry``).

    A broken algorithm package (an entry point that does not load) is one line and exit 2."""
    from alignbench.registry import register_config_schemas

    try:
        register_config_schemas()
    except UserError as exc:
        print(f"alignbench: error: {exc}", file=sys.stderr)
        sys.exit(2)


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
    point = tradeoff_point(cfg)
    if point is not None:
        identity["tradeoff"] = point
    sink = None
    held = ExitStack()  # the signal handlers and the run directory's lock, for the job's lifetime
    from alignbench.utils.preemption import PREEMPTION, is_worker_process

    try:
        # first, before anything slow: from here on a signal or Ctrl-C ends in a summary, not a traceback
        held.enter_context(PREEMPTION.installed())
        if not is_worker_process():  # one live job per run dir (DDP workers share their rank 0's)
            held.callback(lock_run_dir(output_dir).release)
        from alignbench.config import validate_config
        from alignbench.registry import algorithm_class

        _refuse_secrets(cfg, output_dir, multirun, rank)
        rc = validate_config(cfg, algorithm_class(cfg.algo).config_class)
        if rc.resume and rank == 0:
            done = _completed_summary(output_dir, rc)
            if done is not None:  # a requeued sweep re-runs finished jobs: nothing to do for them
                print(f"alignbench: {Path(output_dir) / 'summary.json'} says this job finished (status ok); "
                      f"nothing to resume", file=sys.stderr)
                return objective(cfg, done["metrics"], failed=False)
        from alignbench.models.locate import locate_model

        locate_model(rc.model)  # a missing model stops the job here, before the training stack is imported
        from alignbench.training.pipeline import run_job
        from alignbench.training.sink import MetricsSink

        if rc.signals.source == "oracle":  # an upper bound must never pass for a fair result, in W&B either
            rc.logger.tags = [*rc.logger.tags, "upper-bound", "signals=oracle"]
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
            result = run_job(rc, sink, keep_model=multirun)
        if rank > 0:
            return None
        extra_keys = ("per_kind", "per_category", "skipped_rows", "truncations", "prompt_cost_histogram",
                      "training_signals", "split", "compute")
        extra = {k: v for k, v in result.items() if k in extra_keys}
        summary = build_summary(status="ok", metrics=result["metrics"], perf=result["perf"],
                                wandb_dir=sink.wandb_dir if sink else None, **identity, **extra)
        write_summary(output_dir, summary)
        if sink is not None:
            sink.finish(0)
        _print_results(summary, output_dir)
        return objective(cfg, summary["metrics"], failed=False)
    except RunDirError as exc:  # the directory belongs to another job (live, or finished): write nothing into it
        print(f"alignbench: error: {exc}", file=sys.stderr)
        if multirun:
            return objective(cfg, {}, failed=True)
        sys.exit(2)
    except (Preempted, KeyboardInterrupt) as exc:  # a clean, resumable stop (never a sweep's "failed" job)
        if isinstance(exc, KeyboardInterrupt):  # Ctrl-C before the handlers were in place
            PREEMPTION.record(signal.SIGINT)
            exc = PREEMPTION.stop("at start-up; nothing to save")
        _stopped(exc, rank, output_dir, identity, started, sink)
    except (UserError, Exception) as exc:  # noqa: BLE001 - every failure must leave a summary
        if isinstance(exc, OSError) and is_storage_error(exc):  # a read-only or full disk: one line naming it
            exc = write_failure(exc.filename or output_dir, exc)
        user_error = isinstance(exc, UserError)
        if PREEMPTION.requested and not user_error:  # e.g. a collective failing because a stopped rank left
            _stopped(PREEMPTION.stop(f"and then stopped on {type(exc).__name__}: {_first_line(exc)}; the last "
                                     f"checkpoint stands"), rank, output_dir, identity, started, sink)
        numerical = isinstance(exc, NumericalFaultError)  # one line, like a user error, but exit 1
        message = str(exc) if user_error else f"{type(exc).__name__}: {exc}"
        log_written = False
        if rank == 0:
            _write_summary_quietly(output_dir, build_summary(status="failed", error=message, metrics={},
                                                             perf={"wall_s": time.perf_counter() - started},
                                                             **identity))
            if not user_error:
                log_written = _write_quietly(Path(output_dir) / "error.log", traceback.format_exc())
        if sink is not None:
            sink.finish(1)
        if os.environ.get("HYDRA_FULL_ERROR") == "1" and not multirun:
            raise
        if rank == 0 or not PREEMPTION.requested:
            print(f"alignbench: error: {message}", file=sys.stderr)
        if log_written and not numerical:
            print(f"alignbench: traceback written to {Path(output_dir) / 'error.log'}", file=sys.stderr)
        if multirun:
            return objective(cfg, {}, failed=True)
        sys.exit(2 if user_error else 1)
    finally:
        held.close()


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:200]


def _write_quietly(path: Path, text: str) -> bool:
    """Best effort for the files a failing job leaves (the disk may be what failed)."""
    try:
        path.write_text(text)
        return True
    except OSError:
        return False


def _write_summary_quietly(output_dir: str, summary: dict[str, Any]) -> None:
    try:
        write_summary(output_dir, summary)
    except OSError:
        pass  # the error line printed names what could not be written


def _stopped(exc: Preempted, rank: int, output_dir: str, identity: dict[str, Any], started: float, sink) -> None:
    """Preempted or interrupted: summary (rank 0), one line, hand the signal on, exit 75 / 130 (also
    inside a multirun: the whole sweep is being stopped)."""
    from alignbench.utils.preemption import PREEMPTION

    distributed = sys.modules.get("alignbench.utils.distributed")  # never imported just for this
    codes = []
    if distributed is not None and rank == 0:  # the workers stop too: let them, and say how they ended
        distributed.release_workers()
        codes = distributed.wait_for_workers()
    if rank == 0:
        extra = {"worker_exit_codes": codes} if codes else {}
        _write_summary_quietly(output_dir, build_summary(status=exc.status, error=str(exc), metrics={},
                                                         perf={"wall_s": time.perf_counter() - started},
                                                         checkpoint=exc.checkpoint, **identity, **extra))
    if sink is not None:
        sink.finish(exc.exit_code)
    if rank == 0:  # the workers stop with it; rank 0 speaks for the job
        print(f"alignbench: {exc.status}: {exc}", file=sys.stderr, flush=True)
    PREEMPTION.forward()  # submitit's requeue handler, when the job runs under hydra/launcher=slurm
    sys.exit(exc.exit_code)


def redact_overrides(overrides: list[str]) -> list[str]:
    """Command-line overrides with secret-looking values replaced: ``+hf_token=abc`` -> ``+hf_token=***``."""
    from alignbench.secret_keys import redact

    return redact(list(overrides))


def _refuse_secrets(cfg: DictConfig, output_dir: str, multirun: bool, rank: int) -> None:
    """A secret-looking key with a value in the config stops the job (``alignbench.secret_keys``);
    the copies of it Hydra already wrote are scrubbed first."""
    from alignbench.secret_keys import refusal, scrub_hydra_files, secret_config_keys

    found = secret_config_keys(OmegaConf.to_container(cfg, resolve=False))
    if found:
        if rank == 0:
            scrub_hydra_files(output_dir, multirun)
        raise UserError(refusal(found[0]))


def _completed_summary(output_dir: str, rc) -> dict[str, Any] | None:
    """The job's summary when it already finished successfully (``resume=auto`` then does nothing), after
    checking that its checkpoints belong to this config and this data (``RunDirError`` otherwise: the
    finished run's files are left as they are)."""
    from alignbench.summary import SummaryError, read_summary

    try:
        summary = read_summary(output_dir)
    except SummaryError:
        return None
    if summary.get("status") != "ok":
        return None
    from alignbench.data.datamodule import build_data
    from alignbench.training.checkpoint import config_fingerprint, preflight_resume

    try:
        preflight_resume(output_dir, resume=True, fingerprint=config_fingerprint(rc.raw),
                         data_fingerprint=build_data(rc.data, cache_dir=rc.cache_dir).fingerprint())
    except CheckpointError as exc:  # its results stay as they are
        raise RunDirError(f"{exc} (this directory holds a finished run)") from None
    return summary
