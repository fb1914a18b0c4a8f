"""Bad input everywhere: every mistake gives one line naming what and where, never a raw traceback.

Config keys and values, data files (missing columns, wrong types, empty or huge prompts, non-UTF-8
bytes, invalid JSONL), ``data.on_bad_row=skip`` (counted in ``summary.json`` ``skipped_rows``), the
feedback agent's malformed JSON, damaged stage-cache entries — and untrusted input in the security
sense: secrets on the command line, remote code in model repos, pickles.

Most cases run in-process (``validate_config``, ``build_data``, or ``cli.main`` with Hydra's runtime
info patched in); two go through the real ``python run.py`` in one multirun.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

import alignbench.algorithms  # noqa: F401 - registers the algorithms
from alignbench.config import DataConfig, ModelConfig, validate_config
from alignbench.errors import CheckpointError, ConfigError, DataError
from alignbench.registry import ALGORITHMS
from alignbench.summary import read_summary
from conftest import CONF, ROOT, compose, run_cli

SRC = ROOT / "src" / "alignbench"


def one_line(message: str) -> str:
    assert "\n" not in message and "Traceback" not in message, message
    return message


# ---------------------------------------------------------------------------------- config
CONFIG_CASES = [
    (["algo=ppo", "+algo.lrr=1"], "config value 'algo.lrr' is invalid: Key 'lrr' not in 'PPOConfig'"),
    (["algo=ppo", "algo.actor_optim.lr=-1"], "config value 'algo.actor_optim.lr' must be > 0 (got -1.0)"),
    (["algo=safe_rlhf", "algo.lagrange.threshold=abc"], "'algo.lagrange.threshold' is invalid: Value 'abc'"),
    (["algo=safe_rlhf", "algo.lagrange.window=0"], "config value 'algo.lagrange.window' must be >= 1 (got 0)"),
    (["algo=ppo", "algo.steps=1.5"], "config value 'algo.steps' is invalid: Value '1.5' of type 'float'"),
    (["algo=ppo", "algo.kl_estimator=k9"], "config value 'algo.kl_estimator' must be k1, k2, k3 or abs (got 'k9')"),
    (["trainer.devices=0"], "config value 'trainer.devices' must be >= 1 (or -1 for all)"),
    (["trainer.checkpoint_every=-1"], "config value 'trainer.checkpoint_every' must be >= 0"),
    (["+trainer.foo=1"], "config value 'trainer.foo' is invalid: Key 'foo' not in 'TrainerConfig'"),
    (["eval.batch_size=abc"], "config value 'eval.batch_size' is invalid"),
    (["model.lora.r=0"], "config value 'model.lora.r' must be > 0"),
    (["data.on_bad_row=maybe"], "config value 'data.on_bad_row' must be error or skip (got 'maybe')"),
    (["seed=abc"], "config value 'seed' must be an integer, got 'abc'"),
    (["stage=bogus"], "config value 'stage' must be one of all, sft, reward_model, cost_model, label_model, rl, got 'bogus'"),
    (["resume=maybe"], "config value 'resume' must be auto, true or false, got 'maybe'"),
    (["max_nan_steps=-1"], "config value 'max_nan_steps' must be an integer >= 0, got -1"),
    (["data=prompts_jsonl", "algo=eval_only"], "config value 'data.path' is required"),
]


@pytest.mark.parametrize("overrides, needle", CONFIG_CASES, ids=[c[0][-1] for c in CONFIG_CASES])
def test_bad_config_is_one_sentence_naming_the_key(composed, overrides, needle):
    cfg = composed(overrides)
    with pytest.raises(ConfigError) as info:
        validate_config(cfg, ALGORITHMS.get(cfg.algo.name).config_class)
    assert needle in one_line(str(info.value))


def test_unknown_judge_is_a_config_error():
    from types import SimpleNamespace

    import alignbench.eval.judges  # noqa: F401 - registers the judges
    from alignbench.training.pipeline import build_judge

    rc = SimpleNamespace(eval=SimpleNamespace(judge="nope"))
    with pytest.raises(ConfigError, match="'eval.judge': unknown judge 'nope'; available: .*keyword"):
        build_judge(rc, SimpleNamespace(world=None, name="x"))


# ---------------------------------------------------------------------------------- data files
GOOD_PROMPT = {"prompt": "how do i bake bread ?", "category": "cooking", "kind": "benign"}
GOOD_PAIR = {"prompt": "p", "response_0": "a", "response_1": "b", "better_response_id": 0, "safer_response_id": 1,
             "is_response_0_safe": True, "is_response_1_safe": False}
# (source, bad line, skip reason, message after "FILE:LINE: ")
DATA_CASES = [
    ("prompts_jsonl", b'{"category": "x"}', "missing_field", "field 'prompt' is missing"),
    ("prompts_jsonl", b'{"prompt": ["a"]}', "wrong_type", "field 'prompt' must be a string, got list"),
    ("prompts_jsonl", b'{"prompt": ""}', "empty_text", "field 'prompt' is empty"),
    ("prompts_jsonl", json.dumps({"prompt": "x" * 500}).encode(), "too_long",
     "field 'prompt' has 500 characters, over the limit of 100"),
    ("prompts_jsonl", b'{"prompt": "caf\xe9"}', "not_utf8", "line is not valid UTF-8 (byte 0xe9 at column 16)"),
    ("prompts_jsonl", b'{"prompt": "unterminated', "invalid_json", "invalid JSON at column 12"),
    ("prompts_jsonl", b'"just a string"', "wrong_type", "row must be a JSON object, got str"),
    ("prompts_jsonl", b'{"prompt": "hi", "kind": "evil"}', "unknown_kind", "field 'kind' is 'evil'"),
    ("preference_jsonl", json.dumps({k: v for k, v in GOOD_PAIR.items() if k != "response_1"}).encode(),
     "missing_field", "field 'response_1' is missing"),
    ("preference_jsonl", json.dumps({**GOOD_PAIR, "better_response_id": 2}).encode(), "bad_value",
     "field 'better_response_id' must be 0 or 1, got 2"),
    ("preference_jsonl", json.dumps({**GOOD_PAIR, "is_response_0_safe": "yes"}).encode(), "wrong_type",
     "field 'is_response_0_safe' must be true or false, got str"),
    ("preference_jsonl", json.dumps({**GOOD_PAIR, "response_0": "   "}).encode(), "empty_text",
     "field 'response_0' is empty"),
    # a JSON escape of a lone surrogate parses, but is no text a tokenizer can take (it crashed one before)
    ("prompts_jsonl", b'{"prompt": "\\ud800 how do i"}', "not_encodable",
     "field 'prompt' holds a lone surrogate \\ud800 at character 1"),
    ("preference_jsonl", json.dumps({**GOOD_PAIR, "response_1": "ok \udfff"}).encode(), "not_encodable",
     "field 'response_1' holds a lone surrogate \\udfff at character 4"),
]


def _file(tmp_path: Path, source: str, bad: bytes) -> Path:
    good = json.dumps(GOOD_PROMPT if source == "prompts_jsonl" else GOOD_PAIR).encode()
    path = tmp_path / f"{source}.jsonl"
    path.write_bytes(b"\n".join([good, good, bad, good]) + b"\n")
    return path


@pytest.mark.parametrize("source, bad, reason, message", DATA_CASES,
                         ids=[f"{c[0].split('_')[0]}-{c[2]}" for c in DATA_CASES])
def test_bad_data_row_is_named_or_counted(tmp_path, source, bad, reason, message):
    from alignbench.data.datamodule import build_data

    path = _file(tmp_path, source, bad)
    config = DataConfig(name=source, source=source, path=str(path), max_prompt_chars=100)
    with pytest.raises(DataError) as info:
        build_data(config)
    assert one_line(str(info.value)).startswith(f"{path}:3: {message}")
    bundle = build_data(DataConfig(name=source, source=source, path=str(path), max_prompt_chars=100,
                                   on_bad_row="skip"))
    assert bundle.skipped == {reason: 1}


@pytest.mark.parametrize("content, needle", [(None, "file not found"), (b"", "no valid rows"),
                                             (b"\n\n", "no valid rows"), (b"{\n[", "no valid rows")])
def test_missing_or_empty_data_file(tmp_path, content, needle):
    from alignbench.data.datamodule import build_data

    path = tmp_path / "data.jsonl"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(DataError) as info:
        build_data(DataConfig(name="p", source="prompts_jsonl", path=str(path), on_bad_row="skip"))
    assert str(path) in one_line(str(info.value)) and needle in str(info.value)


def test_real_cli_bad_file_fails_one_line_and_skip_mode_reports_skipped_rows(tmp_path, stage_cache):
    path = tmp_path / "prompts.jsonl"
    lines = [json.dumps(GOOD_PROMPT), b'{"prompt": 7}'.decode(), '{"prompt": "broken', json.dumps(
        {"prompt": "what is the capital of peru ?", "kind": "benign"})]
    path.write_text("\n".join(lines) + "\n")
    result = run_cli(["-m", "algo=eval_only", "data=prompts_jsonl", f"data.path={path}", "eval.judge=keyword",
                      "logger=none", "experiment=smoke", "trainer.num_threads=1", "data.on_bad_row=error,skip",
                      f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    assert result.returncode == 0, result.stderr[-3000:]  # a failing job never stops the sweep
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("alignbench: error:")]
    assert errors == [f"alignbench: error: {path}:2: field 'prompt' must be a string, got int"]
    failed, ok = read_summary(tmp_path / "sweep" / "0"), read_summary(tmp_path / "sweep" / "1")
    assert failed["status"] == "failed" and failed["error"] == f"{path}:2: field 'prompt' must be a string, got int"
    assert ok["status"] == "ok" and ok["skipped_rows"] == {"wrong_type": 1, "invalid_json": 1}


def _cli(monkeypatch, tmp_path, stage_cache, overrides):
    from alignbench import cli

    tmp_path.mkdir(parents=True, exist_ok=True)  # Hydra creates the job's output dir
    monkeypatch.setattr(cli, "_hydra_info", lambda: (str(tmp_path), False, list(overrides), "run"))
    return cli.main(compose(list(overrides), tmp_path, stage_cache))


def test_cli_config_error_exits_2_with_one_line_and_a_failed_summary(tmp_path, stage_cache, monkeypatch, capsys):
    with pytest.raises(SystemExit) as info:
        _cli(monkeypatch, tmp_path, stage_cache, ["algo=safe_rlhf", "trainer.devices=0", "logger=none"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.strip() == "alignbench: error: config value 'trainer.devices' must be >= 1 (or -1 for all)"
    assert read_summary(tmp_path)["status"] == "failed" and not (tmp_path / "error.log").exists()


# ---------------------------------------------------------------------------------- agent output and caches
@pytest.mark.parametrize("text", [
    "", "not json", '{"reasoning": "r", "unsafe": true', '{"reasoning": "r", "unsafe": "yes", "overrefuse": false,'
    ' "feedback": "f"}', '{"reasoning": "r", "unsafe": true, "overrefuse": false}',
    '{"reasoning": "r", "unsafe": true, "overrefuse": false, "feedback": "f", "extra": 1}',
    '[{"reasoning": "r", "unsafe": true, "overrefuse": false, "feedback": "f"}]', "\udcff\x00{", "{" * 5000,
])
def test_malformed_feedback_agent_json_is_a_parse_error_not_a_crash(text):
    from alignbench.algorithms.waltzrl_protocol import parse_feedback

    assert parse_feedback(text) is None
    good = parse_feedback('{"reasoning": "r", "unsafe": true, "overrefuse": false, "feedback": "f"}')
    assert good is not None and good.flagged


def test_damaged_stage_cache_entry_names_the_file(tmp_path):
    from alignbench.training.stages import load_entry

    entry = tmp_path / "sft-0123"
    entry.mkdir()
    (entry / "weights.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header")
    (entry / "metrics.json").write_text("{}")
    with pytest.raises(CheckpointError) as info:
        load_entry(entry)
    assert str(entry) in one_line(str(info.value)) and "delete it" in str(info.value)


# ---------------------------------------------------------------------------------- secrets and code
@pytest.mark.parametrize("override, shown", [
    ("logger.api_key=abc123", "logger.api_key=***"), ("+hf_token=hf_XYZ", "+hf_token=***"),
    ("++wandb_password=pw", "++wandb_password=***"), ("+logger.AUTH_header=Bearer x", "+logger.AUTH_header=***"),
    ("algo.actor_optim.lr=0.1", "algo.actor_optim.lr=0.1"), ("+hf_token=", "+hf_token="),
    ("seed=1", "seed=1"), ("+HF_TOKEN=x", "+HF_TOKEN=***"),
    ("algo.rollout.max_new_tokens=8", "algo.rollout.max_new_tokens=8"), ("model.tokenizer_id=a/b", "model.tokenizer_id=a/b"),
])
def test_secret_overrides_are_redacted(override, shown):
    from alignbench.cli import redact_overrides

    assert redact_overrides([override]) == [shown]


def test_wandb_config_redaction_hides_secrets_only():
    from alignbench.training.sink import redact

    config = {"algo": {"rollout": {"max_new_tokens": 24}}, "model": {"tokenizer_id": "t"}, "hf_token": "abc",
              "logger": {"wandb_api_key": "k", "auth_header": "h", "author": "me", "password": None}}
    assert redact(config) == {"algo": {"rollout": {"max_new_tokens": 24}}, "model": {"tokenizer_id": "t"},
                              "hf_token": "***", "logger": {"wandb_api_key": "***", "auth_header": "***",
                                                            "author": "me", "password": None}}


def test_secrets_never_reach_summary_wandb_or_the_error_line(tmp_path, stage_cache, monkeypatch, capsys):
    # in-process (no entry point): the composed config's secret stops the job (tests/test_secrets.py: the CLI)
    secret = "hf_SECRET_4242"
    for overrides in (["logger=none", f"+logger.api_key={secret}"], ["algo=sft", "logger=wandb", f"+hf_token={secret}"]):
        bad = tmp_path / str(len(overrides[-1]))
        with pytest.raises(SystemExit) as info:
            _cli(monkeypatch, bad, stage_cache, overrides)
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert secret not in err and "export " in one_line(err.strip())
        summary_text = (bad / "summary.json").read_text()
        key = overrides[-1].split("=")[0]
        assert secret not in summary_text and f"{key}=***" in summary_text
        assert [p for p in bad.rglob("*") if p.is_file() and secret.encode() in p.read_bytes()] == []


def test_wandb_key_is_read_from_the_environment_only():
    from alignbench.config import LoggerConfig

    assert not [f for f in LoggerConfig.__dataclass_fields__ if re.search("key|token|secret|pass", f)]
    for path in SRC.rglob("*.py"):
        text = path.read_text()
        assert "wandb.login" not in text, path
        # only the refusal of a secret on the command line names the variable (it never reads it)
        assert "WANDB_API_KEY" not in text or path.name == "secret_keys.py", path


def test_trust_remote_code_is_off_unless_a_model_config_turns_it_on(monkeypatch, tmp_path):
    import yaml

    import alignbench.models.loading as loading

    assert ModelConfig().trust_remote_code is False
    for path in (CONF / "model").glob("*.yaml"):
        assert yaml.safe_load(path.read_text()).get("trust_remote_code", False) is False, path
    calls = []

    class Loaded:
        generation_config = type("G", (), {})()

        def to(self, dtype):
            return self

    class Tokenizer:
        pad_token, eos_token, pad_token_id = "x", "x", 0

    def record(kind):
        def from_pretrained(location, **kwargs):
            calls.append((kind, kwargs))
            return Tokenizer() if kind == "tokenizer" else Loaded()
        return from_pretrained

    monkeypatch.setattr(loading.AutoModelForCausalLM, "from_pretrained", record("model"))
    monkeypatch.setattr(loading.AutoTokenizer, "from_pretrained", record("tokenizer"))
    for allowed in (False, True):
        calls.clear()
        loading.load_base(ModelConfig(name="m", source="hf", path=str(tmp_path), trust_remote_code=allowed),
                          vocabulary=None, seed=0)
        assert [kwargs["trust_remote_code"] for _, kwargs in calls] == [allowed, allowed]
        assert dict(calls)["model"]["use_safetensors"] is True  # weights never from a pickle


def test_every_torch_load_is_weights_only():
    for path in SRC.rglob("*.py"):
        for line in path.read_text().splitlines():
            if "torch.load(" in line and not line.strip().startswith(("#", "Reads use")):
                assert "weights_only=True" in line, f"{path}: {line.strip()}"
