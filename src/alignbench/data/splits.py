"""Train / held-out splits by prompt, never by row, and duplicate rows counted.

A held-out metric means something only if its prompts were never trained on. Rows are not the unit:
a preference file usually holds several pairs per prompt (and sometimes the same row twice), so a
row split puts the same prompt on both sides. Here the unit is the prompt, identified by
``prompt_key`` (its text with whitespace runs collapsed and case folded, so "How do I X?" and
"how do I  x?" are one prompt), and a prompt is held out when a stable hash of its key falls below
the held-out fraction:

    held_out(p)  <=>  int(sha256(prompt_key(p))[:8]) / 2**64  <  eval_fraction

The decision depends on the prompt alone: not on the row order, the file's size, the seed or the
other prompts, so adding rows never moves a prompt from one side to the other, and every row of a
prompt lands on the same side. (With very few prompts the fraction may select none: then the prompt
with the smallest hash is held out, and at least one prompt always stays for training.)

Exact duplicate rows are dropped and counted; ``SplitReport`` carries the counts that go into
``summary.json`` (``split``) so a reader sees how many prompts every held-out number rests on.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence, TypeVar

Row = TypeVar("Row")


def prompt_key(prompt: str) -> str:
    """The identity of a prompt for splitting and de-duplication (see module docstring)."""
    return " ".join(prompt.split()).casefold()


def _unit(key: str) -> float:
    """A prompt key's stable position in [0, 1)."""
    return int.from_bytes(hashlib.sha256(key.encode("utf-8")).digest()[:8], "big") / 2.0**64


@dataclass
class SplitReport:
    """How a data source was split; written to ``summary.json`` as ``split``.

    method: ``prompt_hash`` (one source, split here), ``source_splits`` (the source's own train / test,
    training rows whose prompt is held out removed), ``world`` (the safety world's held-out templates),
    ``heldout_only`` (an evaluation prompt set: nothing is trained on it).
    """

    method: str
    train_prompts: int
    heldout_prompts: int
    train_rows: int
    heldout_rows: int
    duplicate_rows: int = 0  # exact copies of an earlier row, dropped
    shared_prompts: int = 0  # prompts on both sides after the split (0 unless the source's own splits leak)
    train_rows_dropped: int = 0  # source_splits: training rows whose prompt is held out
    eval_fraction: float | None = None  # prompt_hash: data.eval_fraction
    evaluated_prompts: int | None = None  # the held-out prompts the evaluation uses (data.eval_prompts), when fewer

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def drop_duplicates(rows: Sequence[Row], identity: Callable[[Row], Any] = lambda row: row) -> tuple[list[Row], int]:
    """``rows`` without exact repeats of an earlier row (first kept), and how many were dropped."""
    seen, kept = set(), []
    for row in rows:
        key = json.dumps(identity(row), sort_keys=True, default=str)
        if key not in seen:
            seen.add(key)
            kept.append(row)
    return kept, len(rows) - len(kept)


def split_by_prompt(rows: Sequence[Row], eval_fraction: float, prompt: Callable[[Row], str]
                    ) -> tuple[list[Row], list[Row]]:
    """(training rows, held-out rows): every row of a prompt on the side its hash picks."""
    keys = {prompt_key(prompt(row)) for row in rows}
    held = {key for key in keys if _unit(key) < eval_fraction}
    if not held and len(keys) > 1 and eval_fraction > 0:
        held = {min(keys, key=_unit)}
    if held == keys and len(keys) > 1:  # keep at least one prompt to train on
        held.discard(max(keys, key=_unit))
    train = [row for row in rows if prompt_key(prompt(row)) not in held]
    heldout = [row for row in rows if prompt_key(prompt(row)) in held]
    return train, heldout


def count_prompts(rows: Sequence[Row], prompt: Callable[[Row], str]) -> int:
    return len({prompt_key(prompt(row)) for row in rows})


def shared_prompts(train: Sequence[Row], heldout: Sequence[Row], prompt: Callable[[Row], str]) -> int:
    """How many held-out prompts also appear among the training rows."""
    return len({prompt_key(prompt(row)) for row in train} & {prompt_key(prompt(row)) for row in heldout})
