"""The data a run needs, from any source, and the LightningDataModule that batches it.

``build_data`` turns ``data=`` into a ``DataBundle``: training prompts (RL), evaluation prompts,
SFT examples, preference pairs (train / held-out) in the PKU-SafeRLHF schema, and — for ``model=tiny``
— the vocabulary its tokenizer is built from. Rows skipped under ``data.on_bad_row=skip`` are counted
in ``skipped``, exact duplicate rows in ``split``, both reported in ``summary.json``; nothing is
dropped silently. Train and held-out are split by prompt, never by row (``alignbench.data.splits``):
a preference file by a stable hash of each prompt (``data.eval_fraction``), a source with its own
test split keeps it and drops the training rows of held-out prompts, and prompt sets
(``prompts_jsonl``, ``prompt_set``) are held-out only.

The data module samples exactly ``iterations × batch_size`` items per fit from a seeded generator
(re-shuffling each pass over the data), so the number of algorithm iterations is the config's, not
the data set's size, and a resumed run sees the same batches.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import lightning as L
import torch
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, Sampler

from alignbench.config import DataConfig
from alignbench.data.schema import PromptRecord
from alignbench.data.splits import (
    SplitReport,
    count_prompts,
    drop_duplicates,
    prompt_key,
    shared_prompts,
    split_by_prompt,
)
from alignbench.errors import ConfigError, DataError

logger = logging.getLogger(__name__)


@dataclass
class DataBundle:
    name: str
    train_prompts: list[PromptRecord]
    eval_prompts: list[PromptRecord]
    sft_examples: list[dict[str, Any]]
    preference_train: list[dict[str, Any]]
    preference_eval: list[dict[str, Any]]
    vocabulary: list[str] | None = None
    world: Any = None
    skipped: dict[str, int] = field(default_factory=dict)
    split: dict[str, Any] = field(default_factory=dict)  # SplitReport.as_dict(): summary.json's "split"
    #: ``data=rlaif``: the rlaif settings; its pairs are built from the SFT model's answers after the SFT
    #: stage (``alignbench.training.rlaif``), so they are not part of the fingerprint (their cache key is)
    rlaif: Any = None
    #: ``data=rlaif``: the labelled answers the pairs were built from (``alignbench.data.rlaif``)
    labelled_samples: list[dict[str, Any]] = field(default_factory=list)
    _fingerprint: str | None = field(default=None, repr=False)

    def fingerprint(self) -> str:
        """Hash of the training data itself (SFT examples, preference pairs, RL prompts, vocabulary), so
        cached stages notice when generated data changes and a checkpoint knows what it trained on."""
        if self._fingerprint is None:
            import hashlib
            import json

            pairs = [] if self.rlaif is not None else self.preference_train  # derived pairs: see ``rlaif``
            payload = json.dumps([self.sft_examples, pairs, [r.prompt for r in self.train_prompts],
                                  self.vocabulary], sort_keys=True, default=str)
            self._fingerprint = hashlib.sha256(payload.encode()).hexdigest()[:16]
        return self._fingerprint


def _corpus_vocabulary(texts: Sequence[str], limit: int = 4000) -> list[str]:
    """Most frequent whitespace tokens of a corpus (for ``model=tiny`` on real text)."""
    counts: dict[str, int] = {}
    for text in texts:
        for token in text.split():
            counts[token] = counts.get(token, 0) + 1
    return [t for t, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:limit]]


def _prompts_from_pairs(rows: list[dict[str, Any]], split: str) -> list[PromptRecord]:
    seen: dict[str, PromptRecord] = {}
    for row in rows:
        if prompt_key(row["prompt"]) not in seen:
            seen[prompt_key(row["prompt"])] = PromptRecord(
                prompt_id=f"{split}-{len(seen)}", prompt=row["prompt"], kind=row.get("kind") or "unknown",
                category=row.get("category") or "uncategorized", answer=None, split=split, meta={})
    return list(seen.values())


def _sft_from_pairs(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """SFT targets from preference data: the response that is both safer and better when one is."""
    examples = []
    for row in rows:
        better, safer = int(row["better_response_id"]), int(row["safer_response_id"])
        chosen = safer if row.get(f"is_response_{safer}_safe", True) else better
        examples.append({"prompt": row["prompt"], "response": row[f"response_{chosen}"],
                         "prompt_kind": row.get("kind") or "unknown", "category": row.get("category")})
    return examples


def _pair_prompt(row: dict[str, Any]) -> str:
    return row["prompt"]


def _record_prompt(record: PromptRecord) -> str:
    return record.prompt


def _preference_rows(cfg: DataConfig) -> tuple[list[dict], list[dict], dict[str, int], SplitReport]:
    """(train rows, held-out rows, skipped rows, split report) of a preference source (module docstring)."""
    from alignbench.data import adapters

    if cfg.source == "pku_saferlhf":
        source = cfg.path or adapters.PKU_HUB_ID
        heldout_source = cfg.eval_path or source
        one_file = heldout_source == source and Path(str(source)).expanduser().is_file()
        train = adapters.load_pku_saferlhf(source, "train", on_bad_row=cfg.on_bad_row)
        if not one_file:  # the source's own train / test splits
            held = adapters.load_pku_saferlhf(heldout_source, "test", on_bad_row=cfg.on_bad_row)
            train_rows, dup_train = drop_duplicates(train.rows)
            eval_rows, dup_eval = drop_duplicates(held.rows)
            held_keys = {prompt_key(row["prompt"]) for row in eval_rows}
            kept = [row for row in train_rows if prompt_key(row["prompt"]) not in held_keys]
            report = SplitReport("source_splits", count_prompts(kept, _pair_prompt),
                                 count_prompts(eval_rows, _pair_prompt), len(kept), len(eval_rows),
                                 duplicate_rows=dup_train + dup_eval, train_rows_dropped=len(train_rows) - len(kept))
            return kept, eval_rows, _sum(train.skipped, held.skipped), report
        loaded = train
    else:
        loaded = adapters.load_preference_jsonl(cfg.path, on_bad_row=cfg.on_bad_row, max_chars=cfg.max_prompt_chars)
    rows, duplicates = drop_duplicates(loaded.rows)
    train_rows, eval_rows = split_by_prompt(rows, cfg.eval_fraction, _pair_prompt)
    report = SplitReport("prompt_hash", count_prompts(train_rows, _pair_prompt), count_prompts(eval_rows, _pair_prompt),
                         len(train_rows), len(eval_rows), duplicate_rows=duplicates, eval_fraction=cfg.eval_fraction)
    return train_rows, eval_rows, dict(loaded.skipped), report


def build_data(cfg: DataConfig, *, cache_dir: str | None = None) -> DataBundle:
    """Load ``data=`` into a ``DataBundle`` (see module docstring)."""
    if cfg.source != "world":
        from alignbench.data import adapters
    if cfg.source == "world":
        from alignbench.data.world import SafetyWorld, WorldConfig

        try:
            world = SafetyWorld(WorldConfig(**dict(cfg.world)))
        except TypeError as exc:
            raise DataError(f"data.world has an unknown setting: {exc}") from None
        bundle = DataBundle(
            name=cfg.name,
            train_prompts=world.prompts("train"), eval_prompts=world.prompts("eval"),
            sft_examples=world.sft_examples("train"),
            preference_train=world.preference_pairs("train"), preference_eval=world.preference_pairs("eval"),
            vocabulary=world.vocabulary(), world=world)
        train, held = bundle.train_prompts, bundle.eval_prompts
        bundle.split = SplitReport("world", count_prompts(train, _record_prompt), count_prompts(held, _record_prompt),
                                   len(train), len(held), shared_prompts=shared_prompts(train, held, _record_prompt)
                                   ).as_dict()
    elif cfg.source in ("pku_saferlhf", "preference_jsonl"):
        train_rows, eval_rows, skipped, report = _preference_rows(cfg)
        report.shared_prompts = shared_prompts(train_rows, eval_rows, _pair_prompt)
        bundle = DataBundle(
            name=cfg.name, train_prompts=_prompts_from_pairs(train_rows, "train"),
            eval_prompts=_prompts_from_pairs(eval_rows, "eval"), sft_examples=_sft_from_pairs(train_rows),
            preference_train=train_rows, preference_eval=eval_rows, skipped=skipped, split=report.as_dict(),
            vocabulary=_corpus_vocabulary([t for r in train_rows + eval_rows
                                           for t in (r["prompt"], r["response_0"], r["response_1"])]))
    elif cfg.source in ("prompts_jsonl", "prompt_set"):
        if cfg.source == "prompts_jsonl":
            loaded = adapters.load_prompts_jsonl(cfg.path, on_bad_row=cfg.on_bad_row,
                                                 max_chars=cfg.max_prompt_chars)
            records, skipped = loaded.rows, dict(loaded.skipped)
        else:
            records, skipped = adapters.load_prompt_set(cfg.prompt_set), {}
        # an evaluation prompt set: held out entirely (nothing trains on it); a repeated prompt counted once
        records, duplicates = drop_duplicates(records, lambda record: prompt_key(record.prompt))
        bundle = DataBundle(name=cfg.name, train_prompts=[], eval_prompts=records, sft_examples=[],
                            preference_train=[], preference_eval=[], skipped=skipped,
                            split=SplitReport("heldout_only", 0, len(records), 0, len(records),
                                              duplicate_rows=duplicates).as_dict(),
                            vocabulary=_corpus_vocabulary([r.prompt for r in records]))
    elif cfg.source == "rlaif":
        from alignbench.data.rlaif import load_rlaif_prompts

        train, held, report = load_rlaif_prompts(cfg)
        report.shared_prompts = shared_prompts(train, held, _record_prompt)
        bundle = DataBundle(name=cfg.name, train_prompts=train, eval_prompts=held, sft_examples=[],
                            preference_train=[], preference_eval=[], split=report.as_dict(), rlaif=cfg.rlaif,
                            vocabulary=_corpus_vocabulary([r.prompt for r in train + held]))
    else:
        raise DataError(f"data.source '{cfg.source}' is not one of world, pku_saferlhf, preference_jsonl, "
                        f"prompts_jsonl, prompt_set, rlaif")
    if bundle.split.get("duplicate_rows"):
        logger.warning("data '%s': dropped %d duplicate rows (exact copies of an earlier row)", cfg.name,
                       bundle.split["duplicate_rows"])
    if cfg.eval_prompts and len(bundle.eval_prompts) > cfg.eval_prompts:
        # a deterministic, kind-stratified subset keeps every kind represented
        bundle.eval_prompts = _stratified(bundle.eval_prompts, cfg.eval_prompts)
        bundle.split["evaluated_prompts"] = len(bundle.eval_prompts)
    return bundle


def _stratified(records: list[PromptRecord], size: int) -> list[PromptRecord]:
    by_kind: dict[str, list[PromptRecord]] = {}
    for record in records:
        by_kind.setdefault(record.kind, []).append(record)
    chosen: list[PromptRecord] = []
    while len(chosen) < size:
        for kind in sorted(by_kind):
            if by_kind[kind] and len(chosen) < size:
                chosen.append(by_kind[kind].pop(0))
    return chosen


def _sum(a: dict[str, int], b: dict[str, int]) -> dict[str, int]:
    return {k: a.get(k, 0) + b.get(k, 0) for k in set(a) | set(b)}


class SkipSampler(Sampler):
    """The indices of ``sampler`` from position ``start`` on: the order a full pass gives, minus the
    items already consumed, so a resumed fit's data position is exact whatever the loader does."""

    def __init__(self, sampler: Sampler, start: int) -> None:
        self.sampler, self.start = sampler, int(start)

    def __iter__(self):
        return iter(list(self.sampler)[self.start:])

    def __len__(self) -> int:
        return max(0, len(self.sampler) - self.start)


