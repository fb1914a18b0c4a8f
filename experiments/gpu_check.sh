#!/usr/bin/env bash
# GPU readiness in one go (<= 8 min on one GPU): the GPU code paths on SmolLM2-135M-Instruct, then
# throughput and MFU of each job (benchmarks/gpu_report.py; figures go to benchmarks/README.md).
#   1. trainer=gpu (bf16-mixed) + model.dtype=bfloat16 + gradient checkpointing + LoRA: PPO
#   2. trainer=fsdp over every GPU present (FSDP2, alignbench.models.sharding): Safe RLHF
#   3. rollout and evaluation with the vLLM engine, when vllm is installed: PPO
# Needs the SmolLM2 GGUF (python -m alignbench.assets fetch). Usage, from the repository root:
#   bash experiments/gpu_check.sh [OUT_DIR]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-outputs/gpu_check/$(date +%Y-%m-%d_%H-%M-%S)}
mkdir -p "$OUT"
export ALIGNBENCH_CACHE=${ALIGNBENCH_CACHE:-$OUT/cache}
NGPU=$(python -c "import torch; print(torch.cuda.device_count())")
if [ "$NGPU" -lt 1 ]; then echo "gpu_check: no CUDA device" >&2; exit 2; fi
python -m alignbench.assets fetch >/dev/null || exit 2
COMMON=(model=smollm2_135m experiment=smoke logger=none model.dtype=bfloat16 model.gradient_checkpointing=true
        stages.sft.steps=20 stages.reward_model.steps=10 stages.cost_model.steps=10 algo.steps=6 algo.batch_size=16
        data.eval_prompts=32)
status=0
run() {  # run NAME SECONDS OVERRIDES...: one job with a time limit, its output in $OUT/NAME.log
  local name=$1 limit=$2; shift 2
  echo "gpu_check: $name ($*)"
  timeout "$limit" python run.py "${COMMON[@]}" "$@" "hydra.run.dir=$OUT/$name" >"$OUT/$name.log" 2>&1 \
    || { echo "gpu_check: $name FAILED, see $OUT/$name.log" >&2; tail -5 "$OUT/$name.log" >&2; status=1; }
}
run gpu_bf16_gc_lora 180 algo=ppo trainer=gpu
run fsdp_${NGPU}gpu 180 algo=safe_rlhf trainer=fsdp "trainer.devices=$NGPU" "algo.batch_size=$((16 * NGPU))" \
    trainer.precision=bf16-mixed
runs=("$OUT/gpu_bf16_gc_lora" "$OUT/fsdp_${NGPU}gpu")
if python -c "import vllm" >/dev/null 2>&1; then
  run vllm 120 algo=ppo trainer=gpu algo.rollout.engine=vllm eval.generation.engine=vllm
  runs+=("$OUT/vllm")
else
  echo "gpu_check: vllm not installed, engine check skipped"
fi
python benchmarks/gpu_report.py "${runs[@]}" | tee "$OUT/report.jsonl"
exit $status
