"""The contract every registered method passes, and a short digits run that must beat an untrained encoder.

A new method file is picked up here automatically through the registry.
"""

from __future__ import annotations

import dataclasses

import pytest
from conftest import TINY
from method_contract import check_method_contract

from trainables.config import ConfigError
from trainables.data import load_dataset
from trainables.loop import evaluate_untrained, fit
from trainables.methods import METHODS, get_method
from trainables.metrics import reported_metrics
from trainables.trial import TrialSpec

ALL = sorted(METHODS)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_registry_has_the_engine_methods():
    assert {"supcon", "simclr", "ce"} <= set(METHODS)


@pytest.mark.parametrize("name", ALL)
def test_config_is_a_validated_frozen_dataclass(name):
    cls = get_method(name)
    assert dataclasses.is_dataclass(cls.Config)
    cfg = cls.Config()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.__setattr__(dataclasses.fields(cfg)[0].name, None)
    for f in dataclasses.fields(cfg):  # each numeric field rejects an absurd value with its own name in the message
        if f.type in ("float", "int") and f.name not in ("alpha",):
            bad = -1e9
            with pytest.raises(ConfigError, match=f.name):
                TrialSpec.from_settings(name, {f.name: bad})
            break


@pytest.mark.parametrize("name", ALL)
def test_method_contract(name, digits):
    check_method_contract(name, digits)


@pytest.mark.parametrize("name", ALL)
def test_declared_metrics_are_known_to_the_sweep(name):
    from search.sweep import known_metrics

    declared = reported_metrics(name)
    assert set(declared.all) <= known_metrics()
    assert set(declared.epoch) <= known_metrics(per_epoch=True)
    assert not set(declared.epoch) & set(declared.final)


#: Per-method settings for the short run (CE's recipe lr of 0.8 is for batch 1024 on CIFAR).
SHORT_RUN = {"supcon": {"lr": 0.05, "crop_scale_min": 0.5},
             "simclr": {"lr": 0.05, "temperature": 0.1, "crop_scale_min": 0.5},
             "ce": {"lr": 0.05},
             "selfcon": {"lr": 0.05, "crop_scale_min": 0.5, "head": "mlp_bn", "selfcon_size": "same"},
             "sigmoid": {"lr": 2e-3, "beta": 0.0, "crop_scale_min": 0.5, "local_crop_scale_min": 0.3,
                         "num_local_views": 2}}


@pytest.mark.slow
@pytest.mark.parametrize("name", ALL)
def test_short_digits_run_beats_untrained_encoder(name, digits):
    settings = {**TINY, "epochs": 10, **SHORT_RUN.get(name, {})}
    spec = TrialSpec.from_settings(name, settings)
    untrained = evaluate_untrained(spec, data=digits)
    trained = fit(spec, data=digits)
    assert trained["finished"] and trained["epoch"] == 10
    assert trained["linear_top1"] > untrained["linear_top1"], (trained, untrained)
    assert 0.0 <= trained["knn_top1"] <= 1.0
