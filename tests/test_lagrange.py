"""LagrangeMultiplier: direction of the dual step, clamp, delay, window, rectified mode, resume."""

import io
import math

import pytest
import torch

from alignbench.errors import ConfigError
from alignbench.rl.lagrange import LagrangeMultiplier


def test_lambda_rises_above_threshold_and_falls_below():
    lm = LagrangeMultiplier(init=1.0, lr=0.1, threshold=0.0)
    # J_C = 1 > d = 0: log_lambda = 0 + 0.1 * (1 - 0) * e^0 = 0.1
    out = lm.update(torch.tensor([1.0, 1.0]))
    assert out == {"lambda": pytest.approx(math.exp(0.1)), "J_C": 1.0, "updated": True}

    lm = LagrangeMultiplier(init=1.0, lr=0.1, threshold=0.5, window=2)
    # J_C = -0.5 < d = 0.5: log_lambda = 0 + 0.1 * (-1) * 1 = -0.1
    assert lm.update(torch.tensor([-0.5, -0.5]))["lambda"] == pytest.approx(math.exp(-0.1))
    values = [lm.update(torch.tensor([-1.0]))["lambda"] for _ in range(5)]
    assert all(b < a for a, b in zip(values, values[1:]))
    values = [lm.update(torch.tensor([3.0]))["lambda"] for _ in range(5)]
    assert all(b > a for a, b in zip(values, values[1:]))


def test_lambda_never_exceeds_max():
    lm = LagrangeMultiplier(init=1.0, lr=0.5, lambda_max=5.0)
    seen = [lm.update(torch.tensor([10.0]))["lambda"] for _ in range(20)]
    assert max(seen) <= 5.0 + 1e-12
    assert lm.value == pytest.approx(5.0)
    # from the cap it still falls as soon as costs drop below d
    assert lm.update(torch.full((500,), -10.0))["lambda"] < 5.0


def test_delay_fills_window_without_updating():
    lm = LagrangeMultiplier(init=1.0, lr=0.1, window=4, delay=2)
    assert lm.update(torch.tensor([1.0, 1.0])) == {"lambda": 1.0, "J_C": 1.0, "updated": False}
    assert lm.update(torch.tensor([3.0, 3.0]))["updated"] is False
    assert lm.value == 1.0
    # third call: window = [3, 3, -2, -2], J_C = 0.5, log_lambda = 0.1 * 0.5 * 1 = 0.05
    out = lm.update(torch.tensor([-2.0, -2.0]))
    assert out["updated"] is True and out["J_C"] == 0.5
    assert out["lambda"] == pytest.approx(math.exp(0.05))


def test_window_keeps_last_costs():
    lm = LagrangeMultiplier(window=3, lr=0.0)
    assert lm.update(torch.tensor([1.0, 2.0, 3.0]))["J_C"] == pytest.approx(2.0)
    # window drops the 1: [2, 3, 10]
    assert lm.update(torch.tensor([10.0]))["J_C"] == pytest.approx(5.0)


def test_rectified_mode():
    lm = LagrangeMultiplier(init=1.0, lr=0.1, threshold=0.0, window=3, mode="rectified")
    # J = mean({-5}+, {1}+, {3}+) = 4/3: log_lambda = 0.1 * 4/3
    out = lm.update(torch.tensor([-5.0, 1.0, 3.0]))
    assert out["J_C"] == pytest.approx(4 / 3)
    assert out["lambda"] == pytest.approx(math.exp(0.4 / 3))
    # slack 0: an all-safe window gives J = 0 and lambda stays where it is (never falls)
    before = lm.value
    assert lm.update(torch.tensor([-5.0, -5.0, -5.0]))["J_C"] == 0.0
    assert lm.value == before
    # slack 1: the same safe window makes lambda fall, log_lambda = 0 - 0.1 * 1 * 1
    lm = LagrangeMultiplier(init=1.0, lr=0.1, mode="rectified", rectified_slack=1.0)
    assert lm.update(torch.tensor([-5.0, -5.0]))["lambda"] == pytest.approx(math.exp(-0.1))


def test_all_reduce_hook_applied_to_j_c():
    lm = LagrangeMultiplier(init=1.0, lr=0.1, all_reduce_mean=lambda j: (j + 3.0) / 2)
    out = lm.update(torch.tensor([1.0]))  # ranks' mean of 1 and 3
    assert out["J_C"] == 2.0 and out["lambda"] == pytest.approx(math.exp(0.2))


def test_state_dict_round_trip_continues_identically():
    torch.manual_seed(0)
    kwargs = dict(init=0.7, lr=0.3, threshold=0.2, window=5, delay=3, lambda_max=4.0)
    a = LagrangeMultiplier(**kwargs)
    for _ in range(4):
        a.update(torch.randn(3))
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    b = LagrangeMultiplier(**kwargs)
    b.load_state_dict(torch.load(buffer))
    for _ in range(6):
        costs = torch.randn(2) + 0.5
        assert a.update(costs) == b.update(costs)
    assert a.value == b.value
    assert a.state_dict()["costs"] == b.state_dict()["costs"]
    assert a.calls == b.calls == 10


def test_bad_config():
    with pytest.raises(ConfigError):
        LagrangeMultiplier(init=0.0)
    with pytest.raises(ConfigError):
        LagrangeMultiplier(mode="sum")
