"""The report's statistics against hand-computed cases: the hierarchical bootstrap, its tests, Holm,
the dominance test and the hypervolume (alignbench.report.bootstrap / significance / stats)."""

from __future__ import annotations

import numpy as np
import pytest

from alignbench.report.bootstrap import Plan, estimate, holm, percentile_interval, two_sided_p
from alignbench.report.significance import dominance_p, family, reference_requests
from alignbench.report.stats import hypervolume


def test_hierarchical_bootstrap_matches_the_hand_computed_distribution():
    """Seed A scores prompts (0, 1), seed B (1, 1); one prompt kind.

    A replicate draws 2 seeds, then 2 prompts within each. A drawn seed's mean is A's 0, 1/2, 1 with
    probability 1/4, 1/2, 1/4 or B's 1, so one draw is 0 w.p. 1/8, 1/2 w.p. 1/4, 1 w.p. 5/8, and the replicate
    (mean of two independent draws) is 0, 1/4, 1/2, 3/4, 1 w.p. 1/64, 4/64, 14/64, 20/64, 25/64. CDF: 0.016,
    0.078, 0.297, 0.609, 1, so the 2.5% and 97.5% quantiles are 1/4 and 1; the estimate is (1/2 + 1) / 2.
    """
    plan = Plan(["harmful", "harmful"], slots=2, replicates=40000, seed=3)
    interval, samples = estimate(plan, "algo", np.array([[0.0, 1.0], [1.0, 1.0]]))
    values, counts = np.unique(samples, return_counts=True)
    assert values.tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert counts / len(samples) == pytest.approx(np.array([1, 4, 14, 20, 25]) / 64, abs=0.006)
    assert (interval.mean, interval.low, interval.high, interval.n) == (0.75, 0.25, 1.0, 2)
    assert interval.format() == "0.750 ± 0.375 (n=2)" and interval.method == "seeds x prompts"


def test_prompts_are_resampled_within_their_kind_and_ineligible_prompts_ignored():
    plan = Plan(["harmful"] * 3 + ["benign"] * 2, slots=4, replicates=500, seed=0)
    weights = plan.prompt_weights
    assert (weights[:, :, :3].sum(axis=2) == 3).all() and (weights[:, :, 3:].sum(axis=2) == 2).all()
    # a metric over harmful prompts only (NaN elsewhere): one seed, values 0, 0, 1 -> replicates in {0, 1/3, 2/3, 1}
    interval, samples = estimate(plan, "x", np.array([[0.0, 0.0, 1.0, np.nan, np.nan]]))
    assert set(np.round(samples * 3).tolist()) <= {0.0, 1.0, 2.0, 3.0} and interval.mean == pytest.approx(1 / 3)
    assert interval.method == "prompts (one seed)" and interval.format().endswith("(n=1, prompts only)")


def test_seed_level_metric_bootstraps_seeds_only():
    """Seeds 0 and 1, no per-prompt values: replicates are 0, 1/2, 1 w.p. 1/4, 1/2, 1/4 -> interval [0, 1]."""
    plan = Plan(["k"] * 7, slots=2, replicates=20000, seed=1)
    interval, samples = estimate(plan, "x", np.array([[0.0], [1.0]]))
    values, counts = np.unique(samples, return_counts=True)
    assert values.tolist() == [0.0, 0.5, 1.0] and counts / len(samples) == pytest.approx([0.25, 0.5, 0.25], abs=0.01)
    assert (interval.low, interval.high, interval.method) == (0.0, 1.0, "seeds")
    single, _ = estimate(plan, "y", np.array([[0.4]]))
    assert single.half_width is None and single.format() == "0.400 (n=1, no CI)"


