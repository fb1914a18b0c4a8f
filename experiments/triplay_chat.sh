#!/usr/bin/env bash
# TriPlay-RL attacker/defender/evaluator on an instruct chat model. 1 GPU.
set -euo pipefail
python run.py -m algo=sft,safe_rlhf,triplay model=smollm2_135m trainer=gpu seed=1,2,3 \
  experiment_name=triplay_chat "$@"
