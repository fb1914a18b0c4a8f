"""The ``alignbench`` command: ``run.py``, the ``alignbench`` console script and ``python -m alignbench``.

    alignbench algo=safe_rlhf experiment=smoke          # = python run.py algo=safe_rlhf experiment=smoke

The Hydra configs are the package's ``alignbench/conf`` in an installed copy (pyproject maps the
repository's top-level ``conf/`` there) and the checkout's ``conf/`` otherwise (``config_dir``).
The process first starts itself again under glibc settings that let freed tensor memory be
reused (``alignbench.utils.memory.exec_with_tuned_heap``; ``ALIGNBENCH_HEAP=system`` skips it).
Process defaults (offline hub, offline W&B) are set and secrets on the command line refused
(``alignbench.secret_keys``) before Hydra reads the arguments or writes anything. Ctrl-C during
Hydra's start-up, before the job's own handlers (``alignbench.cli``), exits 130 with one line.
"""

from __future__ import annotations

import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def config_dir() -> Path:
    """``alignbench/conf`` when the package ships it (wheel install), else the checkout's ``conf/``."""
    shipped = PACKAGE / "conf"
    if (shipped / "config.yaml").is_file():
        return shipped
    checkout = PACKAGE.parents[1] / "conf"
    if (checkout / "config.yaml").is_file():
        return checkout
    raise SystemExit(f"alignbench: error: no Hydra configs in {shipped} or {checkout}: reinstall alignbench")


def main() -> None:
    """Run one job or a sweep (``-m``) from the command line (README.md)."""
    from alignbench.utils.memory import exec_with_tuned_heap

    exec_with_tuned_heap()  # glibc's allocator settings for tensors (utils.memory): the command starts again once
    from alignbench.utils.env import set_defaults

    set_defaults()
    from alignbench.secret_keys import refuse_secret_arguments

    refuse_secret_arguments(sys.argv[1:])
    import hydra

    from alignbench import cli

    cli.prepare_hydra()  # every algorithm's and group's defaults (alignbench.registry), before Hydra composes
    try:
        hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")(cli.main)()
    except KeyboardInterrupt:  # Ctrl-C in Hydra's start-up, before the job's own handlers (alignbench.cli)
        print("alignbench: interrupted: stopped before the job started (no summary)", file=sys.stderr)
        sys.exit(130)
