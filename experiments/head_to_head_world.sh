#!/usr/bin/env bash
# Every algorithm x 2 seeds on the built-in safety world (model=tiny, CPU), then the comparison report.
set -euo pipefail
python run.py experiment=head_to_head "$@"
