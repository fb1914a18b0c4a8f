"""GAE, GRPO, REINFORCE++, reward shaping and the Lagrangian combination, checked by hand."""

import math

import pytest
import torch

from alignbench.errors import ConfigError
from alignbench.rl.advantages import (
    combine_lagrangian,
    discounted_returns,
    gae,
    grpo_advantages,
    reinforce_pp_advantages,
)
from alignbench.rl.losses import masked_mean, masked_var
from alignbench.rl.shaping import last_token_index, shape_token_rewards


def test_gae_by_hand_with_padding():
    # row 0 (3 tokens), gamma = 1, lam = 0.95, V = 0 after the last token:
    #   delta_2 = 1 + 0 - 0.7 = 0.3              A_2 = 0.3
    #   delta_1 = 0 + 0.7 - 0.6 = 0.1            A_1 = 0.1 + 0.95 * 0.3   = 0.385
    #   delta_0 = 0 + 0.6 - 0.5 = 0.1            A_0 = 0.1 + 0.95 * 0.385 = 0.46575
    # row 1 (2 tokens, third is padding with junk values):
    #   delta_1 = 2 + 0 - 0.5 = 1.5              A_1 = 1.5
    #   delta_0 = 0 + 0.5 - 1 = -0.5             A_0 = -0.5 + 0.95 * 1.5 = 0.925
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 99.0]])
    values = torch.tensor([[0.5, 0.6, 0.7], [1.0, 0.5, 99.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=0.95)
    torch.testing.assert_close(adv, torch.tensor([[0.46575, 0.385, 0.3], [0.925, 1.5, 0.0]]))
    # returns = A + V on real tokens, 0 on padding
    torch.testing.assert_close(ret, torch.tensor([[0.96575, 0.985, 1.0], [1.925, 2.0, 0.0]]))


def test_gae_lambda_one_is_return_minus_value():
    # lam = 1, gamma = 0.5: A_t = G_t - V_t with G = [1 + 0.5*2 + 0.25*4, 2 + 0.5*4, 4] = [3, 4, 4]
    rewards = torch.tensor([[1.0, 2.0, 4.0]])
    values = torch.tensor([[1.0, 1.0, 1.0]])
    adv, ret = gae(rewards, values, torch.ones(1, 3), gamma=0.5, lam=1.0)
    torch.testing.assert_close(adv, torch.tensor([[2.0, 3.0, 3.0]]))
    torch.testing.assert_close(ret, torch.tensor([[3.0, 4.0, 4.0]]))


def test_discounted_returns_by_hand():
    # gamma = 0.5: G_2 = 3, G_1 = 2 + 1.5 = 3.5, G_0 = 1 + 1.75 = 2.75; padding stays 0
    rewards = torch.tensor([[1.0, 2.0, 3.0, 8.0]])
    mask = torch.tensor([[1, 1, 1, 0]])
    torch.testing.assert_close(
        discounted_returns(rewards, mask, gamma=0.5), torch.tensor([[2.75, 3.5, 3.0, 0.0]])
    )


def test_reinforce_pp_global_whitening():
    torch.manual_seed(0)
    rewards = torch.randn(4, 6)
    mask = torch.tensor([[1] * 6, [1] * 3 + [0] * 3, [1] * 5 + [0], [1] + [0] * 5])
    adv = reinforce_pp_advantages(rewards, mask, gamma=1.0)
    assert masked_mean(adv, mask, per_sequence=False).item() == pytest.approx(0.0, abs=1e-6)
    assert masked_var(adv, mask).item() == pytest.approx(1.0, abs=1e-5)
    assert adv[mask == 0].abs().max().item() == 0.0
    # the ordering of returns-to-go is kept: row 3 has a single token whose G is its reward
    g = discounted_returns(rewards, mask)
    assert torch.equal(adv[mask.bool()].argsort(), g[mask.bool()].argsort())


def test_grpo_groups():
    adv = grpo_advantages(torch.tensor([1.0, 2.0, 3.0, 4.0, 4.0, 4.0]), group_size=3)
    # group 1: mean 2, population std sqrt(2/3) -> (-1, 0, 1)/0.8165; group 2: identical -> 0
    s = math.sqrt(2 / 3)
    torch.testing.assert_close(
        adv, torch.tensor([-1 / s, 0.0, 1 / s, 0.0, 0.0, 0.0]), atol=1e-5, rtol=0
    )
    centered = grpo_advantages(torch.tensor([1.0, 2.0, 3.0, 4.0, 4.0, 4.0]), 3, scale=False)
    torch.testing.assert_close(centered, torch.tensor([-1.0, 0.0, 1.0, 0.0, 0.0, 0.0]))
    # integer scores (labels +1/0/-1) are accepted
    labels = torch.tensor([1, -1])
    torch.testing.assert_close(grpo_advantages(labels, 2, eps=0.0), torch.tensor([1.0, -1.0]))


def test_grpo_bad_group_size():
    with pytest.raises(ConfigError, match="group_size=4"):
        grpo_advantages(torch.zeros(6), group_size=4)


def test_last_token_index():
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0]])
    assert last_token_index(mask).tolist() == [2, 1, 0]


def test_shape_token_rewards_reward_and_cost_streams():
    kl = torch.tensor([[0.1, 0.2, 0.3], [0.5, -0.5, 9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    # reward stream: -0.1 * k_t, plus R at the last real token (col 2 of row 0, col 1 of row 1)
    r = shape_token_rewards(torch.tensor([2.0, -1.0]), kl, mask, beta=0.1)
    torch.testing.assert_close(r, torch.tensor([[-0.01, -0.02, 1.97], [-0.05, -0.95, 0.0]]))
    # cost stream: +0.1 * k_t, plus C at the last real token
    c = shape_token_rewards(torch.tensor([3.0, 0.5]), kl, mask, beta=0.1, sign=-1.0)
    torch.testing.assert_close(c, torch.tensor([[0.01, 0.02, 3.03], [0.05, 0.45, 0.0]]))


def test_shape_token_rewards_clamp():
    kl = torch.zeros(2, 2)
    mask = torch.ones(2, 2)
    r = shape_token_rewards(torch.tensor([100.0, -100.0]), kl, mask, beta=0.1)
    torch.testing.assert_close(r, torch.tensor([[0.0, 50.0], [0.0, -50.0]]))
    r = shape_token_rewards(torch.tensor([100.0, -100.0]), kl, mask, beta=0.1, clamp=None)
    assert r[0, 1].item() == 100.0


def test_combine_lagrangian():
    a_r = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    a_c = torch.tensor([[1.0, 1.0], [2.0, 2.0]])
    # lam = 1: (A_R - A_C) / 2
    expected = torch.tensor([[0.0, 0.5], [0.5, 1.0]])
    torch.testing.assert_close(combine_lagrangian(a_r, a_c, 1.0), expected)
    # RePO: row 1 is safe (u = 0), so only A_R / 2 remains there
    out = combine_lagrangian(a_r, a_c, 1.0, violation_mask=torch.tensor([True, False]))
    torch.testing.assert_close(out, torch.tensor([[0.0, 0.5], [1.5, 2.0]]))
    torch.testing.assert_close(combine_lagrangian(a_r, a_c, 0.0), a_r)
    # lambda passed as a tensor that needs grad is used as a constant
    lam = torch.tensor(3.0, requires_grad=True)
    out = combine_lagrangian(a_r.requires_grad_(), a_c, lam)
    out.sum().backward()
    assert lam.grad is None
    torch.testing.assert_close(out.detach(), (a_r.detach() - 3 * a_c) / 4)
