"""Learning-rate schedule values, the LARS update, and the loop under bf16 autocast / LARS / Adam."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import TINY

from trainables.config import TrainConfig
from trainables.loop import fit
from trainables.optim import LARS, build_optimizer, lr_at


def test_cosine_with_warmup():
    t = TrainConfig(lr=1.0, epochs=10, warmup_epochs=2, warmup_from=0.01, lr_decay_rate=0.1)
    kw = dict(train=t, steps_per_epoch=10, total_steps=100, peak=1.0)
    eta_min = 1e-3
    cos = lambda s: eta_min + (1 - eta_min) * (1 + math.cos(math.pi * s / 100)) / 2  # noqa: E731
    assert lr_at(0, **kw) == pytest.approx(0.01)
    assert lr_at(10, **kw) == pytest.approx(0.01 + (cos(20) - 0.01) * 10 / 20)  # half-way through warm-up
    assert lr_at(20, **kw) == pytest.approx(cos(20))
    assert lr_at(99, **kw) == pytest.approx(cos(99))
    assert lr_at(50, **kw) == pytest.approx(eta_min + (1 - eta_min) / 2)


def test_step_schedule_and_linear_scaling():
    t = TrainConfig(lr=0.4, epochs=10, schedule="step", lr_decay_epochs=(5, 8), lr_decay_rate=0.1,
                    lr_scaling="linear", batch_size=512, warmup_epochs=0)
    assert t.scaled_lr() == pytest.approx(0.8)
    kw = dict(train=t, steps_per_epoch=4, total_steps=40, peak=t.scaled_lr())
    assert lr_at(19, **kw) == pytest.approx(0.8)
    assert lr_at(20, **kw) == pytest.approx(0.08)
    assert lr_at(32, **kw) == pytest.approx(0.008)


def test_lars_update_follows_the_trust_ratio():
    w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))  # ||w|| = 5
    b = torch.nn.Parameter(torch.tensor([1.0]))
    opt = LARS([{"params": [w], "weight_decay": 0.0}, {"params": [b], "weight_decay": 0.0, "lars_exclude": True}],
               lr=1.0, momentum=0.0, eta=0.1)
    w.grad = torch.tensor([0.0, 2.0])  # ||g|| = 2 -> trust = 0.1 * 5 / 2 = 0.25
    b.grad = torch.tensor([0.5])
    opt.step()
    torch.testing.assert_close(w.detach(), torch.tensor([3.0, 3.5]))
    torch.testing.assert_close(b.detach(), torch.tensor([0.5]))  # excluded: plain SGD step


def test_adam_and_lars_exclude_norms_from_weight_decay():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
    for name in ("adam", "lars"):
        opt = build_optimizer(model, TrainConfig(optimizer=name, weight_decay=0.1))
        decays = sorted(g["weight_decay"] for g in opt.param_groups)
        assert decays == [0.0, 0.1] and sum(len(g["params"]) for g in opt.param_groups) == 4


@pytest.mark.parametrize("settings", [{"amp": "bf16"}, {"optimizer": "lars", "lr": 0.5},
                                      {"optimizer": "adam", "lr": 1e-3}, {"schedule": "constant", "grad_clip": 1.0}])
def test_loop_runs_with(settings):
    from trainables.trial import TrialSpec

    spec = TrialSpec.from_settings("supcon", {**TINY, "width": 0.125, "epochs": 1, "probe_epochs": 2, **settings})
    out = fit(spec)
    assert out["finished"] and math.isfinite(out["train_loss"]) and 0 <= out["linear_top1"] <= 1
