"""Seed fidelity (issue 14): the published recipes and warm-up rules, exit sizes, losses and probes as the seed
repositories define them."""

from __future__ import annotations

import pytest

from trainables.config import ConfigError, TrainConfig
from trainables.methods import METHODS
from trainables.optim import lr_at
from trainables.trial import TrialSpec

# ---------------------------------------------------------------------------------------------------------------------
# 1. Recipes and warm-up


def _lr(spec: TrialSpec, epoch: float, steps_per_epoch: int = 10) -> float:
    t = spec.train
    return lr_at(int(epoch * steps_per_epoch), t, steps_per_epoch=steps_per_epoch,
                 total_steps=steps_per_epoch * t.epochs, peak=t.scaled_lr())


def test_supcon_recipe_is_the_readme_one_with_the_code_warmup() -> None:
    spec = TrialSpec.from_settings("supcon")
    t = spec.train
    assert (t.batch_size, t.lr, t.epochs, t.schedule, t.warmup_epochs, t.warmup_from) == (
        1024, 0.5, 1000, "cosine", 10.0, 0.01)
    assert _lr(spec, 0) == pytest.approx(0.01)
    eta_min = 0.5 * 0.1**3  # cosine floor lr * decay_rate^3; after warm-up the cosine value at epoch 10 of 1000
    import math
    assert _lr(spec, 10) == pytest.approx(eta_min + (0.5 - eta_min) * (1 + math.cos(math.pi * 10 / 1000)) / 2)
    assert _lr(spec, 10) == pytest.approx(0.5, abs=1e-3)
    assert _lr(spec, 5) == pytest.approx(0.01 + (_lr(spec, 10) - 0.01) / 2)


@pytest.mark.parametrize(("method", "batch", "warm"), [
    ("supcon", 256, 0.0), ("supcon", 257, 10.0), ("simclr", 512, 10.0), ("ce", 256, 0.0), ("ce", 1024, 10.0),
    ("selfcon", 512, 0.0), ("selfcon", 1023, 0.0), ("selfcon", 1024, 10.0), ("sigmoid", 1024, 0.0)])
def test_auto_warmup_is_the_seed_rule(method: str, batch: int, warm: float) -> None:
    spec = TrialSpec.from_settings(method, {"batch_size": batch})
    assert spec.train.warmup_epochs == warm
    assert _lr(spec, 0) == pytest.approx(0.01 if warm else spec.train.lr, rel=1e-3)


def test_supcon_at_batch_256_starts_at_the_peak_lr() -> None:
    assert _lr(TrialSpec.from_settings("supcon", {"batch_size": 256}), 0) == pytest.approx(0.5)


def test_explicit_warmup_overrides_the_rule_and_is_capped_at_half_a_short_run() -> None:
    assert TrialSpec.from_settings("supcon", {"warmup_epochs": 0}).train.warmup_epochs == 0
    assert TrialSpec.from_settings("selfcon", {"batch_size": 128, "warmup_epochs": 3}).train.warmup_epochs == 3
    assert TrialSpec.from_settings("supcon", {"epochs": 8}).train.warmup_epochs == 4
    with pytest.raises(ConfigError, match="warmup_epochs"):
        TrainConfig(warmup_epochs="sometimes")
    with pytest.raises(ValueError, match="warmup_epochs='auto'"):
        lr_at(0, TrainConfig(), steps_per_epoch=1, total_steps=1, peak=1.0)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_digits_presets_keep_their_schedule(method: str) -> None:
    """The digits presets (batch 128 / 64) stay without warm-up and with the preset's own lr, epochs and schedule."""
    preset = METHODS[method].presets["digits"]
    t = TrialSpec.from_settings(method, preset="digits").train
    assert t.warmup_epochs == 0
    assert (t.batch_size, t.lr, t.epochs) == (preset["batch_size"], preset["lr"], preset["epochs"])
    before = TrainConfig(**{k: v for k, v in {**METHODS[method].recipe, **preset}.items()
                            if k in TrainConfig.__dataclass_fields__} | {"warmup_epochs": 0.0})
    for step in (0, 1, 5, 50):
        kw = dict(steps_per_epoch=7, total_steps=7 * t.epochs, peak=t.scaled_lr())
        assert lr_at(step, t, **kw) == lr_at(step, before, **kw)
