"""The gamma and EMA-beta schedules: endpoints, shapes, warm-up and update cadence, argument checks."""

from __future__ import annotations

import math

import pytest

from trainables.schedules import cosine_decay, ema_action, ema_beta_at, gamma_at, last_ema_update

T = 1000


def test_cosine_gamma_endpoints_and_midpoint():
    assert gamma_at(0, gamma=2.0, scaling_steps=T) == 2.0
    assert gamma_at(T // 2, gamma=2.0, scaling_steps=T) == pytest.approx(1.0)
    assert gamma_at(T // 4, gamma=2.0, scaling_steps=T) == pytest.approx(2.0 * (1 + math.cos(math.pi / 4)) / 2)
    for step in (T, T + 1, 10 * T):
        assert gamma_at(step, gamma=2.0, scaling_steps=T) == pytest.approx(0.0, abs=1e-12)
    values = [gamma_at(s, gamma=1.0, scaling_steps=T) for s in range(T + 1)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # monotone decay


def test_linear_and_constant_shapes():
    assert gamma_at(0, gamma=1.5, scaling_steps=T, shape="linear") == 1.5
    assert gamma_at(T // 4, gamma=1.5, scaling_steps=T, shape="linear") == pytest.approx(1.5 * 0.75)
    assert gamma_at(T, gamma=1.5, scaling_steps=T, shape="linear") == 0.0
    assert gamma_at(2 * T, gamma=1.5, scaling_steps=T, shape="linear") == 0.0
    assert [gamma_at(s, gamma=1.5, scaling_steps=T, shape="constant") for s in (0, T // 2, T - 1, T, T + 5)] == [
        1.5, 1.5, 1.5, 0.0, 0.0]


def test_no_scaling_keeps_gamma():
    assert {gamma_at(s, gamma=0.7) for s in (0, 1, T, 10**7)} == {0.7}


def test_beta_rises_to_one_with_a_cosine():
    k = 200
    assert ema_beta_at(1, beta=0.99, total_steps=k) == pytest.approx(1 - 0.01 * cosine_decay(1, k))
    assert ema_beta_at(k // 2, beta=0.99, total_steps=k) == pytest.approx(0.995)
    assert ema_beta_at(k, beta=0.99, total_steps=k) == pytest.approx(1.0)
    assert ema_beta_at(3 * k, beta=0.99, total_steps=k) == pytest.approx(1.0)
    values = [ema_beta_at(s, beta=0.9, total_steps=k) for s in range(k + 1)]
    assert values[0] == 0.9 and all(a <= b for a, b in zip(values, values[1:]))


def test_beta_constant_before_update_beta_after_step_and_the_target_is_copied():
    for step in range(0, 11):
        assert ema_beta_at(step, beta=0.95, total_steps=100, after_step=10) == 0.95
    assert ema_beta_at(11, beta=0.95, total_steps=100, after_step=10) > 0.95
    assert [ema_action(s, after_step=3) for s in (1, 2, 3, 4, 5)] == ["copy", "copy", "copy", "ema", "ema"]
    assert ema_action(1) == "ema"  # after_step=0: EMA from the first step


def test_beta_updates_only_every_n_steps():
    kw = dict(beta=0.9, total_steps=100, after_step=0, every_n_steps=5)
    assert [ema_action(s, after_step=0, every_n_steps=5) for s in range(1, 11)] == ["none"] * 4 + ["ema"] + [
        "none"] * 4 + ["ema"]
    assert [ema_beta_at(s, **kw) for s in range(0, 5)] == [0.9] * 5  # no update yet
    assert {ema_beta_at(s, **kw) for s in range(5, 10)} == {ema_beta_at(5, **kw)}  # held between updates
    assert ema_beta_at(10, **kw) > ema_beta_at(9, **kw)
    assert [last_ema_update(s, after_step=6, every_n_steps=5) for s in (4, 5, 9, 10, 14)] == [None, None, None, 10, 10]


@pytest.mark.parametrize(
    ("call", "fragment"),
    [
        (lambda: gamma_at(-1, gamma=1.0), "step >= 0"),
        (lambda: gamma_at(0, gamma=-1.0), "gamma >= 0"),
        (lambda: gamma_at(0, gamma=1.0, scaling_steps=0), "scaling_steps >= 1"),
        (lambda: gamma_at(0, gamma=1.0, scaling_steps=5, shape="step"), "shape"),
        (lambda: ema_beta_at(1, beta=1.5, total_steps=10), "0 <= beta <= 1"),
        (lambda: ema_beta_at(1, beta=0.9, total_steps=0), "total_steps >= 1"),
        (lambda: ema_action(0), "step >= 1"),
        (lambda: ema_action(1, every_n_steps=0), "every_n_steps >= 1"),
    ],
)
def test_bad_arguments_name_the_field(call, fragment):
    with pytest.raises(ValueError, match=fragment):
        call()
