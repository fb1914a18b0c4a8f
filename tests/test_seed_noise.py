"""The multi-seed claim helper (tests/seed_noise.py) against hand-computed Welch margins."""

from __future__ import annotations

import math

import pytest

from seed_noise import assert_effect, seed_effect


def test_effect_against_a_constant_by_hand():
    # a = 1, 2, 3 against 0: difference 2, s = 1, se = 1 / sqrt(3), df = 2, margin = 4.302653 / sqrt(3) = 2.4841
    effect = seed_effect([1.0, 2.0, 3.0], 0.0)
    assert (effect.difference, effect.df) == (2.0, 2.0)
    assert effect.se == pytest.approx(1 / math.sqrt(3)) and effect.margin == pytest.approx(4.302653 / math.sqrt(3))
    with pytest.raises(AssertionError, match=r"not shown over seeds: difference \+2\.0000 vs margin 2\.4841"):
        assert_effect(effect, "a exceeds 0")
    assert_effect(seed_effect([3.0, 4.0, 5.0], 0.0), "a exceeds 0")  # 4 > 2.484


def test_two_sample_welch_by_hand():
    # a = 1, 2, 3 and b = 0, 1, 2: difference 1, se = sqrt(2 / 3), df = (2/3)^2 / (2 (1/3)^2 / 2) = 4
    effect = seed_effect([1.0, 2.0, 3.0], [0.0, 1.0, 2.0])
    assert effect.difference == 1.0 and effect.df == pytest.approx(4.0)
    assert effect.margin == pytest.approx(2.776445 * math.sqrt(2 / 3))


def test_noise_floor_keeps_identical_seeds_from_shrinking_the_margin():
    identical = [2.0, 2.0, 2.0]
    assert seed_effect(identical, 0.0).margin == 0.0
    assert seed_effect(identical, 0.0, noise_floor=0.5).margin == pytest.approx(4.302653 * 0.5 / math.sqrt(3))
    with pytest.raises(AssertionError):
        assert_effect(seed_effect(identical, 0.0, noise_floor=1.0), "2 exceeds 0 beyond a noise of 1")
    with pytest.raises(ValueError, match="at least 2 seeds"):
        seed_effect([1.0], 0.0)
