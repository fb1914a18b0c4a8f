"""alignbench as a package: conf/ ships inside it, `alignbench` and `python -m alignbench` run from any folder
after a non-editable `pip install .`, and assets arrive as files (alignbench.assets), never installed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from alignbench.app import config_dir
from alignbench.assets import ASSETS, Asset, assets_dir, fetch_command, package_dir
from alignbench.summary import read_summary
from conftest import CONF, ROOT


def test_every_package_under_src_ships_and_conf_with_them():
    from setuptools import find_packages

    tool = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert sorted(tool["packages"]) == sorted(find_packages(str(ROOT / "src")) + ["alignbench.conf"])
    assert tool["package-dir"]["alignbench.conf"] == "conf"
    assert config_dir() == CONF  # a checkout runs on its own conf/


def test_assets_are_found_in_the_fetched_folder_first(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNBENCH_ASSETS", str(tmp_path))
    fake = tmp_path / f"pyrit-{ASSETS['pyrit'].version}" / "pyrit"
    fake.mkdir(parents=True)
    assert assets_dir() == tmp_path and package_dir("pyrit") == fake
    assert fetch_command("pyrit") == "python -m alignbench.assets fetch"
    monkeypatch.setitem(ASSETS, "big-weights", Asset("1.0", "big_weights", "an optional asset", default=False))
    assert fetch_command("big-weights") == "python -m alignbench.assets fetch big-weights"


@pytest.mark.slow
def test_a_wheel_install_runs_alignbench_from_another_folder(tmp_path, stage_cache):
    # --system-site-packages: the venv reuses this environment's torch==2.13.0 and the other pinned
    # dependencies (and pip and setuptools: --without-pip keeps the venv's old bundled setuptools out)
    # instead of downloading them again; alignbench itself is a non-editable copy in the venv, which
    # shadows any editable install of the checkout (asserted below)
    source = tmp_path / "source"  # a copy, so building leaves nothing in the checkout
    shutil.copytree(ROOT, source, ignore=shutil.ignore_patterns(".git", "outputs", "__pycache__", "*.egg-info", "build"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    python, command = venv / "bin" / "python", venv / "bin" / "alignbench"
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "HYDRA_FULL_ERROR")}
    install = subprocess.run([str(python), "-m", "pip", "install", "--no-build-isolation", "--no-input", str(source)],
                             env=env, capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-2000:]
    where = subprocess.run([str(python), "-c", "import alignbench.app as a; print(a.__file__); print(a.config_dir())"],
                           env=env, capture_output=True, text=True, cwd=tmp_path, check=True).stdout.split()
    assert all(str(venv) in line for line in where) and where[1].endswith("alignbench/conf")

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env.update(ALIGNBENCH_CACHE=str(stage_cache), WANDB_MODE="offline", HF_HUB_OFFLINE="1")
    run = subprocess.run([str(command), "experiment=smoke", "logger=none", "trainer.num_threads=1"], env=env,
                         cwd=elsewhere, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    [job] = list((elsewhere / "outputs" / "runs").glob("*/*"))
    assert read_summary(job)["status"] == "ok" and (job / "export" / "merged" / "config.json").is_file()
    help_text = subprocess.run([str(python), "-m", "alignbench", "--help"], env=env, cwd=elsewhere,
                               capture_output=True, text=True, timeout=300)
    assert help_text.returncode == 0 and "== Config ==" in help_text.stdout and "algo: " in help_text.stdout
