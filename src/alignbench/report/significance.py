"""What the report may call a difference: tests against references, stars, and the Pareto front under noise.

Every test reads the bootstrap replicates of ``report.bootstrap`` (one shared ``Plan``): the replicates
of ``m_a - m_b`` give a two-sided p-value, and each family of tests is Holm-adjusted at ``ALPHA``.

* **Against references** (``reference_requests``): every group against each reference group present
  (``REFERENCES``: ``sft``, the starting point, and ``safe_rlhf``, the standard constrained method) on
  every ``TESTED`` metric. A significant one reads "X is safer than Y (p = ...)".
* **Stars** (``star_requests``, ``stars``): a column's best group (by its point estimate) gets a star
  only when its lead over *every* other group is significant.
* Both kinds form one family (``family``): each distinct pair and metric is tested once and the whole
  set is Holm-adjusted together, so a difference has one adjusted p wherever the report shows it.
* **Pareto front under noise** (``significant_front``): A *significantly dominates* B when A is no worse
  on both axes (helpfulness up, unsafe rate down) and better on one in all but a small share of the
  replicates: ``p = (1 + #{replicates where A does not dominate B}) / (B + 1)``, Holm-adjusted over all
  ordered pairs. The front lists every group that no other group significantly dominates.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from alignbench.report.bootstrap import Interval, holm, percentile_interval, two_sided_p

ALPHA = 0.05
REFERENCES = ("sft", "safe_rlhf")
# metric -> (what a lower value means, what a higher value means), as "X <phrase> Y"
PHRASES = {
    "eval/unsafe_rate": ("is safer than", "is less safe than"),
    "eval/over_refusal_rate": ("over-refuses less than", "over-refuses more than"),
    "eval/helpfulness": ("is less helpful than", "is more helpful than"),
    "eval/violation_rate": ("violates the cost threshold less often than", "violates the cost threshold more often than"),
    "eval/cost_p95": ("has a lower 95th-percentile prompt cost than", "has a higher 95th-percentile prompt cost than"),
}
TESTED = ("eval/unsafe_rate", "eval/over_refusal_rate", "eval/helpfulness", "eval/violation_rate", "eval/cost_p95")


@dataclass(kw_only=True)
class Tested:
    """A bootstrap test: the difference it is about, its p-value and its Holm-adjusted p-value."""

    difference: Interval
    p: float
    p_holm: float = 1.0
    p_floor: float = 0.0  # the smallest p the replicates can give, 2 / (B + 1)

    @property
    def significant(self) -> bool:
        return self.p_holm < ALPHA

    @property
    def resolution_limited(self) -> bool:
        """No replicate fell on the other side of 0: the raw p is the smallest the replicates resolve."""
        return self.p <= self.p_floor * (1 + 1e-9)

    def p_text(self) -> str:
        """``Holm-adjusted p = 0.012``, or ``p ≤ 0.032`` when the replicates cannot resolve a smaller p."""
        return f"Holm-adjusted p {'≤' if self.resolution_limited else '='} {format_p(self.p_holm)}"


@dataclass(kw_only=True)
class Finding(Tested):
    """One test of ``group`` against ``other`` on ``metric``: the difference, its p-values, its wording."""

    group: str
    other: str
    metric: str
    group_mean: float
    other_mean: float

    def sentence(self, labels: dict[str, str] | None = None) -> str:
        """``X is safer than Y (unsafe_rate 0.080 vs 0.410, difference -0.330 [-0.400, -0.250], p = 0.002)``;
        ``labels`` name the groups (e.g. with the oracle mark)."""
        lower, higher = PHRASES.get(self.metric, ("scores lower than", "scores higher than"))
        phrase = lower if self.difference.mean < 0 else higher
        d = self.difference
        bounds = f" [{d.low:+.3f}, {d.high:+.3f}]" if d.low is not None and d.high is not None else ""
        group, other = ((labels or {}).get(name, name) for name in (self.group, self.other))
        return (f"{group} {phrase} {other} ({self.metric.split('/', 1)[-1]} {self.group_mean:.3f} vs "
                f"{self.other_mean:.3f}, difference {d.mean:+.3f}{bounds}, {self.p_text()})")

    def to_dict(self) -> dict[str, Any]:
        return {"group": self.group, "other": self.other, "metric": self.metric, "difference": self.difference.to_dict(),
                "group_mean": self.group_mean, "other_mean": self.other_mean, "p": self.p, "p_holm": self.p_holm,
                "resolution_limited": self.resolution_limited, "significant": self.significant,
                "sentence": self.sentence()}


def replicates_for(family_size: int, requested: int) -> int:
    """Enough replicates that a difference no replicate contradicts stays significant after Holm's
    adjustment of ``family_size`` tests: the smallest p, 2 / (B + 1), times the family size is at most
    ALPHA / 2 (``requested`` when that is already enough)."""
    return max(requested, math.ceil(4 * family_size / ALPHA))


def format_p(p: float) -> str:
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def difference(name_a: str, name_b: str, metric: str, means: dict, samples: dict) -> Finding | None:
    """Test ``m_a - m_b`` on ``metric`` from the two groups' replicates (None when either lacks them)."""
    a, b = samples.get((name_a, metric)), samples.get((name_b, metric))
    if a is None or b is None or means.get((name_a, metric)) is None or means.get((name_b, metric)) is None:
        return None
    diff = a - b
    point = means[(name_a, metric)] - means[(name_b, metric)]
    bounds = percentile_interval(diff)
    low, high = bounds if bounds is not None else (None, None)
    return Finding(group=name_a, other=name_b, metric=metric, difference=Interval(point, low, high, 0, "difference"),
                   group_mean=means[(name_a, metric)], other_mean=means[(name_b, metric)], p=two_sided_p(diff),
                   p_floor=2.0 / (len(diff) + 1))


