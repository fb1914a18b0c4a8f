#!/usr/bin/env bash
# WaltzRL on an instruct chat model with its chat template; the judge is the keyword judge on real text
# (swap in a classifier judge on GPU). 1 GPU.
set -euo pipefail
python run.py -m algo=sft,waltzrl,waltzrl_untrained,safeguard model=smollm2_135m trainer=gpu seed=1,2,3 \
  experiment_name=waltzrl_chat "$@"
