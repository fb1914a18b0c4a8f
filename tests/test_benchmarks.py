"""The benchmark scripts still run and print their JSON contract (tiny sizes; nothing here is timed).

The figures themselves live in benchmarks/README.md; these tests only keep the scripts from rotting:
each runs end to end on a toy workload and its last stdout line must be JSON with the documented keys
and sane values (positive times, the workload echoed back).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT

TINY_MODEL = ["--hidden", "32", "--intermediate", "64", "--layers", "1", "--heads", "2", "--threads", "1"]


def run_benchmark(script: str, *args: str) -> dict:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True,
                          text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_rl_step_against_trl_reports_both_sides_and_their_ratio():
    pytest.importorskip("trl")
    result = run_benchmark("rl_step.py", "--compare", "trl", "--prompts", "2", "--group", "2", "--new-tokens", "4",
                           "--reps", "2", "--rounds", "1", "--ppo-reps", "1", *TINY_MODEL)
    for key in ("alignbench_s_per_iter", "trl_s_per_iter", "trl_nogc_s_per_iter", "alignbench_gflops_per_s"):
        assert result[key] > 0, key
    assert result["ratio"] == pytest.approx(result["alignbench_s_per_iter"] / result["trl_s_per_iter"], rel=0.02)
    assert (result["prompts"], result["group"], result["new_tokens"]) == (2, 2, 4) and result["beta"] > 0
    assert len(result["trl_times_s"]) == 2 and len(result["alignbench_times_s"]) == 4  # paired with both TRL runs
    ppo = result["ppo_lag"]
    assert {"timing/generation", "timing/scoring", "timing/train"} <= set(ppo) and ppo["perf/tokens_per_s"] > 0


def test_scaling_reports_both_doublings():
    result = run_benchmark("scaling.py", "--prompts", "2", "--group", "2", "--new-tokens", "4", "--reps", "1",
                           *TINY_MODEL)
    assert result["time_ratio_2x_tokens"] > 0 and result["time_ratio_2x_batch"] > 0
    assert result["generated_tokens"]["2x_batch"] > result["generated_tokens"]["base"]


def test_memory_compares_shared_adapters_with_full_copies():
    result = run_benchmark("memory.py", "--hidden", "64", "--layers", "2", "--vocab", "2000")
    assert result["shared_peak_mb"] > 0 and result["full_copies_peak_mb"] > result["shared_peak_mb"]
    assert result["ratio"] == pytest.approx(result["shared_peak_mb"] / result["full_copies_peak_mb"], rel=0.02)


def test_fsdp_memory_halves_the_parameters_each_rank_holds():
    result = run_benchmark("fsdp_memory.py", "--hidden", "64", "--layers", "2", "--vocab", "2000")
    one, two = result["1_ranks"], result["2_ranks"]
    assert len(one) == 1 and len(two) == 2
    assert one[0]["params_local_mb"] == one[0]["params_whole_mb"] > 0
    assert all(row["params_local_mb"] == pytest.approx(one[0]["params_whole_mb"] / 2, rel=0.05) for row in two)
    assert result["params_per_rank_ratio"] == pytest.approx(0.5, rel=0.05)


def test_gpu_report_computes_throughput_and_mfu(tmp_path):
    job = tmp_path / "job"
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text("- trainer=fsdp\n- trainer.devices=2\n")
    (job / "summary.json").write_text(json.dumps({"status": "ok", "algo": "ppo", "metrics": {"eval/unsafe_rate": 0.5},
                                                  "perf": {"wall_s": 10.0, "train_tokens": 1000, "gen_tokens": 500}}))
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_report.py"), str(job), "--params", "1000000",
                           "--peak-tflops", "1"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    row = json.loads(done.stdout.strip().splitlines()[-1])
    assert (row["devices"], row["train_tokens_per_s"], row["gen_tokens_per_s"]) == (2, 100.0, 50.0)
    # (6 N 1000 + 2 N 500) / (10 s * 1e12 FLOP/s * 2 devices)
    assert row["mfu"] == pytest.approx((6e9 + 1e9) / (10 * 1e12 * 2))


def test_startup_times_each_error_and_the_smoke_jobs_first_step():
    result = run_benchmark("startup.py", "--reps", "1", "--smoke-reps", "1", "--job", "stages.sft.steps=2",
                           "data.eval_prompts=4", "logger=none")
    for case in ("import_torch", "import_lightning", "bad_value", "unknown_key", "missing_model"):
        assert result[case]["median_s"] > 0 and len(result[case]["times_s"]) == 1, case
    smoke = result["smoke"]
    # perf.startup_s: from the process's creation to the first training step, inside the command's wall time
    assert 0 < smoke["first_step_s"]["median_s"] < smoke["wall_s"]["median_s"]
    assert result["import_torch"]["min_s"] < smoke["first_step_s"]["min_s"]
