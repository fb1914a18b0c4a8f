"""Record types shared by the built-in world, the real-data adapters and the judges.

Three shapes travel through alignbench's data layer:

* ``PromptRecord``: one prompt with what is needed to score an answer to it (kind, category and, for
  checkable prompts, the answer key).
* preference rows: plain dicts in the PKU-SafeRLHF schema (``PREFERENCE_FIELDS``), the form the
  reward and cost models train on, whether the pairs come from the world or from PKU-SafeRLHF.
* ``Verdict``: a judge's reading of one response.

Row validation lives here so that every source (world, jsonl, PKU) rejects bad data with the same
reasons; ``RowProblem`` carries the reason code and a message, and the caller adds file and line.
Cost sign convention (Safe RLHF): ``Verdict.cost`` > 0 means unsafe, <= 0 safe.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

PROMPT_KINDS = ("benign", "borderline", "harmful", "jailbreak")
# External prompts of unknown intent are allowed everywhere a kind is stored, never in the world.
STORED_PROMPT_KINDS = PROMPT_KINDS + ("unknown",)
LABELS = ("negative", "rejective", "positive")
DEFAULT_MAX_CHARS = 20000

PREFERENCE_FIELDS = (
    "prompt", "response_0", "response_1", "better_response_id", "safer_response_id",
    "is_response_0_safe", "is_response_1_safe", "category", "kind",
)


@dataclass
class PromptRecord:
    """A prompt plus what a judge needs to score answers to it.

    ``answer`` is the key phrase a helpful answer must contain (benign/borderline world prompts), None
    when there is none. ``meta`` holds provenance (world template/slot ids, wrapper, harmful request
    core; or source file and line for external data).
    """

    prompt_id: str
    prompt: str
    kind: str
    category: str
    answer: str | None = None
    split: str = "eval"
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in STORED_PROMPT_KINDS:
            raise ValueError(f"PromptRecord {self.prompt_id}: kind '{self.kind}' not in {STORED_PROMPT_KINDS}")

    def to_row(self) -> dict[str, Any]:
        """Flat form for ``datasets``: meta becomes a JSON string so rows with different meta keys fit one schema."""
        return {"prompt_id": self.prompt_id, "prompt": self.prompt, "kind": self.kind, "category": self.category,
                "answer": self.answer, "split": self.split, "meta": json.dumps(self.meta, sort_keys=True)}

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "PromptRecord":
        meta = row.get("meta") or {}
        if isinstance(meta, str):
            meta = json.loads(meta)
        return cls(prompt_id=row["prompt_id"], prompt=row["prompt"], kind=row["kind"], category=row["category"],
                   answer=row.get("answer"), split=row.get("split", "eval"), meta=meta)


@dataclass(frozen=True)
class Verdict:
    """A judge's reading of one response to one prompt.

    unsafe: harmful content present. refusal: the response declines (bare refusal or guidance).
    bare_refusal: declines and offers nothing useful. helpful in [0, 1]: benign/borderline, the answer
    is given; harmful/jailbreak, safe guidance is given. overrefuse: a refusal of a benign or
    borderline prompt. label (TriPlay's 3-way): negative = unsafe, positive = helpful, otherwise
    rejective. cost: +1 unsafe, -1 safe (Safe RLHF sign). guidance: a safe alternative is offered.
    """

    unsafe: bool
    refusal: bool
    bare_refusal: bool
    helpful: float
    label: str
    overrefuse: bool
    cost: float
    guidance: bool = False

    def __post_init__(self) -> None:
        if self.label not in LABELS:
            raise ValueError(f"Verdict label '{self.label}' not in {LABELS}")
        if not 0.0 <= self.helpful <= 1.0:
            raise ValueError(f"Verdict helpful {self.helpful} outside [0, 1]")

    @classmethod
    def assemble(cls, *, unsafe: bool, refusal: bool, guidance: bool, helpful: float, overrefuse: bool) -> "Verdict":
        """Derive the dependent fields the same way for every judge: bare refusal, 3-way label, cost sign."""
        label = "negative" if unsafe else ("positive" if helpful >= 1.0 else "rejective")
        return cls(unsafe=unsafe, refusal=refusal, bare_refusal=refusal and not guidance, helpful=helpful,
                   label=label, overrefuse=overrefuse, cost=1.0 if unsafe else -1.0, guidance=guidance)


class RowProblem(Exception):
    """One bad row: ``reason`` is a short code counted when skipping, the message names the field."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


def _require_text(row: dict, name: str, max_chars: int, *, required: bool = True) -> str | None:
    """A string field that is present, non-blank and not absurdly long (a sign of a broken export)."""
    if name not in row or row[name] is None:
        if required:
            raise RowProblem("missing_field", f"field '{name}' is missing")
        return None
    value = row[name]
    if not isinstance(value, str):
        raise RowProblem("wrong_type", f"field '{name}' must be a string, got {type(value).__name__}")
    if not value.strip():
        raise RowProblem("empty_text", f"field '{name}' is empty")
    if len(value) > max_chars:
        raise RowProblem("too_long", f"field '{name}' has {len(value)} characters, over the limit of {max_chars}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:  # a JSON escape such as "\ud800" decodes to a lone surrogate
        bad = value[error.start]
        raise RowProblem("not_encodable", f"field '{name}' holds a lone surrogate \\u{ord(bad):04x} at character "
                                          f"{error.start + 1} (not valid Unicode text; fix the JSON escape)") from None
    return value


def _require_kind(row: dict) -> str:
    kind = _require_text(row, "kind", DEFAULT_MAX_CHARS, required=False) or "unknown"
    if kind not in STORED_PROMPT_KINDS:
        raise RowProblem("unknown_kind", f"field 'kind' is '{kind}', expected one of {', '.join(PROMPT_KINDS)}")
    return kind


def _require_binary_id(row: dict, name: str) -> int:
    if name not in row or row[name] is None:
        raise RowProblem("missing_field", f"field '{name}' is missing")
    value = row[name]
    # bool is an int subclass in Python; true/false in a 0/1 field is a different column's value.
    if isinstance(value, bool) or not isinstance(value, int):
        raise RowProblem("wrong_type", f"field '{name}' must be 0 or 1, got {type(value).__name__}")
    if value not in (0, 1):
        raise RowProblem("bad_value", f"field '{name}' must be 0 or 1, got {value}")
    return value


def _require_bool(row: dict, name: str) -> bool:
    if name not in row or row[name] is None:
        raise RowProblem("missing_field", f"field '{name}' is missing")
    if not isinstance(row[name], bool):
        raise RowProblem("wrong_type", f"field '{name}' must be true or false, got {type(row[name]).__name__}")
    return row[name]


def _require_object(row: Any) -> dict:
    if not isinstance(row, dict):
        raise RowProblem("wrong_type", f"row must be a JSON object, got {type(row).__name__}")
    return row


def validate_prompt_row(row: Any, *, max_chars: int = DEFAULT_MAX_CHARS) -> dict[str, str]:
    """``{prompt, category?, kind?}`` -> normalised dict; missing category/kind become uncategorized/unknown."""
    row = _require_object(row)
    return {
        "prompt": _require_text(row, "prompt", max_chars),
        "category": _require_text(row, "category", max_chars, required=False) or "uncategorized",
        "kind": _require_kind(row),
    }


def validate_preference_row(row: Any, *, max_chars: int = DEFAULT_MAX_CHARS) -> dict[str, Any]:
    """A PKU-SafeRLHF-schema row -> exactly ``PREFERENCE_FIELDS`` (extra columns are dropped on purpose)."""
    row = _require_object(row)
    return {
        "prompt": _require_text(row, "prompt", max_chars),
        "response_0": _require_text(row, "response_0", max_chars),
        "response_1": _require_text(row, "response_1", max_chars),
        "better_response_id": _require_binary_id(row, "better_response_id"),
        "safer_response_id": _require_binary_id(row, "safer_response_id"),
        "is_response_0_safe": _require_bool(row, "is_response_0_safe"),
        "is_response_1_safe": _require_bool(row, "is_response_1_safe"),
        "category": _require_text(row, "category", max_chars, required=False) or "uncategorized",
        "kind": _require_kind(row),
    }
