"""Losses, KL estimators and diagnostics against values worked out by hand."""

import math

import pytest
import torch

from alignbench.rl.losses import (
    clipped_policy_loss,
    clipped_value_loss,
    entropy_from_logits,
    explained_variance,
    kl_penalty,
    masked_mean,
    masked_whiten,
)

LN = math.log


def test_masked_mean_per_sequence_vs_global():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    # per sequence: row means (1+2)/2 = 1.5 and (4+5+6)/3 = 5, then (1.5 + 5)/2
    assert masked_mean(x, mask).item() == pytest.approx(3.25)
    # global: (1+2+4+5+6)/5
    assert masked_mean(x, mask, per_sequence=False).item() == pytest.approx(3.6)


def test_masked_mean_skips_empty_rows_and_bool_mask():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [100.0, 100.0, 100.0]])
    mask = torch.tensor([[True, True, False], [True, True, True], [False, False, False]])
    assert masked_mean(x, mask).item() == pytest.approx(3.25)
    assert masked_mean(x, torch.zeros_like(mask)).item() == 0.0


def test_masked_whiten():
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 77.0, -9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    # real tokens 1,2,3,4: mean 2.5, population var (2.25+0.25+0.25+2.25)/4 = 1.25
    s = math.sqrt(1.25)
    expected = torch.tensor([[-1.5 / s, -0.5 / s, 0.5 / s], [1.5 / s, 0.0, 0.0]])
    torch.testing.assert_close(masked_whiten(x, mask), expected, atol=1e-6, rtol=0)
    kept_mean = masked_whiten(x, mask, shift_mean=False)
    torch.testing.assert_close(kept_mean, (expected + 2.5) * mask, atol=1e-6, rtol=0)


def test_clipped_policy_loss_hand_example():
    # row 0: ratios 1.5, 0.5, 0.5, 1.0 with advantages +1, +1, -1, +2 (eps = 0.2)
    #   token 1: min(1.5*1, 1.2*1)   = 1.2   clipped term active
    #   token 2: min(0.5*1, 0.8*1)   = 0.5   unclipped
    #   token 3: min(-0.5, 0.8*-1)   = -0.8  clipped term active
    #   token 4: min(2, 2)           = 2.0   (equal: not counted as clipped)
    #   row mean = (1.2 + 0.5 - 0.8 + 2)/4 = 0.725
    # row 1: ratios 1, 1 with advantages 1, 3 -> row mean 2; a padded 3rd token is ignored
    ratios = torch.tensor([[1.5, 0.5, 0.5, 1.0], [1.0, 1.0, 9.0, 1.0]])
    adv = torch.tensor([[1.0, 1.0, -1.0, 2.0], [1.0, 3.0, 50.0, 0.0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    old_logp = torch.full((2, 4), -2.0)
    logp = (old_logp + ratios.log()).requires_grad_()

    loss, stats = clipped_policy_loss(logp, old_logp, adv, mask, clip_eps=0.2)
    assert loss.item() == pytest.approx(-(0.725 + 2.0) / 2)
    assert stats["clipfrac"].item() == pytest.approx(2 / 6)
    assert stats["ratio_mean"].item() == pytest.approx((1.5 + 0.5 + 0.5 + 1 + 1 + 1) / 6)
    # k3: (rho - 1) - ln rho = 0.5 - ln 1.5, -0.5 + ln 2 (twice), 0, 0, 0
    k3 = (0.5 - LN(1.5)) + 2 * (-0.5 + LN(2.0))
    assert stats["approx_kl"].item() == pytest.approx(k3 / 6, rel=1e-5)

    glob, _ = clipped_policy_loss(logp, old_logp, adv, mask, clip_eps=0.2, per_sequence=False)
    assert glob.item() == pytest.approx(-(2.9 + 4.0) / 6)

    loss.backward()
    # clipped tokens carry no gradient; token 2: d/dlogp of -rho*A/(4*2) = -0.5/8
    assert logp.grad[0, 0].item() == 0.0 and logp.grad[0, 2].item() == 0.0
    assert logp.grad[0, 1].item() == pytest.approx(-0.5 / 8)
    assert logp.grad[1, 2].item() == 0.0


def test_clipped_value_loss_hand_example():
    # clip range 1 around old values 0:
    #   V=2,   R=3: (2-3)^2 = 1,  clip V -> 1: (1-3)^2 = 4   -> 4 (clipped chosen)
    #   V=0.5, R=0: 0.25 both                                -> 0.25
    #   V=-2,  R=1: (-3)^2 = 9,  clip V -> -1: (-2)^2 = 4    -> 9 (unclipped chosen)
    values = torch.tensor([[2.0, 0.5, -2.0, 7.0]])
    old = torch.zeros(1, 4)
    returns = torch.tensor([[3.0, 0.0, 1.0, -7.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    loss, stats = clipped_value_loss(values, old, returns, mask, clip_range=1.0)
    assert loss.item() == pytest.approx(0.5 * (4 + 0.25 + 9) / 3)
    assert stats["vf_clipfrac"].item() == pytest.approx(1 / 3)
    # a wide clip range never clips: 0.5 * (1 + 0.25 + 9)/3
    loss, stats = clipped_value_loss(values, old, returns, mask, clip_range=5.0)
    assert loss.item() == pytest.approx(0.5 * (1 + 0.25 + 9) / 3)
    assert stats["vf_clipfrac"].item() == 0.0


def test_kl_estimators():
    # logp = ln 0.5, ref = ln 0.25: d = ln 2
    logp, ref = torch.tensor([LN(0.5), LN(0.25)]), torch.tensor([LN(0.25), LN(0.5)])
    d = LN(2.0)
    torch.testing.assert_close(kl_penalty(logp, ref, "k1"), torch.tensor([d, -d]))
    torch.testing.assert_close(kl_penalty(logp, ref, "k2"), torch.tensor([d * d / 2, d * d / 2]))
    # k3 = exp(ref - logp) - (ref - logp) - 1: 0.5 + ln2 - 1 and 2 - ln2 - 1
    torch.testing.assert_close(kl_penalty(logp, ref, "k3"), torch.tensor([d - 0.5, 1 - d]))
    torch.testing.assert_close(kl_penalty(logp, ref, "abs"), torch.tensor([d, d]))
    with pytest.raises(ValueError):
        kl_penalty(logp, ref, "k4")


def test_entropy_from_logits():
    uniform = torch.zeros(2, 3, 64)
    torch.testing.assert_close(entropy_from_logits(uniform), torch.full((2, 3), LN(64)))
    # p = (1/4, 3/4): H = -(1/4 ln 1/4 + 3/4 ln 3/4)
    two = torch.tensor([0.0, LN(3.0)])
    expected = 0.25 * LN(4) + 0.75 * LN(4 / 3)
    assert entropy_from_logits(two).item() == pytest.approx(expected, rel=1e-5)
    peaked = entropy_from_logits(torch.tensor([1000.0, 0.0, -1000.0]))
    assert torch.isfinite(peaked) and peaked.item() == pytest.approx(0.0, abs=1e-6)


def test_explained_variance():
    returns = torch.tensor([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert explained_variance(returns, returns, mask) == pytest.approx(1.0)
    assert explained_variance(torch.full_like(returns, 2.5), returns, mask) == pytest.approx(0.0)
    assert math.isnan(explained_variance(returns, torch.ones_like(returns), mask))
