#!/usr/bin/env bash
# Safe RLHF vs RePO on Alpaca-7B + PKU-SafeRLHF (published Safe RLHF defaults from conf/algo/scale/*_alpaca7b.yaml).
# Needs: HF_HUB_OFFLINE=0 huggingface-cli download PKU-Alignment/alpaca-7b-reproduced
#        HF_HUB_OFFLINE=0 huggingface-cli download --repo-type dataset PKU-Alignment/PKU-SafeRLHF
# 1 GPU per job; on a SLURM cluster add hydra/launcher=slurm. Stages (SFT, reward, cost) are trained once
# and cached; sweep RL settings freely afterwards.
set -euo pipefail
python run.py -m algo=ppo,reward_shaping,safe_rlhf,repo model=alpaca7b data=pku_saferlhf trainer=gpu \
  seed=1,2,3 experiment_name=alpaca7b_pku eval.judge=keyword "$@"
# With the published beaver-7b reward/cost models instead of training them (download both first):
#   bash experiments/safe_rlhf_vs_repo_alpaca7b.sh \
#     algo.reward_model.path=PKU-Alignment/beaver-7b-v1.0-reward algo.cost_model.path=PKU-Alignment/beaver-7b-v1.0-cost
