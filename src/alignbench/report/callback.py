"""Hydra callback that writes the comparison report when a multirun ends.

Enable it in the experiment config::

    hydra:
      callbacks:
        report:
          _target_: alignbench.report.callback.ReportCallback

A report failure is logged and swallowed: hours of training must not end in a failed sweep
because a plot could not be drawn; ``python -m alignbench.report DIR`` can always be rerun.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

log = logging.getLogger(__name__)


class ReportCallback(Callback):
    """Build the report into ``hydra.sweep.dir`` (or ``out_dir``) after every multirun."""

    def __init__(self, out_dir: str | None = None) -> None:
        self.out_dir = out_dir

    @staticmethod
    def sweep_dir(config: Any) -> Path:
        """The sweep folder; a relative ``hydra.sweep.dir`` is relative to the launch directory."""
        sweep = Path(str(config.hydra.sweep.dir))
        if not sweep.is_absolute():
            cwd = config.hydra.runtime.get("cwd") if "runtime" in config.hydra else None
            sweep = Path(cwd or ".") / sweep
        return sweep

    def on_multirun_end(self, config: Any, **kwargs: Any) -> None:
        try:
            from alignbench.report.build import build_report

            result = build_report(self.sweep_dir(config), Path(self.out_dir) if self.out_dir else None)
        except Exception:  # noqa: BLE001 -- deliberately broad, see the module docstring
            log.exception("alignbench report failed; rerun with: python -m alignbench.report <sweep dir>")
            return
        # print, not log: Hydra's console logger is not always configured at this point, and the
        # user must see where the report went.
        print(f"alignbench report: {result.html} (also {result.markdown.name}, {result.data_json.name})")
        print(result.text_table)
