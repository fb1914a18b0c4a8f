"""alignbench entry point: ``python run.py algo=repo model=alpaca7b`` (see README.md)."""

import sys

from alignbench.utils.env import set_defaults

set_defaults()

import hydra  # noqa: E402
from omegaconf import DictConfig  # noqa: E402

from alignbench import cli  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    return cli.main(cfg)


if __name__ == "__main__":
    try:
        cli.prepare_hydra()  # every algorithm's and group's defaults, before Hydra composes
        main()
    except KeyboardInterrupt:  # Ctrl-C in Hydra's start-up, before the job's own handlers (alignbench.cli)
        print("alignbench: interrupted: stopped before the job started (no summary)", file=sys.stderr)
        sys.exit(130)
