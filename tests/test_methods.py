"""The contract every registered method passes, and a short digits run that must beat an untrained encoder.

A new method file is picked up here automatically through the registry.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import TINY

from trainables.config import ConfigError
from trainables.data import load_dataset
from trainables.loop import evaluate_untrained, fit
from trainables.methods import METHODS, Method, get_method
from trainables.trial import TrialSpec

ALL = sorted(METHODS)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def make(name: str, data, **settings) -> tuple[Method, TrialSpec]:
    spec = TrialSpec.from_settings(name, {**TINY, **settings})
    return get_method(name)(spec.method_config, train=spec.train, data=data), spec


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
def test_one_step_contract(name, digits):
    method, spec = make(name, digits)
    model = method.build()
    images = torch.from_numpy(digits.train.images[:16].copy())
    labels = torch.from_numpy(digits.train.labels[:16].copy())
    views = method.views(images, torch.Generator().manual_seed(0))
    assert views and all(v.dtype == torch.float32 and v.shape[0] == 16 for v in views)
    loss, logs = method.loss(model, views, labels, step=0)
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert isinstance(logs, dict)
    loss.backward()
    grads = [p.grad for p in model.backbone.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
    method.after_step(model, step=1)
    model.eval()
    with torch.no_grad():
        feats = method.eval_features(model, views[0])
    assert feats["backbone"].shape == (16, model.backbone.feature_dim)
    restored, _ = make(name, digits)
    restored.load_state_dict(method.state_dict())
    assert restored.state_dict().keys() == method.state_dict().keys()


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
