"""Asserting a paper's claim over several seeds, with a margin from the measured seed-to-seed noise.

A claim test that compares one seed's number with a fixed tolerance passes or fails with the machine's
floating-point path (thread count, CPU kind, test order). These helpers state the claim over seeds:

    effect = seed_effect(with_penalty, without_penalty)          # per-seed values, e.g. from summaries
    assert_effect(effect, "diversity with P_div exceeds diversity without it")

``seed_effect`` is the difference of seed means with its standard error from the seeds' own spread
(Welch: ``se = sqrt(s_a^2 / n_a + s_b^2 / n_b)``, ``s`` with ddof = 1, ``s_b = 0`` against a constant),
and ``assert_effect`` requires ``mean_a - mean_b > t_{0.975, df} x se`` (Welch-Satterthwaite df), i.e. the
one-sided 97.5% Welch t-test: the claim has to clear what its own seeds say the noise is, however noisy
that is on a given machine. ``noise_floor`` keeps a lucky set of near-identical seeds from shrinking the
margin below a spread measured elsewhere (e.g. on 1 vs 2 threads: ``ALIGNBENCH_TEST_THREADS``, see
conftest). A claim that does not clear its noise is a measured result for the README, not a test.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from alignbench.report.stats import t_critical_95


@dataclass(frozen=True)
class SeedEffect:
    """``mean_a - mean_b`` over seeds, its standard error and the Welch degrees of freedom."""

    difference: float
    se: float
    df: float
    values_a: tuple[float, ...]
    values_b: tuple[float, ...]

    @property
    def margin(self) -> float:
        """What the difference must exceed: t_{0.975, df} x se."""
        return t_critical_95(max(1, math.floor(self.df))) * self.se

    def describe(self) -> str:
        return (f"difference {self.difference:+.4f} vs margin {self.margin:.4f} (se {self.se:.4f}, df {self.df:.1f}; "
                f"seeds a={list(self.values_a)}, b={list(self.values_b)})")


def _spread(values: Sequence[float]) -> tuple[float, float, int]:
    n = len(values)
    mean = sum(values) / n
    variance = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return mean, variance, n


def seed_effect(values_a: Sequence[float], values_b: Sequence[float] | float, noise_floor: float = 0.0) -> SeedEffect:
    """Difference of seed means ``a - b`` (``b`` may be a constant) with Welch's standard error; each
    side's seed standard deviation is at least ``noise_floor``."""
    a = tuple(float(v) for v in values_a)
    b = (float(values_b),) if isinstance(values_b, (int, float)) else tuple(float(v) for v in values_b)
    if len(a) < 2:
        raise ValueError(f"a seed effect needs at least 2 seeds on the tested side, got {len(a)}")
    mean_a, var_a, n_a = _spread(a)
    mean_b, var_b, n_b = _spread(b)
    var_a = max(var_a, noise_floor**2)
    var_b = max(var_b, noise_floor**2) if n_b > 1 else 0.0  # a constant has no noise of its own
    terms = (var_a / n_a, var_b / n_b if n_b > 1 else 0.0)
    se = math.sqrt(sum(terms))
    denominator = terms[0] ** 2 / (n_a - 1) + (terms[1] ** 2 / (n_b - 1) if n_b > 1 else 0.0)
    df = sum(terms) ** 2 / denominator if denominator > 0 else float(n_a - 1)
    return SeedEffect(mean_a - mean_b, se, df, a, b)


def assert_effect(effect: SeedEffect, claim: str) -> None:
    """Fail, with every seed's value in the message, unless ``effect.difference > effect.margin``."""
    assert effect.difference > effect.margin, f"{claim}: not shown over seeds: {effect.describe()}"
