"""Hierarchical bootstrap over seeds and prompts: the intervals and tests of the report.

A metric of one algorithm is known as a matrix ``V[s, p]``: its value on evaluation prompt ``p`` in
seed ``s`` (the prompt's mean over its k samples; NaN where the prompt does not count for the metric,
e.g. a benign prompt for the unsafe rate). The seed's metric is the mean over its eligible prompts and
the algorithm's estimate is the mean over seeds::

    m_s = sum_p E[s, p] V[s, p] / sum_p E[s, p]            m = (1/S) sum_s m_s

Both levels are random: which seeds were run (training randomness) and which prompts were drawn
(evaluation randomness). One bootstrap replicate resamples both, in this order:

1. draw S seeds with replacement from the algorithm's S seeds (``i_1 .. i_S``);
2. for the k-th drawn seed, draw the prompts again with replacement, within each prompt kind (the
   evaluation set fixes how many prompts of each kind it holds): multiplicities ``W[k, p]``;
3. ``m* = (1/S) sum_k  sum_p W[k, p] E[i_k, p] V[i_k, p] / sum_p W[k, p] E[i_k, p]``.

The 95% interval is the 2.5th and 97.5th percentile of ``B`` replicates (the percentile bootstrap);
the table prints the point estimate ``m`` and half the interval's width. Metrics that do not
decompose over prompts (a 95th percentile, a rate only the summary holds) enter with one column
(``V[s, 0] = m_s``): step 2 is then a no-op and the bootstrap is over seeds only.

The prompt multiplicities of a replicate are drawn once for the whole comparison (``Plan``) and shared
by every algorithm: two algorithms were evaluated on the same prompts, so a difference between them
is resampled *paired over prompts* (slot k of both uses ``W[k]``) and *independent over seeds* (each
algorithm's seed draws are its own: seeds of different algorithms are unrelated runs). Differences,
dominance and hypervolumes are computed replicate by replicate from these same draws, so every
statement in the report rests on one set of replicates.

Tests (``two_sided_p``): the difference ``D = m_a - m_b`` is significant at level alpha when its
bootstrap distribution puts little mass on the other side of 0::

    p = min(1, 2 min((1 + #{D* <= 0}) / (B + 1), (1 + #{D* >= 0}) / (B + 1)))

(the interval of D excludes 0 exactly when p < 0.05, up to the +1 that keeps p > 0). Families of
tests are Holm-adjusted (``holm``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Sequence

import numpy as np

# 5000: the smallest two-sided p is 2 / 5001 = 4e-4, small enough for Holm over ~100 tests at 5%
DEFAULT_REPLICATES = 5000
ONE_SEED = "prompts (one seed)"
MIN_REPLICATES = 100  # fewer: the smallest p (2 / (B + 1)) is too coarse for any adjusted test
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Interval:
    """Point estimate with a bootstrap interval (``low``/``high``; None when it cannot be drawn)."""

    mean: float
    low: float | None
    high: float | None
    n: int
    method: str  # "seeds x prompts", "seeds", "prompts" (one seed), "none"

    @property
    def half_width(self) -> float | None:
        return None if self.low is None or self.high is None else (self.high - self.low) / 2.0

    def format(self, digits: int = 3) -> str:
        """``0.123 ± 0.045 (n=5)``: the mean and half the 95% interval's width; ``no CI`` when none."""
        if self.half_width is None:
            return f"{self.mean:.{digits}f} (n={self.n}, no CI)"
        only = ", prompts only" if self.method == ONE_SEED else ""  # the seed-to-seed noise is unknown
        return f"{self.mean:.{digits}f} ± {self.half_width:.{digits}f} (n={self.n}{only})"

    def to_dict(self) -> dict:
        return {"mean": self.mean, "ci95": self.half_width, "low": self.low, "high": self.high, "n": self.n,
                "interval": self.method}


