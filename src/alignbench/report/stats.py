"""Small, dependency-free statistics for the report: t-intervals (the curves' bands), the Pareto front
and the dominated hypervolume (the bootstrap intervals and tests are in ``report.bootstrap``).

Why not scipy: the report must run on a laptop with only matplotlib/jinja2 installed, and the
numbers it prints are hand-checked in the tests, so the maths is kept explicit and exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable, Sequence

# Two-sided 95% Student-t critical values t_{0.975, df} for df = 1..30 (standard table values).
_T975 = (
    12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157,
    2.228139, 2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905, 2.109816, 2.100922,
    2.093024, 2.085963, 2.079614, 2.073873, 2.068658, 2.063899, 2.059539, 2.055529, 2.051831,
    2.048407, 2.045230, 2.042272,
)
_Z975 = 1.959963984540054


def t_critical_95(df: int) -> float:
    """Two-sided 95% critical value of Student's t with ``df`` degrees of freedom.

    Table for df <= 30; beyond that the Cornish-Fisher expansion around the normal quantile,
    whose error at df = 31 is below 1e-5 -- far under the precision the report prints.
    """
    if df < 1:
        raise ValueError(f"t-interval needs at least one degree of freedom, got {df}")
    if df <= len(_T975):
        return _T975[df - 1]
    z = _Z975
    return (
        z
        + (z**3 + z) / (4 * df)
        + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)
        + (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / (384 * df**3)
    )


@dataclass(frozen=True)
class Estimate:
    """Mean over seeds with its 95% t-interval half-width (``None`` when n < 2: no spread known)."""

    mean: float
    half_width: float | None
    n: int

    @property
    def low(self) -> float | None:
        return None if self.half_width is None else self.mean - self.half_width

    @property
    def high(self) -> float | None:
        return None if self.half_width is None else self.mean + self.half_width

    def format(self, digits: int = 3) -> str:
        """``0.123 ± 0.045 (n=3)``; a single seed reads ``0.123 (n=1, no CI)`` so nobody mistakes
        a missing interval for a tight one."""
        if self.half_width is None:
            return f"{self.mean:.{digits}f} (n={self.n}, no CI)"
        return f"{self.mean:.{digits}f} ± {self.half_width:.{digits}f} (n={self.n})"

    def to_dict(self) -> dict:
        return {"mean": self.mean, "ci95": self.half_width, "low": self.low, "high": self.high, "n": self.n}


def finite_values(values: Iterable[object]) -> list[float]:
    """Keep the numeric, finite entries (summaries store NaN as null; bools are not metrics)."""
    kept = []
    for value in values:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            kept.append(float(value))
    return kept


def mean_ci(values: Iterable[object]) -> Estimate | None:
    """Mean and 95% t-interval over seeds: mean ± t_{0.975,n-1} * s / sqrt(n), s with ddof=1.

    Returns ``None`` when no finite value is left, so callers render an explicit gap.
    """
    data = finite_values(values)
    n = len(data)
    if n == 0:
        return None
    mean = sum(data) / n
    if n == 1:
        return Estimate(mean, None, 1)
    variance = sum((x - mean) ** 2 for x in data) / (n - 1)
    return Estimate(mean, t_critical_95(n - 1) * math.sqrt(variance / n), n)


def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """``a`` dominates ``b`` for (helpfulness up, unsafe rate down): no worse on both, better on one."""
    no_worse = a[0] >= b[0] and a[1] <= b[1]
    return no_worse and (a[0] > b[0] or a[1] < b[1])


def pareto_front(points: dict[str, tuple[float, float]]) -> list[str]:
    """Names of the non-dominated points, ordered by helpfulness (x) ascending.

    ``points`` maps a label (an algo) to ``(helpfulness, unsafe_rate)``. Exact duplicates do not
    dominate each other, so two algos with identical means are both on the front.
    """
    front = [
        name
        for name, point in points.items()
        if not any(dominates(other, point) for other_name, other in points.items() if other_name != name)
    ]
    return sorted(front, key=lambda name: (points[name][0], points[name][1], name))


def pareto_step(points: Sequence[tuple[float, float]]) -> tuple[list[float], list[float]]:
    """Staircase through front points (sorted by x) bounding the region they dominate.

    For a front sorted by helpfulness, the lowest unsafe rate reachable with helpfulness >= x on
    (x_{i-1}, x_i] is y_i; so from each point the line rises vertically at x_i to y_{i+1} and runs
    horizontally to x_{i+1}.
    """
    ordered = sorted(points)
    xs: list[float] = []
    ys: list[float] = []
    for index, (x, y) in enumerate(ordered):
        if index:
            xs.append(xs[-1])
            ys.append(y)
        xs.append(x)
        ys.append(y)
    return xs, ys


def hypervolume(points: Sequence[tuple[float, float]], reference: tuple[float, float] = (0.0, 0.0)) -> float:
    """Area of the region dominated by ``points`` when both coordinates are maximised, bounded below by
    ``reference``: the union of the rectangles [r_x, x_i] x [r_y, y_i].

    Sweeping the points by decreasing x, each point adds the strip its y rises above the best y seen so
    far: ``HV = sum_i (x_(i) - r_x) * max(0, y_(i) - max_{j < i} y_(j))``. Dominated points add nothing.
    """
    rx, ry = reference
    area, best_y = 0.0, ry
    for x, y in sorted(((float(x), float(y)) for x, y in points if x > rx and y > ry), reverse=True):
        if y > best_y:
            area += (x - rx) * (y - best_y)
            best_y = y
    return area
