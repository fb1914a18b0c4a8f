"""``python -m alignbench.report DIR [--out OUT] [--replicates B] [--wandb] [--dry-run] [--project P] [--entity E]``.

Prints the files written and a short table. Exits 1 with a single line when DIR holds no job,
2 for bad arguments (argparse), 3 when only the W&B step failed (the local report is written).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from alignbench.report.bootstrap import DEFAULT_REPLICATES, MIN_REPLICATES
from alignbench.report.build import NoJobsError, build_report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m alignbench.report", description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path, help="multirun/outputs folder to scan for jobs (summary.json)")
    parser.add_argument("--out", type=Path, default=None, help="write the report here instead of DIR")
    parser.add_argument("--wandb", action="store_true", help="also publish the comparison as a W&B Report")
    parser.add_argument(
        "--dry-run", action="store_true", help="write the W&B report spec to wandb_report.json; no network"
    )
    parser.add_argument("--project", default=None, help="W&B project (default: $WANDB_PROJECT or alignbench)")
    parser.add_argument("--entity", default=None, help="W&B entity (default: $WANDB_ENTITY or your default)")
    parser.add_argument("--group", default=None, help="W&B run group to filter on (default: the experiment)")
    parser.add_argument(
        "--group-by", default=None, help="W&B config key naming the algorithm (default: algo.name)"
    )
    parser.add_argument("--replicates", type=int, default=DEFAULT_REPLICATES,
                        help=f"bootstrap replicates behind every interval and test (default {DEFAULT_REPLICATES})")
    args = parser.parse_args(argv)
    if args.replicates < MIN_REPLICATES:
        parser.error(f"--replicates must be at least {MIN_REPLICATES} (got {args.replicates}): fewer cannot "
                     f"resolve a Holm-adjusted p-value")
    return args


def _wandb_step(args: argparse.Namespace, result) -> int:
    """Dry-run spec or online publication; kept apart so a W&B problem never loses the local report."""
    from alignbench.report import wandb_report  # lazy: wandb is heavy and only needed here

    plan_args = {"project": args.project, "entity": args.entity, "group": args.group, "group_by": args.group_by}
    try:
        if args.dry_run:
            print(f"wandb spec:  {wandb_report.write_dry_run(result, **plan_args)}")
        else:
            print(f"wandb report: {wandb_report.publish(result, **plan_args)}")
    except Exception as exc:  # network, auth, API drift: report it in one line, keep exit distinct
        print(f"error: W&B report failed: {exc}", file=sys.stderr)
        return 3
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        result = build_report(args.dir, args.out, replicates=args.replicates)
    except NoJobsError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for path in result.paths:
        print(f"wrote {path}")
    print()
    print(result.text_table)
    for warning in result.comparison.warnings:
        print(f"warning: {warning}")
    if args.wandb or args.dry_run:
        return _wandb_step(args, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
