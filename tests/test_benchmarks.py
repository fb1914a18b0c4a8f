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


def test_train_profile_splits_the_training_phase_into_products_and_the_rest():
    result = run_benchmark("train_profile.py", "--prompts", "2", "--group", "2", "--new-tokens", "8", "--reps", "2",
                           "--hidden", "128", "--intermediate", "256", "--layers", "2", "--heads", "4", "--threads", "1")
    assert len(result["train_s"]) == 2 and len(result["page_faults"]) == 2 and result["profiled_s"] > 0
    assert 0 < result["gemm_s"] < result["profiled_s"] and result["gemm_share"] == pytest.approx(
        result["gemm_s"] / result["profiled_s"], abs=0.01)
    assert result["gemm_gflop_executed"] > 0 and result["other_ops"] and result["other_aten_s"] > 0
    assert all(not name.startswith(("aten::mm", "aten::bmm", "aten::addmm")) for name in result["other_ops"])
    assert len(result["train_fraction_each"]) == 2 and result["gemm_shapes"][0]["calls"] > 0
    assert sum(row["s"] for row in result["gemm_shapes"]) <= result["gemm_s"] + 1e-3


def test_train_profile_counts_product_flops_from_the_profilers_shapes():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import train_profile

    assert train_profile.gemm_flops("aten::mm", [[2, 3], [3, 4]]) == 2 * 2 * 3 * 4
    assert train_profile.gemm_flops("aten::addmm", [[4], [2, 3], [3, 4]]) == 2 * 2 * 3 * 4
    assert train_profile.gemm_flops("aten::bmm", [[5, 2, 3], [5, 3, 4]]) == 5 * 2 * 2 * 3 * 4
    import torch

    a, b, c, d = torch.randn(64, 32), torch.randn(32, 16), torch.randn(3, 8, 8), torch.randn(256, 256)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
        torch.mm(a, b), torch.mm(a, b), torch.bmm(c, c), torch.exp(a), torch.mm(d, d)
    parts = train_profile.split_profile(prof.key_averages(group_by_input_shape=True), peak=100.0)
    assert parts["gemm_flop"] == 2 * (2 * 64 * 32 * 16) + 2 * 3 * 8 * 8 * 8 + 2 * 256 ** 3
    assert parts["other_ops"]["aten::exp"]["calls"] == 1 and parts["gemm_s"] > 0
    by_shape = {(row["op"], str(row["shapes"])): row for row in parts["gemm_shapes"]}
    assert by_shape[("aten::mm", "[[64, 32], [32, 16]]")]["calls"] == 2
    assert by_shape[("aten::bmm", "[[3, 8, 8], [3, 8, 8]]")]["calls"] == 1
    cube = by_shape[("aten::mm", "[[256, 256], [256, 256]]")]  # long enough for its rounded seconds
    assert cube["fraction_of_peak"] == pytest.approx(2 * 256 ** 3 / cube["s"] / 1e9 / 100.0, rel=0.05)


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
    for case in ("import_torch", "import_lightning", "import_stack", "bad_value", "unknown_key", "missing_model"):
        assert result[case]["median_s"] > 0 and len(result[case]["times_s"]) == 1, case
    smoke = result["smoke"]
    # perf.startup_s: from the process's creation to the first training step, inside the command's wall time
    assert 0 < smoke["first_step_s"]["median_s"] < smoke["wall_s"]["median_s"]
    assert result["import_torch"]["min_s"] < smoke["first_step_s"]["min_s"]
    assert result["import_torch"]["min_s"] < result["import_stack"]["min_s"]