def test_bootstrap_p_value_by_hand():
    # D* = -1, 1, 2, 3: #{<= 0} = 1, #{>= 0} = 3 -> p = 2 min((1 + 1) / 5, (1 + 3) / 5) = 0.8
    assert two_sided_p(np.array([-1.0, 1.0, 2.0, 3.0])) == pytest.approx(0.8)
    # every replicate above 0: the smallest p B replicates allow, 2 / (B + 1)
    assert two_sided_p(np.full(999, 0.3)) == pytest.approx(2 / 1000)
    assert percentile_interval(np.arange(1.0, 101.0)) == (3.0, 98.0)  # inverted CDF: 2.5% -> 3rd of 100


def test_holm_by_hand():
    # m = 4, sorted 0.01 0.03 0.04 0.5: 4 x 0.01 = 0.04; 3 x 0.03 = 0.09; max(0.09, 2 x 0.04) = 0.09; 0.5
    assert holm([0.01, 0.04, 0.03, 0.5]) == pytest.approx([0.04, 0.09, 0.09, 0.5])
    assert holm([0.5, 0.6]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([]) == []


def test_tests_share_one_family_and_each_pair_is_tested_once():
    rng = np.random.default_rng(0)
    samples = {("sft", "m"): rng.normal(0.4, 0.02, 999), ("safe_rlhf", "m"): rng.normal(0.1, 0.02, 999),
               ("ppo", "m"): rng.normal(0.41, 0.02, 999)}
    means = {key: float(values.mean()) for key, values in samples.items()}
    requests = reference_requests(["sft", "ppo", "safe_rlhf"], ["m"])
    assert requests == [("ppo", "sft", "m"), ("safe_rlhf", "sft", "m"), ("ppo", "safe_rlhf", "m")]
    tests = family(requests + [("sft", "safe_rlhf", "m")], means, samples)  # a star test, the reverse of one above
    assert tests[("sft", "safe_rlhf", "m")].p_holm == tests[("safe_rlhf", "sft", "m")].p_holm  # one test, one p
    assert tests[("sft", "safe_rlhf", "m")].difference.mean == pytest.approx(-tests[("safe_rlhf", "sft", "m")].difference.mean)
    # three distinct tests: safe_rlhf vs sft and ppo vs safe_rlhf never cross 0 (raw p = 2/1000, Holm x3)
    assert tests[("safe_rlhf", "sft", "m")].p_holm == pytest.approx(3 * 2 / 1000)
    assert tests[("safe_rlhf", "sft", "m")].significant and not tests[("ppo", "sft", "m")].significant
    assert tests[("safe_rlhf", "sft", "m")].sentence({"safe_rlhf": "safe_rlhf †"}).startswith(
        "safe_rlhf † scores lower than sft (m ")


def test_dominance_p_by_hand():
    # A dominates B (x up, y down) in replicates 0 and 1 (ties on one axis count if better on the other), not in 2, 3
    x_a, y_a = np.array([0.5, 0.5, 0.5, 0.4]), np.array([0.1, 0.2, 0.3, 0.1])
    x_b, y_b = np.array([0.4, 0.5, 0.5, 0.5]), np.array([0.2, 0.3, 0.3, 0.1])
    assert dominance_p(x_a, y_a, x_b, y_b) == pytest.approx((1 + 2) / 5)


def test_hypervolume_by_hand():
    # staircase of (0.8, 0.3), (0.5, 0.6), (0.2, 0.9): 0.8 x 0.3 + 0.5 x 0.3 + 0.2 x 0.3 = 0.45
    points = [(0.2, 0.9), (0.5, 0.6), (0.8, 0.3)]
    assert hypervolume(points) == pytest.approx(0.45)
    assert hypervolume(points + [(0.4, 0.5), (0.8, 0.1)]) == pytest.approx(0.45)  # dominated points add nothing
    assert hypervolume([(0.5, 0.5)], reference=(0.1, 0.2)) == pytest.approx(0.4 * 0.3)
    assert hypervolume([]) == 0.0 and hypervolume([(0.0, 0.5)]) == 0.0
