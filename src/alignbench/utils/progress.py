"""Progress bars for the long steps Lightning's bar does not cover (evaluation), quiet off a terminal.

``progress_bar(description, total)`` shows a rich bar with the count, the elapsed time and the ETA on
stderr when it is an interactive terminal, and prints nothing at all otherwise (logs, CI, tests), so
log files hold no control characters. ``ALIGNBENCH_PROGRESS=0`` turns every bar off, ``=1`` forces it.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Callable, Iterator


def progress_enabled() -> bool:
    """Whether bars are drawn: ``ALIGNBENCH_PROGRESS`` when set, else whether stderr is a terminal."""
    setting = os.environ.get("ALIGNBENCH_PROGRESS", "").strip().lower()
    if setting in ("0", "false", "no", "off"):
        return False
    if setting in ("1", "true", "yes", "on"):
        return True
    from rich.console import Console

    return Console(stderr=True).is_terminal


@contextmanager
def progress_bar(description: str, total: int) -> Iterator[Callable[[int], None]]:
    """Yields ``advance(n)``; the bar (count, elapsed, ETA) disappears when the block ends."""
    if not progress_enabled() or total <= 0:
        yield lambda n=1: None
        return
    from rich.console import Console
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                               TimeRemainingColumn)

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("eta"), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)