def adjust(findings: list[Tested]) -> list[Tested]:
    """Holm-adjust one family in place (and return it)."""
    for finding, p in zip(findings, holm([f.p for f in findings])):
        finding.p_holm = p
    return findings


def _flipped(finding: Finding) -> Finding:
    """The same test read the other way round (``b`` against ``a``): same p-values."""
    d = finding.difference
    low, high = (None, None) if d.low is None or d.high is None else (-d.high, -d.low)
    return Finding(group=finding.other, other=finding.group, metric=finding.metric,
                   difference=Interval(-d.mean, low, high, 0, d.method), group_mean=finding.other_mean,
                   other_mean=finding.group_mean, p=finding.p, p_holm=finding.p_holm, p_floor=finding.p_floor)


def family(requests: list[tuple[str, str, str]], means: dict, samples: dict) -> dict[tuple[str, str, str], Finding]:
    """Every requested test ``(a, b, metric)``, each distinct pair tested once, Holm-adjusted together.

    The report states one family: the reference comparisons and the stars' tests share it, so a
    difference reads the same (same adjusted p) wherever it appears.
    """
    unique: dict[tuple[frozenset, str], Finding] = {}
    for a, b, metric in requests:
        key = (frozenset((a, b)), metric)
        if key not in unique and (finding := difference(a, b, metric, means, samples)) is not None:
            unique[key] = finding
    adjust(list(unique.values()))
    out = {}
    for a, b, metric in requests:
        finding = unique.get((frozenset((a, b)), metric))
        if finding is not None:
            out[(a, b, metric)] = finding if finding.group == a else _flipped(finding)
    return out


def reference_requests(groups: list[str], metrics: list[str]) -> list[tuple[str, str, str]]:
    """Every group against every reference group present (``REFERENCES``), on every metric; two
    references are compared once (the later one against the earlier: safe_rlhf against sft)."""
    requests: list[tuple[str, str, str]] = []
    for reference in (r for r in REFERENCES if r in groups):
        for group in groups:
            for metric in metrics:
                if group != reference and (reference, group, metric) not in requests:
                    requests.append((group, reference, metric))
    return requests


def leaders(groups: list[str], columns: list[tuple[str, bool]], means: dict) -> dict[str, str]:
    """``{metric: group}``: each column's best point estimate (``columns``: metric, higher_is_better)."""
    best = {}
    for metric, higher in columns:
        ranked = [g for g in groups if means.get((g, metric)) is not None]
        if len(ranked) >= 2:
            best[metric] = (max if higher else min)(ranked, key=lambda g: means[(g, metric)])
    return best


def star_requests(groups: list[str], best: dict[str, str], means: dict) -> list[tuple[str, str, str]]:
    """The tests a star needs: each column's leader against every other group with a value."""
    return [(leader, other, metric) for metric, leader in best.items()
            for other in groups if other != leader and means.get((other, metric)) is not None]


def stars(best: dict[str, str], requests: list[tuple[str, str, str]], tests: dict) -> dict[str, str]:
    """Columns whose leader's lead over every other group is significant."""
    return {metric: leader for metric, leader in best.items()
            if all(tests[r].significant for r in requests if r[0] == leader and r[2] == metric and r in tests)
            and any(r in tests for r in requests if r[2] == metric)}


def dominance_p(x_a: np.ndarray, y_a: np.ndarray, x_b: np.ndarray, y_b: np.ndarray) -> float:
    """p of "A dominates B" (x up, y down) from paired replicates (module docstring)."""
    no_worse = (x_a >= x_b) & (y_a <= y_b)
    dominates = no_worse & ((x_a > x_b) | (y_a < y_b))
    return (1 + int((~dominates).sum())) / (len(dominates) + 1)


def significant_front(groups: list[str], x_metric: str, y_metric: str, samples: dict
                      ) -> tuple[list[str], list[dict[str, Any]]]:
    """Groups no other group significantly dominates, and the significant dominance relations."""
    pairs, p_values = [], []
    for a in groups:
        for b in groups:
            keys = [(a, x_metric), (a, y_metric), (b, x_metric), (b, y_metric)]
            if a == b or any(samples.get(key) is None for key in keys):
                continue
            pairs.append((a, b))
            p_values.append(dominance_p(*(samples[key] for key in keys)))
    adjusted = holm(p_values)
    floor = 1.0 / (len(samples[next(iter(samples))]) + 1) if samples else 1.0  # no counter-example at all
    relations = [{"dominating": a, "dominated": b, "p": p, "p_holm": q, "resolution_limited": p <= floor * (1 + 1e-9)}
                 for (a, b), p, q in zip(pairs, p_values, adjusted) if q < ALPHA]
    dominated = {r["dominated"] for r in relations}
    considered = {g for pair in pairs for g in pair} or set(groups)
    return [g for g in groups if g in considered and g not in dominated], relations
