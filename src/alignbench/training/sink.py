"""Where metrics go: W&B (offline by default), CSV, and always ``history.jsonl``.

A job may fit several stages (SFT, reward model, cost model, RL), each restarting its own iteration
count; the sink keeps one monotonically increasing step across them, because W&B drops points whose
step goes backwards. It also remembers the last value of every key, which ``summary.json`` reports.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from alignbench.config import LoggerConfig
from alignbench.secret_keys import redact
from alignbench.summary import HISTORY_FILE

class MetricsSink:
    """Fan metrics out to the configured backends with one global step."""

    def __init__(self, cfg: LoggerConfig, output_dir: str, *, run_name: str, group: str, job_type: str,
                 config: dict[str, Any], enabled: bool = True) -> None:
        self.cfg = cfg
        self.enabled = enabled
        self.output_dir = Path(output_dir)
        self.step = 0
        self.last: dict[str, float] = {}
        self._history = open(self.output_dir / HISTORY_FILE, "a") if enabled else None
        self._wandb = None
        self._csv = None
        if not enabled:
            return
        if cfg.name == "wandb":
            import wandb

            os.environ.setdefault("WANDB_MODE", cfg.mode)
            os.environ.setdefault("WANDB_SILENT", "true")
            self._wandb = wandb.init(
                project=cfg.project, entity=cfg.entity, group=cfg.group or group, job_type=job_type,
                name=run_name, dir=str(self.output_dir), config=redact(config), tags=list(cfg.tags),
                reinit="finish_previous", settings=wandb.Settings(console="off", x_disable_stats=True),
            )
        elif cfg.name == "csv":
            from lightning.pytorch.loggers import CSVLogger

            self._csv = CSVLogger(save_dir=str(self.output_dir), name="csv", version="")
            self._csv.log_hyperparams(redact(config))

    @property
    def wandb_dir(self) -> str | None:
        return self._wandb.dir if self._wandb is not None else None

    def log(self, metrics: dict[str, float], *, stage: str, iteration: int) -> None:
        """Log one row; the global step advances by one per call."""
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in metrics.items() if v is not None}
        self.step += 1
        for key, value in clean.items():
            self.last[key] = value
        row = {"step": self.step, "stage": stage, "iteration": iteration,
               **{k: (v if math.isfinite(v) else None) for k, v in clean.items()}}
        self._history.write(json.dumps(row) + "\n")
        self._history.flush()
        if self._wandb is not None:
            self._wandb.log(clean, step=self.step)
        if self._csv is not None:
            self._csv.log_metrics(clean, step=self.step)

    def log_table(self, key: str, columns: list[str], rows: list[list[Any]]) -> None:
        if self._wandb is not None:
            import wandb

            self._wandb.log({key: wandb.Table(columns=columns, data=rows)}, step=self.step)

    def summary_update(self, metrics: dict[str, float]) -> None:
        if self._wandb is not None:
            self._wandb.summary.update(metrics)

    def finish(self, exit_code: int = 0) -> None:
        """Close everything; ``wandb.finish`` ends the run so multirun jobs never merge."""
        if self._history is not None:
            self._history.close()
            self._history = None
        if self._csv is not None:
            self._csv.finalize("success" if exit_code == 0 else "failed")
            self._csv = None
        if self._wandb is not None:
            self._wandb.finish(exit_code=exit_code)
            self._wandb = None
