"""Secrets come from the environment: on the command line or in a config file they stop the run with one
line naming the variable to export, and no file a run writes (W&B's offline run included) holds them."""

from __future__ import annotations

from pathlib import Path

import pytest

from alignbench.secret_keys import env_name, redact, refusal, secret_arguments, secret_config_keys
from conftest import compose, run_cli

SECRET = "hf_XXXX_secret_0451"


def _files_holding(root: Path, needle: str) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle.encode() in p.read_bytes()]


@pytest.mark.parametrize("argv, found", [
    (["algo=sft", f"+hf_token={SECRET}"], ["hf_token"]), (["-m", "+HF_TOKEN=a,b"], ["HF_TOKEN"]),
    (["++logger.wandb_api_key=k"], ["logger.wandb_api_key"]), (["+hf_token="], []),
    (["algo.rollout.max_new_tokens=8", "model.tokenizer_id=a/b", "--config-name", "config"], []),
])
def test_secret_arguments_are_found_by_key(argv, found):
    assert secret_arguments(argv) == found


@pytest.mark.parametrize("key, env", [("hf_token", "HF_TOKEN"), ("+model.token", "HF_TOKEN"),
                                      ("logger.api_key", "WANDB_API_KEY"), ("wandb_api_key", "WANDB_API_KEY"),
                                      ("openai_api_key", "OPENAI_API_KEY"), ("db.password", "PASSWORD")])
def test_the_refusal_names_the_environment_variable(key, env):
    assert env_name(key) == env
    assert f"export {env}=... instead" in refusal(key) and "\n" not in refusal(key)


def test_no_shipped_config_holds_a_secret_looking_key(tmp_path, stage_cache):
    for overrides in ([], ["algo=safe_rlhf", "model=alpaca7b", "trainer=fsdp"], ["algo=triplay", "logger=csv"]):
        assert secret_config_keys(dict(compose(overrides, tmp_path, stage_cache))) == []


def test_redact_masks_secret_keys_and_override_strings():
    assert redact({"task": ["seed=1", f"+hf_token={SECRET}"], "x": {"api_key": "k", "max_new_tokens": 8}}) == {
        "task": ["seed=1", "+hf_token=***"], "x": {"api_key": "***", "max_new_tokens": 8}}


def test_a_secret_on_the_command_line_stops_the_run_before_anything_is_written(tmp_path):
    run_dir = tmp_path / "run"
    result = run_cli(["algo=sft", "experiment=smoke", f"+hf_token={SECRET}", f"hydra.run.dir={run_dir}"])
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [f"alignbench: error: {refusal('hf_token')}"] and "export HF_TOKEN=" in lines[0]
    assert SECRET not in result.stdout + result.stderr
    assert not run_dir.exists()


def test_a_secret_in_a_config_file_is_refused_and_scrubbed_from_hydra_files(tmp_path):
    extra = tmp_path / "conf" / "extra"
    extra.mkdir(parents=True)
    (extra / "secret.yaml").write_text(f"# @package _global_\nhf_token: {SECRET}\n")
    run_dir = tmp_path / "run"
    result = run_cli(["--config-dir", str(tmp_path / "conf"), "algo=sft", "experiment=smoke", "+extra=secret",
                      "logger=wandb", f"hydra.run.dir={run_dir}"])
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == f"alignbench: error: {refusal('hf_token')}"
    assert "hf_token: '***'" in (run_dir / ".hydra" / "config.yaml").read_text()
    assert (run_dir / "summary.json").exists() and _files_holding(run_dir, SECRET) == []


@pytest.mark.slow
def test_a_token_from_the_environment_reaches_no_file_of_the_run(tmp_path, stage_cache):
    run_dir = tmp_path / "run"
    result = run_cli(["algo=sft", "experiment=smoke", "logger=wandb", "trainer.num_threads=1",
                      f"hydra.run.dir={run_dir}"], env={"HF_TOKEN": SECRET, "WANDB_API_KEY": SECRET + "w"})
    assert result.returncode == 0, result.stderr[-2000:]
    assert list(run_dir.glob("wandb/offline-run-*/*.wandb"))  # the W&B run is there, and is searched too
    assert _files_holding(run_dir, SECRET) == [] and SECRET not in result.stdout + result.stderr
