"""Train / held-out splits by prompt: no held-out prompt is ever trained on, duplicates are counted,
and the counts reach summary.json."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

from alignbench.config import DataConfig
from alignbench.data.datamodule import build_data
from alignbench.data.splits import prompt_key, split_by_prompt
from alignbench.summary import read_summary
from conftest import run_cli

PKU_SMALL = Path(__file__).parent / "fixtures" / "pku_saferlhf_small.jsonl"


def _pairs(prompts: int, per_prompt: int) -> list[dict]:
    """``per_prompt`` different pairs for each of ``prompts`` prompts (the shape of real preference data)."""
    rows = []
    for p in range(prompts):
        for r in range(per_prompt):
            rows.append({"prompt": f"how do i do task number {p} ?", "response_0": f"refuse {r}",
                         "response_1": f"answer {r} for {p}", "better_response_id": 1, "safer_response_id": r % 2,
                         "is_response_0_safe": True, "is_response_1_safe": bool(r % 2), "category": "c"})
    return rows


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _keys(rows) -> set[str]:
    return {prompt_key(row["prompt"] if isinstance(row, dict) else row.prompt) for row in rows}


def test_split_is_by_prompt_stable_and_independent_of_row_order():
    rows = _pairs(200, 3)
    train, held = split_by_prompt(rows, 0.1, lambda row: row["prompt"])
    assert _keys(train).isdisjoint(_keys(held))
    assert 8 <= len(_keys(held)) <= 35 and len(held) == 3 * len(_keys(held))  # all of a prompt's rows together
    shuffled = rows[:]
    random.Random(1).shuffle(shuffled)
    more = shuffled + _pairs(400, 1)[200 * 1:]  # other prompts added: the old ones keep their side
    _, held_again = split_by_prompt(more, 0.1, lambda row: row["prompt"])
    assert _keys(held) == _keys(held_again) & _keys(rows)
    # whitespace and case do not make another prompt
    twin = {**rows[0], "prompt": "  How do I do TASK number 0 ?"}
    _, held_twin = split_by_prompt(rows + [twin], 0.1, lambda row: row["prompt"])
    assert (prompt_key(twin["prompt"]) in _keys(held_twin)) == (prompt_key(rows[0]["prompt"]) in _keys(held))


def test_preference_file_with_tripled_rows_leaks_no_prompt_and_counts_duplicates(tmp_path):
    rows = _pairs(60, 2)
    path = _write(tmp_path / "pairs.jsonl", rows * 3)  # every row three times, as in the issue
    bundle = build_data(DataConfig(name="pairs", source="preference_jsonl", path=str(path)))
    train_keys, held_keys = _keys(bundle.preference_train), _keys(bundle.preference_eval)
    assert held_keys and train_keys.isdisjoint(held_keys)
    assert _keys(bundle.train_prompts).isdisjoint(_keys(bundle.eval_prompts))  # RL prompts vs evaluation prompts
    assert _keys(bundle.sft_examples).isdisjoint(held_keys)
    split = bundle.split
    assert split["method"] == "prompt_hash" and split["duplicate_rows"] == 2 * len(rows)
    assert split["heldout_prompts"] == len(held_keys)
    assert split["train_prompts"] == len(train_keys) == 60 - len(held_keys)
    assert split["heldout_rows"] == len(bundle.preference_eval) == 2 * len(held_keys) and split["shared_prompts"] == 0


def test_pku_single_file_is_split_not_used_twice_and_source_splits_drop_leaking_rows(tmp_path):
    one_file = build_data(DataConfig(name="pku", source="pku_saferlhf", path=str(PKU_SMALL)))
    assert one_file.split["method"] == "prompt_hash" and one_file.preference_eval  # was: train and eval both = file
    assert _keys(one_file.preference_train).isdisjoint(_keys(one_file.preference_eval))

    folder = tmp_path / "pku"
    folder.mkdir()
    shutil.copy(PKU_SMALL, folder / "train.jsonl")
    lines = PKU_SMALL.read_text().splitlines()
    (folder / "test.jsonl").write_text("\n".join(lines[:2]) + "\n")  # the test split shares 2 rows' prompts
    shared = _keys(json.loads(line) for line in lines[:2])
    leaking = sum(prompt_key(json.loads(line)["prompt"]) in shared for line in lines)
    bundle = build_data(DataConfig(name="pku", source="pku_saferlhf", path=str(folder)))
    assert bundle.split["method"] == "source_splits" and bundle.split["train_rows_dropped"] == leaking
    assert _keys(bundle.preference_train).isdisjoint(_keys(bundle.preference_eval))
    assert len(bundle.preference_train) == len(lines) - leaking


def test_prompt_sets_are_held_out_only_and_the_world_shares_no_prompt(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "kind": "benign"}) + "\n" for p in ("a b", "c d", "A  b", "e")))
    bundle = build_data(DataConfig(name="p", source="prompts_jsonl", path=str(path)))
    assert bundle.train_prompts == [] and [r.prompt for r in bundle.eval_prompts] == ["a b", "c d", "e"]
    assert bundle.split["duplicate_rows"] == 1 and bundle.split["method"] == "heldout_only"
    world = build_data(DataConfig())
    assert world.split["shared_prompts"] == 0 and world.split["heldout_prompts"] == len(world.eval_prompts) > 0


def test_summary_reports_the_split_and_what_the_heldout_metrics_rest_on(tmp_path, stage_cache):
    rows = _pairs(40, 2)
    path = _write(tmp_path / "pairs.jsonl", rows + rows[:10])  # 10 duplicate rows
    result = run_cli(["algo=eval_only", "data=preference_jsonl", f"data.path={path}", "eval.judge=keyword",
                      "logger=none", "experiment=smoke", "trainer.num_threads=1", "eval.samples_per_prompt=1",
                      f"hydra.run.dir={tmp_path / 'run'}"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "dropped 10 duplicate rows" in result.stdout + result.stderr
    summary = read_summary(tmp_path / "run")
    split = summary["split"]
    assert split["duplicate_rows"] == 10 and split["shared_prompts"] == 0
    assert split["train_prompts"] + split["heldout_prompts"] == 40 and split["heldout_prompts"] >= 1
    assert summary["metrics"]["eval/prompts"] == split["heldout_prompts"]  # the evaluation is the held-out prompts
