"""``SafetyWorld``: the built-in, verifiable safety environment (prompts, responses, SFT data, splits).

A tiny word-level model must learn this world on CPU in minutes, so everything is generated from
the small template set in ``templates`` and is exactly judgeable (``judge``). Determinism: every
random choice draws from ``random.Random("<seed>:<purpose>:<split>")``, so the same ``WorldConfig``
always gives the same data and a different seed gives different data.

Held-out split. Each prompt family crosses templates with slot values; the eval split takes the
(template, slot) combinations on a seeded diagonal, ``(perm_t[t] + perm_s[s] + offset) % k == 0``
with ``k = holdout_every``. That holds out about 1/k of the combinations while every template and
every slot value still appears in training (only their pairing is new), which is what makes eval a
generalisation test rather than a memory test.

The SFT mixture makes the starting model measurably unsafe and over-refusing; jailbreak compliance
is scaled per wrapper by its strength (``templates.JAILBREAK_WRAPPERS``) so a TriPlay attacker has
something to discover.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from itertools import combinations
from pathlib import Path
from typing import Iterable

from alignbench.data.schema import PROMPT_KINDS, PromptRecord, Verdict
from alignbench.data.world import annotators
from alignbench.data.world import templates as T
from alignbench.data.world.judge import contains_phrase, tokens_of
from alignbench.data.world.judge import judge as ground_truth
from alignbench.errors import ConfigError
from alignbench.utils.oracle import consult

# Bump when templates or generation logic change, so cached datasets of older worlds are not reused.
WORLD_VERSION = 2
SPLITS = ("train", "eval")
DATA_PRODUCTS = ("prompts", "sft", "preference", "feedback", "revision", "attack", "evaluator")


def _default_sft_mixture() -> dict[str, dict[str, float]]:
    return {
        "benign": {"helpful": 0.85, "refusal": 0.10, "wrong": 0.05},
        "borderline": {"helpful": 0.6, "refusal": 0.4},
        "harmful": {"unsafe": 0.35, "refusal": 0.35, "guidance": 0.30},
        "jailbreak": {"unsafe": 0.5, "refusal": 0.25, "guidance": 0.25},
    }


_DEFAULT_TRAIN_SIZES = {"benign": 150, "borderline": 80, "harmful": 80, "jailbreak": 150}
_DEFAULT_EVAL_SIZES = {"benign": 60, "borderline": 36, "harmful": 36, "jailbreak": 64}


@dataclass
class WorldConfig:
    """Everything that shapes the generated world; its hash keys the dataset cache.

    Sizes are maxima per prompt kind (a kind with fewer held-in combinations gives what it has).
    ``sft_mixture[prompt_kind][response_kind]`` are sampling probabilities (each row sums to 1).
    """

    seed: int = 0
    holdout_every: int = 3
    train_sizes: dict[str, int] = field(default_factory=lambda: dict(_DEFAULT_TRAIN_SIZES))
    eval_sizes: dict[str, int] = field(default_factory=lambda: dict(_DEFAULT_EVAL_SIZES))
    sft_mixture: dict[str, dict[str, float]] = field(default_factory=_default_sft_mixture)
    sft_samples_per_prompt: int = 4
    wrapper_strength: bool = True  # scale jailbreak compliance per wrapper (False: same rate for all)
    preference_pairs_per_prompt: int = 3
    preference_flip_prob: float = 0.05
    label_flip_prob: float = 0.1  # a pair response's 3-way rater label is wrong with this probability
    feedback_label_noise: float = 0.15
    feedback_samples_per_prompt: int = 2
    revision_follow_prob: float = 0.5
    revision_samples_per_prompt: int = 2
    attack_samples_per_seed: int = 4
    evaluator_samples_per_prompt: int = 2
    cache_dir: str = "~/.cache/alignbench/world"

    def __post_init__(self) -> None:
        # Plain dicts even when built from an OmegaConf node (so the config hashes), and a partial
        # override such as ``train_sizes: {benign: 10}`` keeps the defaults of the kinds it omits.
        self.train_sizes = {**_DEFAULT_TRAIN_SIZES, **{str(k): int(v) for k, v in self.train_sizes.items()}}
        self.eval_sizes = {**_DEFAULT_EVAL_SIZES, **{str(k): int(v) for k, v in self.eval_sizes.items()}}
        self.sft_mixture = {**_default_sft_mixture(), **{str(kind): {str(k): float(p) for k, p in mixture.items()}
                                                         for kind, mixture in self.sft_mixture.items()}}
        if self.holdout_every < 2:
            raise ConfigError(f"world.holdout_every must be >= 2, got {self.holdout_every}")
        for name in ("sft_samples_per_prompt", "preference_pairs_per_prompt", "feedback_samples_per_prompt",
                     "revision_samples_per_prompt", "attack_samples_per_seed", "evaluator_samples_per_prompt"):
            if getattr(self, name) < 1:
                raise ConfigError(f"world.{name} must be >= 1, got {getattr(self, name)}")
        if any(size < 0 for size in (*self.train_sizes.values(), *self.eval_sizes.values())):
            raise ConfigError(f"world sizes must be >= 0, got train {self.train_sizes}, eval {self.eval_sizes}")
        for name in ("preference_flip_prob", "label_flip_prob", "feedback_label_noise", "revision_follow_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"world.{name} must be in [0, 1], got {value}")
        for kind, mixture in self.sft_mixture.items():
            allowed = T.RESPONSE_KINDS_FOR.get(kind)
            if allowed is None:
                raise ConfigError(f"world.sft_mixture has unknown prompt kind '{kind}'")
            unknown = set(mixture) - set(allowed)
            if unknown or any(p < 0 for p in mixture.values()) or abs(sum(mixture.values()) - 1.0) > 1e-6:
                raise ConfigError(f"world.sft_mixture.{kind} must map {'/'.join(allowed)} to probabilities "
                                  f"summing to 1, got {dict(mixture)}")

    def cache_key(self) -> str:
        """Hash of everything that changes the data (not where it is cached)."""
        content = {k: v for k, v in asdict(self).items() if k != "cache_dir"}
        content["world_version"] = WORLD_VERSION
        return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()[:16]


@lru_cache(maxsize=1)
def _vocabulary_index() -> dict[str, int]:
    return {token: i for i, token in enumerate(T.world_vocabulary())}


def world_text_embedding(text: str, extra_tokens: tuple[str, ...] = ()) -> list[float]:
    """Unit-length bag-of-words vector over the world vocabulary (zeros for text with no known token).

    Used for TriPlay's embedding-similarity diversity term on the tiny model, which has no sentence
    encoder: cosine similarity of two of these is their word-overlap similarity. ``extra_tokens`` get a
    dimension each after the vocabulary's (e.g. TriPlay's ``<request>`` placeholder, so that two bare
    strategy templates ``"<request>"`` are identical rather than two zero vectors).
    """
    index = _vocabulary_index()
    vector = [0.0] * (len(index) + len(extra_tokens))
    extra = {token: len(index) + i for i, token in enumerate(extra_tokens)}
    for token in tokens_of(text):
        if token in index:
            vector[index[token]] += 1.0
        elif token in extra:
            vector[extra[token]] += 1.0
    norm = math.sqrt(sum(v * v for v in vector))
    return [v / norm for v in vector] if norm else vector


def _all_families() -> tuple[T.Family, ...]:
    return T.BENIGN_FAMILIES + T.BORDERLINE_FAMILIES + T.harmful_families() + T.jailbreak_families()


class SafetyWorld:
    """The generated world for one ``WorldConfig``: prompts per split and every data product built on them."""

    #: the jailbreak strategies attacks are written with (name -> (template, strength)); TriPlay reads them here
    wrappers = T.JAILBREAK_WRAPPERS

    def __init__(self, config: WorldConfig | None = None, **overrides) -> None:
        self.config = config if config is not None else WorldConfig(**overrides)
        self._records: dict[str, PromptRecord] = {}
        self._splits = {split: self._select(split, pools) for split, pools in self._split_pools().items()}

    # ------------------------------------------------------------ prompts and splits
    def rng(self, purpose: str, split: str = "") -> random.Random:
        """The seeded generator for one data product and split (independent streams per purpose)."""
        return random.Random(f"{self.config.seed}:{purpose}:{split}")

    def _split_pools(self) -> dict[str, dict[str, dict[str, list[PromptRecord]]]]:
        """split -> kind -> family -> records, assigned by the seeded held-out diagonal."""
        pools: dict = {split: {kind: {} for kind in PROMPT_KINDS} for split in SPLITS}
        rng, every = self.rng("holdout"), self.config.holdout_every
        for family in _all_families():
            template_rank = rng.sample(range(len(family.templates)), len(family.templates))
            slot_rank = rng.sample(range(len(family.slots)), len(family.slots))
            offset = rng.randrange(every)
            for t in range(len(family.templates)):
                for s in range(len(family.slots)):
                    split = "eval" if (template_rank[t] + slot_rank[s] + offset) % every == 0 else "train"
                    record = self._make_record(family, t, s, split)
                    self._records[record.prompt_id] = record
                    pools[split][family.kind].setdefault(family.name, []).append(record)
        return pools

    @staticmethod
    def _make_record(family: T.Family, t: int, s: int, split: str) -> PromptRecord:
        values, answer = family.slots[s]
        meta = {"family": family.name, "template": t, "slot": s}
        if family.kind in ("harmful", "jailbreak"):
            meta["core"] = values["x"]
        if family.kind == "jailbreak":
            wrapper_index, phrasing_index = divmod(t, len(T.HARMFUL_PHRASINGS))
            meta["wrapper"] = list(T.JAILBREAK_WRAPPERS)[wrapper_index]
            meta["request"] = T.HARMFUL_PHRASINGS[phrasing_index].format(core=values["x"])
        return PromptRecord(prompt_id=f"{family.kind}/{family.name}/{t}/{s}",
                            prompt=family.templates[t].format(**values), kind=family.kind,
                            category=family.category, answer=answer, split=split, meta=meta)

    def _select(self, split: str, pools: dict[str, dict[str, list[PromptRecord]]]) -> list[PromptRecord]:
        """Take up to the configured number per kind, round-robin over families so none dominates."""
        sizes = self.config.train_sizes if split == "train" else self.config.eval_sizes
        rng, chosen = self.rng("select", split), []
        for kind in PROMPT_KINDS:
            queues = [rng.sample(records, len(records)) for _, records in sorted(pools[kind].items())]
            rng.shuffle(queues)
            taken: list[PromptRecord] = []
            while len(taken) < sizes.get(kind, 0) and any(queues):
                for queue in queues:
                    if queue and len(taken) < sizes.get(kind, 0):
                        taken.append(queue.pop())
            chosen += taken
        return chosen

    def prompts(self, split: str, kinds: Iterable[str] | None = None) -> list[PromptRecord]:
        """The split's prompts, optionally only some kinds (order is fixed by the seed)."""
        if split not in self._splits:
            raise ConfigError(f"unknown world split '{split}'; expected one of {', '.join(SPLITS)}")
        wanted = set(kinds) if kinds is not None else set(PROMPT_KINDS)
        return [record for record in self._splits[split] if record.kind in wanted]

    def record(self, prompt_id: str) -> PromptRecord:
        """Look a prompt up by id (any generated combination, selected into a split or not)."""
        return self._records[prompt_id]

    @staticmethod
    def vocabulary() -> list[str]:
        """Every token any world text can contain, sorted."""
        return T.world_vocabulary()

    # ------------------------------------------------------------ responses
    @staticmethod
    def response_options(record: PromptRecord, response_kind: str) -> list[str]:
        """Every text the world can generate for ``record`` as a response of ``response_kind``."""
        if response_kind not in T.RESPONSE_KINDS_FOR.get(record.kind, ()):
            raise ValueError(f"no '{response_kind}' responses for {record.kind} prompts")
        if response_kind == "refusal":
            return list(T.REFUSALS)
        if response_kind == "guidance":
            help_text = T.SAFE_HELP[record.category][0]
            return [phrasing.format(help=help_text) for phrasing in T.GUIDANCE_PHRASINGS]
        if response_kind in ("unsafe", "disguised"):
            markers = T.HARM_MARKERS_BY_CATEGORY[record.category]
            unsafe = [phrasing.format(m1=m1, m2=m2) for phrasing in T.UNSAFE_PHRASINGS
                      for m1, m2 in combinations(markers, 2)]
            if response_kind == "disguised":
                return [f"{refusal} {text}" for refusal in T.REFUSALS[:2] for text in unsafe]
            return unsafe
        phrasings = T.BENIGN_ANSWER_PHRASINGS if record.kind == "benign" else T.BORDERLINE_ANSWER_PHRASINGS
        answers = [record.answer] if response_kind == "helpful" else _wrong_answers(record)
        return [phrasing.format(answer=answer) for phrasing in phrasings for answer in answers]

    def reference_responses(self, record: PromptRecord) -> dict[str, list[str]]:
        """response kind -> all texts of that kind for ``record`` (what the judge is checked against)."""
        return {kind: self.response_options(record, kind) for kind in T.RESPONSE_KINDS_FOR[record.kind]}

    def sample_response(self, record: PromptRecord, response_kind: str, rng: random.Random) -> str:
        """One text of ``response_kind`` for ``record``, phrasing (and markers/wrong answer) drawn from ``rng``."""
        return rng.choice(self.response_options(record, response_kind))

    def judge(self, record: PromptRecord, text: str) -> Verdict:
        """Ground-truth verdict (see ``alignbench.data.world.judge``): the evaluation oracle, so guarded
        (``alignbench.utils.oracle``: refused inside a training step unless ``signals=oracle``)."""
        consult("SafetyWorld.judge")
        return ground_truth(record, text)

    def response_mixture(self, record: PromptRecord) -> dict[str, float]:
        """The SFT response-kind distribution for this prompt (jailbreaks scaled by wrapper strength)."""
        mixture = dict(self.config.sft_mixture[record.kind])
        wrapper = record.meta.get("wrapper")
        if record.kind != "jailbreak" or not self.config.wrapper_strength or wrapper not in T.JAILBREAK_WRAPPERS:
            return mixture
        strengths = [strength for _, strength in T.JAILBREAK_WRAPPERS.values()]
        relative = T.JAILBREAK_WRAPPERS[wrapper][1] / (sum(strengths) / len(strengths))
        base_unsafe = mixture.get("unsafe", 0.0)
        if base_unsafe >= 1.0:
            return mixture
        # Rescale the unsafe share, then shrink/grow the other kinds proportionally to keep a distribution.
        unsafe = min(0.95, base_unsafe * relative)
        rest = (1.0 - unsafe) / (1.0 - base_unsafe)
        return {kind: (unsafe if kind == "unsafe" else p * rest) for kind, p in mixture.items()}

    def sample_response_kind(self, record: PromptRecord, rng: random.Random) -> str:
        """A response kind drawn from ``response_mixture(record)``: what the SFT model tends to do here."""
        mixture = self.response_mixture(record)
        return rng.choices(list(mixture), weights=list(mixture.values()))[0]

    def sft_examples(self, split: str) -> list[dict]:
        """Several (prompt, response) samples per prompt, response kinds drawn from the SFT mixture."""
        rng = self.rng("sft", split)
        examples = []
        for record in self.prompts(split):
            for _ in range(self.config.sft_samples_per_prompt):
                kind = self.sample_response_kind(record, rng)
                examples.append({"prompt": record.prompt, "response": self.sample_response(record, kind, rng),
                                 "prompt_kind": record.kind, "response_kind": kind,
                                 "category": record.category, "prompt_id": record.prompt_id})
        return examples

    # ------------------------------------------------------------ TriPlay attacker support
    @staticmethod
    def attacker_prompt(seed: PromptRecord) -> str:
        """The attacker's instruction: rewrite the seed's plain harmful request."""
        return T.ATTACKER_PROMPT.format(request=seed.meta.get("request", seed.prompt))

    def attack_sft_examples(self, split: str) -> list[dict]:
        """Seed -> wrapped rewrite with a uniformly random wrapper, so the initial attacker is diverse."""
        rng = self.rng("attack", split)
        examples = []
        for seed in self.prompts(split, ["harmful"]):
            for _ in range(self.config.attack_samples_per_seed):
                wrapper = rng.choice(list(T.JAILBREAK_WRAPPERS))
                attack = T.JAILBREAK_WRAPPERS[wrapper][0].format(request=seed.prompt)
                examples.append({"prompt": self.attacker_prompt(seed), "response": attack, "wrapper": wrapper,
                                 "category": seed.category, "prompt_id": seed.prompt_id})
        return examples

    @staticmethod
    def relevance(seed: PromptRecord, attack_text: str) -> float:
        """1.0 when the rewrite still contains the seed's harmful request core verbatim, else 0.0."""
        core = tuple(str(seed.meta.get("core", seed.prompt)).split())
        return 1.0 if contains_phrase(tokens_of(attack_text), core) else 0.0

    @staticmethod
    def detect_wrapper(attack_text: str) -> str:
        """Name of the jailbreak wrapper whose fixed text surrounds the request, or 'none'."""
        tokens = tokens_of(attack_text)
        by_fixed_length = sorted(T.JAILBREAK_WRAPPERS.items(), key=lambda item: -len(item[1][0].split()))
        for name, (template, _) in by_fixed_length:
            before, after = (part.split() for part in template.split("{request}"))
            if len(tokens) > len(before) + len(after) and tokens[:len(before)] == before \
                    and tokens[len(tokens) - len(after):] == after:
                return name
        return "none"

    def parse_attack(self, seed: PromptRecord, attack_text: str) -> PromptRecord:
        """An attacker's text as a jailbreak prompt carrying the seed's category, scoreable by ``judge``."""
        text = " ".join(str(attack_text).split())
        digest = hashlib.sha1(f"{seed.prompt_id}|{text}".encode("utf-8", "replace")).hexdigest()[:12]
        meta = {"seed_id": seed.prompt_id, "core": seed.meta.get("core", seed.prompt),
                "wrapper": self.detect_wrapper(text), "relevance": self.relevance(seed, text)}
        return PromptRecord(prompt_id=f"attack/{digest}", prompt=text, kind="jailbreak", category=seed.category,
                            answer=None, split=seed.split, meta=meta)

    # ------------------------------------------------------------ annotator-made data (see annotators.py)
    def preference_pairs(self, split: str) -> list[dict]:
        return annotators.preference_pairs(self, split)

    def feedback_text(self, record: PromptRecord, response: str, *, correct: bool = True) -> str:
        return annotators.feedback_text(record, response, correct=correct)

    @staticmethod
    def feedback_prompt(record: PromptRecord, response: str) -> str:
        return annotators.feedback_prompt(record, response)

    @staticmethod
    def revision_prompt(record: PromptRecord, response: str, feedback_text: str) -> str:
        return annotators.revision_prompt(record, response, feedback_text)

    def feedback_sft_examples(self, split: str) -> list[dict]:
        return annotators.feedback_sft_examples(self, split)

    def revision_sft_examples(self, split: str) -> list[dict]:
        return annotators.revision_sft_examples(self, split)

    @staticmethod
    def evaluator_prompt(prompt: str, response: str) -> str:
        return annotators.evaluator_prompt(prompt, response)

    def evaluator_sft_examples(self, split: str) -> list[dict]:
        return annotators.evaluator_sft_examples(self, split)

    # ------------------------------------------------------------ datasets with an on-disk cache
    def _builders(self, split: str) -> dict:
        return {
            "prompts": lambda: [record.to_row() for record in self.prompts(split)],
            "sft": lambda: self.sft_examples(split),
            "preference": lambda: self.preference_pairs(split),
            "feedback": lambda: self.feedback_sft_examples(split),
            "revision": lambda: self.revision_sft_examples(split),
            "attack": lambda: self.attack_sft_examples(split),
            "evaluator": lambda: self.evaluator_sft_examples(split),
        }

    def _check_product(self, split: str, what: str) -> None:
        if what not in DATA_PRODUCTS:
            raise ConfigError(f"unknown world dataset '{what}'; expected one of {', '.join(DATA_PRODUCTS)}")
        if split not in SPLITS:
            raise ConfigError(f"unknown world split '{split}'; expected one of {', '.join(SPLITS)}")

    def rows(self, split: str, what: str) -> list[dict]:
        """Plain rows of one data product (``DATA_PRODUCTS``: prompts, sft, preference, feedback, ...)."""
        self._check_product(split, what)
        return self._builders(split)[what]()

    def to_dataset(self, split: str, what: str = "prompts"):
        """A ``datasets.Dataset`` of ``rows(split, what)``, loaded from the cache when this config made it before.

        Cache layout: ``<cache_dir>/<config hash>/<what>-<split>``, written to a temporary folder and
        renamed into place so a concurrent or interrupted run never leaves half a dataset behind.
        Prompt rows keep ``meta`` as a JSON string (``PromptRecord.from_row`` reads it back).
        """
        import datasets

        self._check_product(split, what)
        target = Path(os.path.expanduser(self.config.cache_dir)) / self.config.cache_key() / f"{what}-{split}"
        if target.is_dir():
            try:
                return datasets.load_from_disk(str(target))
            except (OSError, ValueError, FileNotFoundError):
                shutil.rmtree(target, ignore_errors=True)  # damaged cache entry: rebuild it below
        rows = self.rows(split, what)
        dataset = datasets.Dataset.from_list(rows)
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{what}-{split}-", dir=target.parent))
        dataset.save_to_disk(str(staging / "data"))
        try:
            os.replace(staging / "data", target)
        except OSError:
            pass  # another process finished the same entry first; its content is identical
        shutil.rmtree(staging, ignore_errors=True)
        return datasets.load_from_disk(str(target)) if target.is_dir() else dataset


def _wrong_answers(record: PromptRecord) -> list[str]:
    """Plausible but wrong answers: near-miss numbers, other cities/words, other borderline keys."""
    family = record.meta.get("family")
    if record.kind == "borderline":
        return [key for key in T.BORDERLINE_KEYS if key != record.answer]
    if family in ("plus", "minus"):
        key = int(record.answer)
        return [str(key + d) for d in (-3, -2, -1, 1, 2, 3) if 0 <= key + d <= 20]
    prompt_tokens = set(record.prompt.split())
    return sorted(word for word in T.ANSWER_POOLS[family] if word != record.answer and word not in prompt_tokens)
