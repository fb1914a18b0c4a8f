"""Start-up: how long a command takes to fail on a bad config or a missing model, and how long the smoke
job takes to reach its first training step.

Each case is a fresh ``python run.py ...`` process, run ``--reps`` times in turn (median and min):

- ``bad_value``: a config value out of range (``algo.steps=-1``): alignbench's one-line error, exit 2;
- ``unknown_key``: a key the config does not have (``no_such_key=1``): Hydra's error, exit 1;
- ``missing_model``: a GGUF file that is not there (``model=smollm2_135m model.path=...``): exit 2;
- ``smoke``: ``experiment=smoke`` (``algo=sft`` on ``model=tiny``, a fresh stage cache so the SFT stage
  trains): ``first_step_s`` is ``perf.startup_s`` of its summary.json (from the process's creation to the
  first training step, ``alignbench.training.module.startup_seconds``), ``wall_s`` the whole command;
- ``import_torch`` / ``import_lightning``: ``python -c "import ..."``, the floor under every case;
- ``import_stack``: the libraries every training job imports before its first step, in one fresh process
  (torch, transformers' Llama, Lightning, wandb): the floor under ``smoke``'s ``first_step_s``, whatever
  alignbench itself does.

    python benchmarks/startup.py [--reps 5] [--smoke-reps 3] [--job ...overrides for the smoke case]

Last stdout line: JSON ``{"<case>": {"median_s", "min_s", "times_s"}, ..., "load_before",
"load_after"}``. Wall times grow with whatever else runs on the machine: read them with the load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ERROR_CASES = {
    "bad_value": (["experiment=smoke", "algo.steps=-1"], 2, "alignbench: error: config value 'algo.steps'"),
    "unknown_key": (["experiment=smoke", "no_such_key=1"], 1, "no_such_key"),
    "missing_model": (["experiment=smoke", "model=smollm2_135m", "model.path=/nonexistent/model.gguf"], 2,
                      "alignbench: error: model 'smollm2_135m'"),
}
IMPORT_CASES = {"import_torch": "import torch", "import_lightning": "import lightning",
                "import_stack": "import torch, lightning.pytorch, wandb; from transformers import LlamaForCausalLM"}


def _timed(command: list[str], env: dict[str, str]) -> tuple[float, subprocess.CompletedProcess]:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=env, timeout=900)
    return time.perf_counter() - started, done


def _stats(times: list[float]) -> dict:
    return {"median_s": round(statistics.median(times), 3), "min_s": round(min(times), 3),
            "times_s": [round(t, 3) for t in times]}


def error_case(name: str, reps: int, env: dict[str, str], scratch: Path) -> dict:
    overrides, code, expected = ERROR_CASES[name]
    times = []
    for rep in range(reps):
        run_dir = scratch / f"{name}-{rep}"
        seconds, done = _timed([sys.executable, "run.py", *overrides, f"hydra.run.dir={run_dir}"], env)
        if done.returncode != code or expected not in done.stderr:
            raise SystemExit(f"startup.py: case {name} exited {done.returncode} (expected {code}) without "
                             f"'{expected}': {done.stderr.strip()[-500:]}")
        times.append(seconds)
    return _stats(times)


def smoke_case(reps: int, job: list[str], env: dict[str, str], scratch: Path) -> dict:
    walls, first_steps = [], []
    for rep in range(reps):
        run_dir = scratch / f"smoke-{rep}"
        run_env = {**env, "ALIGNBENCH_CACHE": str(scratch / f"cache-{rep}")}  # the SFT stage trains every time
        seconds, done = _timed([sys.executable, "run.py", "experiment=smoke", *job, f"hydra.run.dir={run_dir}"],
                               run_env)
        if done.returncode != 0:
            raise SystemExit(f"startup.py: the smoke job failed: {done.stderr.strip()[-800:]}")
        perf = json.loads((run_dir / "summary.json").read_text())["perf"]
        walls.append(seconds)
        if "startup_s" in perf:  # summaries of code older than perf.startup_s lack it
            first_steps.append(perf["startup_s"])
    return {"first_step_s": _stats(first_steps) if first_steps else None, "wall_s": _stats(walls)}


def import_case(statement: str, reps: int, env: dict[str, str]) -> dict:
    return _stats([_timed([sys.executable, "-c", statement], env)[0] for _ in range(reps)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5, help="runs of each error and import case")
    parser.add_argument("--smoke-reps", type=int, default=3, help="runs of the smoke job (0: skip it)")
    parser.add_argument("--job", nargs="*", default=[], help="extra overrides for the smoke job")
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"),
                                                                       os.environ.get("PYTHONPATH")]))}
    result: dict = {"load_before": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory() as scratch:
        for name, statement in IMPORT_CASES.items():
            result[name] = import_case(statement, args.reps, env)
        for name in ERROR_CASES:
            result[name] = error_case(name, args.reps, env, Path(scratch))
        if args.smoke_reps:
            result["smoke"] = smoke_case(args.smoke_reps, args.job, env, Path(scratch))
    result["load_after"] = os.getloadavg()[0]
    result["cpus"] = os.cpu_count()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
