"""The contract every registered method passes, and a short digits run that must beat an untrained encoder.

A new method file is picked up here automatically through the registry.
"""

from __future__ import annotations

import dataclasses
import typing

import pytest
from conftest import ROOT
from method_contract import check_method_contract

from trainables.config import ConfigError
from trainables.data import load_dataset
from trainables.loop import RecordingReporter, evaluate_untrained, fit
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
    hints = typing.get_type_hints(cls.Config)
    numeric = [f.name for f in dataclasses.fields(cfg) if hints[f.name] in (int, float)]
    assert numeric, f"{name} has no numeric setting to check"
    for field in numeric:  # every numeric field refuses a non-number, naming itself
        with pytest.raises(ConfigError, match=f"`{field}"):
            TrialSpec.from_settings(name, {field: "not-a-number"})
    refused = []
    for field in numeric:  # and a field that refuses an absurd value names itself too
        absurd = -10**9 if hints[field] is int else -1e9
        try:
            TrialSpec.from_settings(name, {field: absurd})
        except ConfigError as e:
            assert f"{field}" in str(e), (field, str(e))
            refused.append(field)
    assert refused, f"no numeric setting of {name} checks its range"


@pytest.mark.parametrize("name", ALL)
def test_method_contract(name, digits):
    check_method_contract(name, digits)


@pytest.mark.parametrize("name", ALL)
def test_declared_metrics_are_known_to_the_sweep(name):
    from search.spec import known_metrics

    declared = reported_metrics(name)
    assert set(declared.all) <= known_metrics()
    assert set(declared.epoch) <= known_metrics(per_epoch=True)
    assert not set(declared.epoch) & set(declared.final)


#: Least kNN top-1 gain (fraction of digits' 300 validation images) of a trained encoder over the same seed's
#: untrained one. Measured on 2026-11-29 with each method's ``digits`` preset, seeds 0-4, 1 thread (paired gain =
#: trained - untrained; the untrained encoder scores 0.733-0.780; supcon's seeds 0-1 and a run of every method at 2
#: threads agree): supcon +0.12..+0.20 (mean 0.16), ce +0.10..+0.18 (0.14), selfcon +0.11..+0.18 (0.14), sigmoid
#: +0.07..+0.11 (0.09), simclr +0.05..+0.09 (0.07), sce +0.04..+0.11 (0.08). Another CPU or thread count changes the
#: trajectory as another seed does. A margin of 0.02 (6 images) is under half the worst seed of any method and under
#: a third of every method's mean, and a run that does not learn does not reach it (its gain is 0 when nothing trains;
#: broken objectives push kNN below the untrained encoder, as cmc's does). The linear probe is no criterion here: on
#: digits it reaches ~0.93 on random features, within the spread between CPUs.
MIN_KNN_GAIN = 0.02


def test_every_method_has_its_space_and_a_readme_row():
    import importlib

    from spaces.compare import available

    assert available() == ALL
    readme = (ROOT / "README.md").read_text()
    for name in ALL:
        module = importlib.import_module(f"spaces.{name}")
        assert module.METHOD == name and callable(module.params), name
        assert f"| `{name}`" in readme or f"`{name}`, " in readme, f"README's method table lacks {name}"


def test_every_method_has_a_digits_preset_that_validates():
    for name in ALL:
        spec = TrialSpec.from_settings(name, preset="digits")
        assert spec.train.dataset == "digits" and spec.train.epochs <= 30, name
    with pytest.raises(ConfigError, match="`preset` must be one of digits"):
        TrialSpec.from_settings("supcon", preset="imagenet-1k-in-a-minute")
    assert TrialSpec.from_settings("supcon", {"lr": 0.3}, preset="digits").train.lr == 0.3  # the user's value wins


#: Methods whose ``digits`` preset does not learn yet, with the evidence. Strict: a fix turns the xfail into a failure
#: that asks for this entry to go.
NOT_LEARNING_ON_DIGITS = {
    "cmc": "kNN gain -0.117, -0.213, -0.093, -0.103, -0.047 on seeds 0-4 with the preset; no setting tried reaches "
           "+0.02 on seed 0-1 within 30 epochs (NCE and softmax, SGD and Adam, T 0.07-0.5, nce_m 0-0.97, batch 32-128, "
           "lr warm-up, crop 0.2-0.5, encoder_width 0.5-1). Two causes, measured on seed 0 (f . m per epoch): (1) a "
           "positive bank row is always older than about half its negatives, so each view is pushed off the other "
           "view's newest rows and the two views' mean embeddings run apart (f_r . f_gb -> -0.9, f . f within a view "
           "-> 0.93) for ~12 of 15-30 epochs; deferring the bank updates to the epoch's end (not the paper) removes "
           "this; (2) once the instance task is learnt (f . m+ 0.42-0.88 vs f . m- 0.01-0.13) kNN still ends at "
           "0.63-0.78 against 0.72-0.84 untrained: R|GB views of a gray image are the same pixels, so matching them "
           "needs no semantics (Lab's ab and YCbCr's CbCr are constant on gray digits)",
}


@pytest.mark.slow
@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xfail(strict=True, reason=NOT_LEARNING_ON_DIGITS[n]))
                                  if n in NOT_LEARNING_ON_DIGITS else n for n in ALL])
def test_short_digits_run_beats_untrained_encoder(name, digits):
    """The method's ``digits`` preset learns: kNN top-1 on the validation split beats the untrained encoder of the
    same seed by MIN_KNN_GAIN (see its comment for the measured spread)."""
    spec = TrialSpec.from_settings(name, {"probe_epochs": 10, "logreg_probe": False}, preset="digits")
    untrained = evaluate_untrained(spec, data=digits)
    trained = fit(spec, data=digits)
    assert trained["finished"] and trained["epoch"] == spec.train.epochs
    gain = trained["knn_top1"] - untrained["knn_top1"]
    assert gain >= MIN_KNN_GAIN, (name, trained["knn_top1"], untrained["knn_top1"])


#: What every report carries beside metrics: the run's bookkeeping.
BOOKKEEPING = {"world_size", "per_worker_batch", "gathered_negatives", "finished"}


@pytest.mark.parametrize("name", ALL)
def test_a_short_fit_reports_exactly_the_declared_metrics(name, digits):
    """One list of metrics: what a run reports is what the method declares (``trainables.metrics``), no more, no less."""
    spec = TrialSpec.from_settings(name, {"epochs": 1, "width": 0.125, "probe_epochs": 2}, preset="digits")
    declared = reported_metrics(name, spec.method_config, spec.train)
    reporter = RecordingReporter()
    fit(spec, data=digits, reporter=reporter)
    (last,) = reporter.metrics
    unreported = set() if spec.train.logreg_probe else {"logreg_top1"}
    assert set(last) - BOOKKEEPING == set(declared.all) - unreported, name
    assert all(0.0 <= last[k] <= 1.0 for k in last if k.endswith("_top1")), last
