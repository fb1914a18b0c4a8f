"""Trade-off frontiers (``experiment=frontier``): one curve per algorithm and its dominated hypervolume.

A frontier sweep runs each algorithm at several values of its own trade-off knob (the job's
``summary.json["tradeoff"]``: knob, value, point index) over several seeds. Every (algorithm, knob
value) is a group of the comparison with its own estimates and bootstrap replicates; this module
joins an algorithm's groups into its frontier:

* points in the plane helpfulness x (1 - unsafe rate), both maximised, and in (1 - over-refusal rate)
  x (1 - unsafe rate) for the second panel;
* the dominated hypervolume ``HV`` of the points (``stats.hypervolume``, reference point (0, 0)): the
  area of the plane the algorithm's operating points reach or beat. The point estimate uses the knob
  values' means; its interval is the percentile interval of HV computed replicate by replicate from
  the same bootstrap draws (seeds and prompts resampled within every knob value), so it carries the
  noise of every point at once;
* tests of each algorithm's HV against the reference algorithm's (``safe_rlhf`` when it was swept,
  else none), Holm-adjusted: "X's frontier dominates more of the plane than Y's (p = ...)".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from alignbench.report.bootstrap import Interval, percentile_interval, two_sided_p
from alignbench.report.significance import Tested, adjust
from alignbench.report.stats import hypervolume

HELPFULNESS, UNSAFE, OVER_REFUSAL = "eval/helpfulness", "eval/unsafe_rate", "eval/over_refusal_rate"
PLANES = {  # name -> (x metric, whether x is 1 - metric); y is always 1 - unsafe rate
    "helpfulness": (HELPFULNESS, False),
    "refusal": (OVER_REFUSAL, True),
}
REFERENCE = "safe_rlhf"


@dataclass
class FrontierPoint:
    group: str
    point: Any
    value: Any
    helpfulness: Interval | None
    unsafe: Interval | None
    over_refusal: Interval | None
    n: int


@dataclass
class Frontier:
    """One algorithm's swept points, ordered by point index, and its hypervolumes (per plane)."""

    algo: str
    knob: str
    points: list[FrontierPoint]
    hypervolume: dict[str, Interval] = field(default_factory=dict)
    samples: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def to_dict(self) -> dict[str, Any]:
        def est(value: Interval | None):
            return value.to_dict() if value is not None else None

        return {"algo": self.algo, "knob": self.knob,
                "points": [{"group": p.group, "point": p.point, "value": p.value, "n": p.n,
                            "helpfulness": est(p.helpfulness), "unsafe_rate": est(p.unsafe),
                            "over_refusal_rate": est(p.over_refusal)} for p in self.points],
                "hypervolume": {plane: est(value) for plane, value in self.hypervolume.items()}}


@dataclass(kw_only=True)
class HypervolumeTest(Tested):
    """An algorithm's hypervolume against the reference's in one plane."""

    algo: str
    reference: str
    plane: str

    def sentence(self) -> str:
        more = "more" if self.difference.mean > 0 else "less"
        plane = "helpfulness x (1 - unsafe)" if self.plane == "helpfulness" else "(1 - over-refusal) x (1 - unsafe)"
        return (f"{self.algo}'s frontier dominates {more} of the {plane} plane than {self.reference}'s "
                f"(hypervolume difference {self.difference.mean:+.3f}, {self.p_text()})")

    def to_dict(self) -> dict[str, Any]:
        return {"algo": self.algo, "reference": self.reference, "plane": self.plane,
                "difference": self.difference.to_dict(), "p": self.p, "p_holm": self.p_holm,
                "significant": self.significant, "sentence": self.sentence()}


def _coordinate(means: dict, samples: dict, group: str, metric: str, complement: bool):
    """(point estimate, replicates) of a plane coordinate: the metric, or 1 - metric."""
    mean, reps = means.get((group, metric)), samples.get((group, metric))
    if mean is None or reps is None:
        return None
    return (1.0 - mean, 1.0 - reps) if complement else (mean, reps)


def _hypervolume(points: list[tuple[float, np.ndarray, float, np.ndarray]]) -> tuple[Interval, np.ndarray]:
    """HV of the means and of every replicate (points: x mean, x replicates, y mean, y replicates)."""
    mean = hypervolume([(x, y) for x, _, y, _ in points])
    replicates = len(points[0][1])
    values = np.array([hypervolume([(xs[b], ys[b]) for _, xs, _, ys in points
                                    if np.isfinite(xs[b]) and np.isfinite(ys[b])]) for b in range(replicates)])
    bounds = percentile_interval(values)
    low, high = bounds if bounds is not None else (None, None)
    return Interval(mean, low, high, len(points), "seeds x prompts per point"), values


def build_frontiers(groups: list[Any], means: dict, samples: dict, estimates: dict) -> list[Frontier]:
    """Frontiers of every algorithm with trade-off groups (``groups``: objects with name, algo, tradeoff, n)."""
    by_algo: dict[str, list[Any]] = {}
    for group in groups:
        if group.tradeoff:
            by_algo.setdefault(group.algo, []).append(group)
    frontiers = []
    for algo, members in by_algo.items():
        members = sorted(members, key=lambda g: (g.tradeoff.get("point") is None, g.tradeoff.get("point") or 0))
        frontier = Frontier(algo, str(members[0].tradeoff.get("knob")), [
            FrontierPoint(g.name, g.tradeoff.get("point"), g.tradeoff.get("value"), estimates.get((g.name, HELPFULNESS)),
                          estimates.get((g.name, UNSAFE)), estimates.get((g.name, OVER_REFUSAL)), g.n)
            for g in members])
        for plane, (x_metric, complement) in PLANES.items():
            coords = []
            for g in members:
                x = _coordinate(means, samples, g.name, x_metric, complement)
                y = _coordinate(means, samples, g.name, UNSAFE, True)
                if x is not None and y is not None:
                    coords.append((x[0], x[1], y[0], y[1]))
            if coords:
                frontier.hypervolume[plane], frontier.samples[plane] = _hypervolume(coords)
        frontiers.append(frontier)
    return frontiers


def hypervolume_tests(frontiers: list[Frontier]) -> list[HypervolumeTest]:
    """Each algorithm's HV against the reference's, per plane; one Holm family."""
    reference = next((f for f in frontiers if f.algo == REFERENCE), None)
    tests = []
    if reference is not None:
        for frontier in frontiers:
            if frontier is reference:
                continue
            for plane, values in frontier.samples.items():
                if plane not in reference.samples:
                    continue
                diff = values - reference.samples[plane]
                bounds = percentile_interval(diff)
                low, high = bounds if bounds is not None else (None, None)
                point = frontier.hypervolume[plane].mean - reference.hypervolume[plane].mean
                tests.append(HypervolumeTest(algo=frontier.algo, reference=reference.algo, plane=plane,
                                             difference=Interval(point, low, high, 0, "difference"),
                                             p=two_sided_p(diff), p_floor=2.0 / (len(diff) + 1)))
    return adjust(tests)