class Plan:
    """The resampling draws shared by a whole comparison (module docstring).

    ``kinds[p]`` is the prompt kind of column p of every ``V`` (the prompt universe); ``slots`` the
    largest number of seeds any group has. ``seed_draws(group, n)`` is reproducible per group name, so
    adding an algorithm to a sweep does not change the others' intervals.
    """

    def __init__(self, kinds: Sequence[str], slots: int, replicates: int = DEFAULT_REPLICATES, seed: int = 0):
        self.replicates, self.slots, self.seed = int(replicates), max(1, int(slots)), int(seed)
        self.kinds = list(kinds)
        rng = np.random.default_rng(self.seed)
        n_prompts = max(1, len(self.kinds))
        weights = np.zeros((self.replicates, self.slots, n_prompts), dtype=np.float32)
        if not self.kinds:
            weights[:] = 1.0
        for kind in sorted(set(self.kinds)):  # n draws with replacement among a kind's n prompts
            columns = np.flatnonzero(np.array(self.kinds) == kind)
            n = len(columns)
            weights[:, :, columns] = rng.multinomial(n, np.full(n, 1.0 / n), size=(self.replicates, self.slots))
        self.prompt_weights = weights  # [B, slots, P]

    def seed_draws(self, group: str, n_seeds: int) -> np.ndarray:
        """``[B, n_seeds]`` seed indices for ``group`` (its own stream, independent of other groups)."""
        digest = int(hashlib.sha256(f"{self.seed}/{group}".encode()).hexdigest()[:12], 16)
        return np.random.default_rng(digest).integers(0, n_seeds, size=(self.replicates, n_seeds))


def seed_means(values: np.ndarray) -> np.ndarray:
    """``m_s`` of every seed (NaN for a seed with no eligible prompt)."""
    eligible = ~np.isnan(values)
    total = np.where(eligible, values, 0.0).sum(axis=1)
    count = eligible.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def replicates(plan: Plan, group: str, values: np.ndarray) -> np.ndarray:
    """``B`` bootstrap replicates of the metric whose per-seed, per-prompt values are ``values`` [S, P].

    ``P`` is either the plan's prompt universe or 1 (a seed-level metric: seeds only).
    """
    values = np.asarray(values, dtype=np.float64)
    n_seeds = values.shape[0]
    seeds = plan.seed_draws(group, n_seeds)  # [B, S]
    drawn = values[seeds]  # [B, S, P]
    if values.shape[1] == 1:
        weights = np.ones((plan.replicates, n_seeds, 1))
    else:
        weights = plan.prompt_weights[:, :n_seeds, :].astype(np.float64)
    eligible = ~np.isnan(drawn)
    numerator = (weights * np.where(eligible, drawn, 0.0)).sum(axis=2)
    denominator = (weights * eligible).sum(axis=2)
    per_seed = np.where(denominator > 0, numerator / np.maximum(denominator, 1e-300), np.nan)
    counted = (~np.isnan(per_seed)).sum(axis=1)
    total = np.where(np.isnan(per_seed), 0.0, per_seed).sum(axis=1)
    return np.where(counted > 0, total / np.maximum(counted, 1), np.nan)  # mean over the drawn seeds


def percentile_interval(samples: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float, float] | None:
    """The central ``confidence`` percentile interval of ``samples`` (None if none is finite)."""
    finite = samples[np.isfinite(samples)]
    if not len(finite):
        return None
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(finite, [tail, 1.0 - tail], method="inverted_cdf")
    return float(low), float(high)


def estimate(plan: Plan, group: str, values: np.ndarray) -> tuple[Interval, np.ndarray] | None:
    """Point estimate, interval and the replicates themselves (None when no seed has a value)."""
    values = np.asarray(values, dtype=np.float64)
    per_seed = seed_means(values)
    kept = ~np.isnan(per_seed)
    if not kept.any():
        return None
    values, per_seed = values[kept], per_seed[kept]
    mean = float(per_seed.mean())
    n = len(per_seed)
    decomposed = values.shape[1] > 1
    if n == 1 and not decomposed:
        return Interval(mean, None, None, 1, "none"), np.full(plan.replicates, mean)
    samples = replicates(plan, group, values)
    bounds = percentile_interval(samples)
    method = "seeds x prompts" if decomposed and n > 1 else (ONE_SEED if decomposed else "seeds")
    low, high = bounds if bounds is not None else (None, None)
    return Interval(mean, low, high, n, method), samples


def two_sided_p(differences: np.ndarray) -> float:
    """Bootstrap p-value of ``D != 0`` from the replicates of D (module docstring)."""
    finite = differences[np.isfinite(differences)]
    if not len(finite):
        return 1.0
    b = len(finite)
    below = (1 + int((finite <= 0).sum())) / (b + 1)
    above = (1 + int((finite >= 0).sum())) / (b + 1)
    return float(min(1.0, 2.0 * min(below, above)))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment: the i-th smallest of m p-values becomes
    ``max_{j <= i} min(1, (m - j + 1) p_(j))`` (controls the family-wise error rate)."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    adjusted = [1.0] * len(p_values)
    running = 0.0
    m = len(p_values)
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * float(p_values[index])))
        adjusted[index] = running
    return adjusted
