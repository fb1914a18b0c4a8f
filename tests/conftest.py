"""Shared fixtures: the real Hydra config composed as the CLI does, a shared stage cache, a CLI runner.

Every test runs offline (HF_HUB_OFFLINE=1, WANDB_MODE=offline are set before anything imports
transformers or wandb). Stage outputs (SFT, reward and cost models) are cached in one directory per
test session, so the first test that needs the SFT model trains it and the others load it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alignbench.utils.env import set_defaults

set_defaults()
os.environ["WANDB_MODE"] = "offline"  # tests never go online, whatever the caller exported

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
# ALIGNBENCH_TEST_THREADS=1 (or 2, ...): every job a test runs, in-process or through run.py, and the test
# process itself use that many torch threads (trainer.num_threads), so a claim test can be checked on two
# floating-point paths: ALIGNBENCH_TEST_THREADS=1 python -m pytest -m slow, then =2. Under pytest-xdist
# (`-n 2`, the README's command) it defaults to cores / workers, so the workers' jobs never ask for more
# threads than the machine has (2 workers x 2 threads on 2 cores spend their time waiting on each other).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT") or 0) if os.environ.get("PYTEST_XDIST_WORKER") else 0
TEST_THREADS = os.environ.get("ALIGNBENCH_TEST_THREADS") or (
    str(max(1, (os.cpu_count() or 1) // _WORKERS)) if _WORKERS else "")


def _with_threads(overrides: list[str]) -> list[str]:
    if not TEST_THREADS or any(o.lstrip("+~").startswith("trainer.num_threads=") for o in overrides):
        return list(overrides)
    return [*overrides, f"trainer.num_threads={int(TEST_THREADS)}"]


@pytest.fixture(scope="session", autouse=True)
def torch_threads():
    """Apply ALIGNBENCH_TEST_THREADS to the test process (in-process training and scoring)."""
    if TEST_THREADS:
        import torch

        torch.set_num_threads(int(TEST_THREADS))


@pytest.fixture(scope="session")
def stage_cache(tmp_path_factory) -> Path:
    """One stage cache for the whole session (exported so subprocess runs share it), shared by the xdist
    workers of one run (``pytest -n 2``): a stage two test files need trains once. Entries are locked per
    key and written atomically (``training.stages``), so the workers never see half an entry."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # <base>/popen-gw<N>: the run's folder is one up
        shared = shared.parent
    path = Path(os.environ.get("ALIGNBENCH_TEST_CACHE") or shared / "stage-cache")
    path.mkdir(parents=True, exist_ok=True)
    os.environ["ALIGNBENCH_CACHE"] = str(path)
    return path


def compose(overrides: list[str], output_dir: Path, cache_dir: Path, keep_hydra: bool = False):
    """The composed config, exactly as ``python run.py <overrides>`` would see it (``keep_hydra``: with its
    ``hydra`` node, e.g. an experiment's sweep)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import open_dict

    from alignbench.registry import register_config_schemas

    register_config_schemas()  # every default, as run.py does before Hydra composes
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra_compose("config", overrides=_with_threads(overrides), return_hydra_config=True)
    with open_dict(cfg):
        cfg.output_dir = str(output_dir)
        cfg.cache_dir = str(cache_dir)
        if not keep_hydra:
            del cfg["hydra"]
    return cfg


@pytest.fixture
def composed(tmp_path, stage_cache):
    """``composed(["algo=ppo", ...])`` -> DictConfig with output and cache dirs in tmp."""
    return lambda overrides=(): compose(list(overrides), tmp_path, stage_cache)


def run_cli(args: list[str], cwd: Path = ROOT, env: dict[str, str] | None = None, timeout: int = 900):
    """Run ``python run.py ARGS`` in a subprocess; returns CompletedProcess (text)."""
    full_env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1", **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run([sys.executable, str(ROOT / "run.py"), *_with_threads(args)], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def stop_during_training(args: list[str], run_dir: Path, send, timeout: int = 600) -> tuple[int, str, float]:
    """Start ``python run.py ARGS``, wait until its RL fit has logged an iteration to ``run_dir``, then
    ``send(process)`` (deliver the signals); returns (exit status, stderr, seconds from ``send`` to exit)."""
    env = {**os.environ, "WANDB_MODE": "offline", "HF_HUB_OFFLINE": "1"}
    env.pop("HYDRA_FULL_ERROR", None)
    process = subprocess.Popen([sys.executable, str(ROOT / "run.py"), *args], cwd=ROOT, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    history = Path(run_dir) / "history.jsonl"
    try:
        deadline = time.time() + timeout
        while not history.exists() or '"stage": "rl"' not in history.read_text():
            assert process.poll() is None and time.time() < deadline, "the run ended before it could be stopped"
            time.sleep(0.05)
        send(process)
        sent = time.time()
        _, stderr = process.communicate(timeout=timeout)
        return process.returncode, stderr, time.time() - sent
    finally:
        if process.poll() is None:
            process.kill()


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())