class ComponentDataModule(L.LightningDataModule):
    """Serves ``iterations × batch_size`` items of a component's ``train_items`` per fit.

    ``start_iteration`` (a resumed fit) skips the first ``start_iteration × batch_size`` items of the
    same seeded order, so iteration k of a resumed run gets exactly the batch iteration k of an
    uninterrupted run got. Lightning's own mid-epoch restart cannot do this for a plain DataLoader (it
    re-creates the iterator from the first batch), so resumed fits never rely on it.
    """

    def __init__(self, component, seed: int, start_iteration: int = 0) -> None:
        super().__init__()
        self.component = component
        self.seed = seed
        self.start_iteration = int(start_iteration)  # resumed fit: batches already consumed

    def train_dataloader(self) -> DataLoader:
        items = list(self.component.train_items())
        if not items:
            raise DataError(f"{type(self.component).__name__} has no training data in this data config")
        generator = torch.Generator().manual_seed(self.seed)
        total = self.component.num_iterations * self.component.batch_size
        sampler = RandomSampler(items, replacement=False, num_samples=total, generator=generator)
        if self.start_iteration:  # resume: the same seeded order minus the items already consumed
            sampler = SkipSampler(sampler, self.start_iteration * self.component.batch_size)
        trainer = getattr(self, "trainer", None)
        world = int(getattr(trainer, "world_size", 1) or 1)
        if world > 1:  # DDP: every rank takes its share of the batch one process would draw
            if self.component.batch_size % world:
                raise ConfigError(f"batch size {self.component.batch_size} of {type(self.component).__name__} is not "
                                  f"divisible by the {world} DDP ranks; choose a multiple of {world}")
            shares = RankShareBatchSampler(BatchSampler(sampler, self.component.batch_size, drop_last=False),
                                           rank=int(trainer.global_rank), world=world)
            return DataLoader(items, batch_sampler=shares, collate_fn=self.component.collate, num_workers=0)
        return DataLoader(items, batch_size=self.component.batch_size, sampler=sampler,
                          collate_fn=self.component.collate, num_workers=0, drop_last=False)


class RankShareBatchSampler(Sampler):
    """Rank ``rank``'s contiguous ``1 / world`` of every batch of ``batches`` (same seed on every rank,
    so the ranks' shares together are exactly the batch a single process gets)."""

    def __init__(self, batches: BatchSampler, rank: int, world: int) -> None:
        self.batches, self.rank, self.world = batches, rank, world

    def __iter__(self):
        for batch in self.batches:
            share = len(batch) // self.world
            yield batch[self.rank * share:(self.rank + 1) * share]

    def __len__(self) -> int:
        return len(self.batches)


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")
