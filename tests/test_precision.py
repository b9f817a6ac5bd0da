"""Precision and memory format: what ``auto`` resolves to per device, channels_last training on CPU, and the CUDA
path (bf16 autocast, channels_last, torch.compile, CUDA memory counters), which runs only where a GPU is present."""

from __future__ import annotations

import math

import pytest
import torch

from trainables.config import ConfigError
from trainables.data import load_dataset
from trainables.loop import RecordingReporter, fit, memory_format, precision
from trainables.trial import TrialSpec

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
SMALL = {"width": 0.125, "batch_size": 128, "epochs": 1, "probe_epochs": 2, "knn_k": 20, "deterministic": True,
         "num_threads": 1}
cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (none on this machine)")


@pytest.mark.parametrize(("amp", "device", "expected"), [("auto", CPU, "off"), ("auto", CUDA, "bf16"),
                                                          ("bf16", CPU, "bf16"), ("off", CUDA, "off"),
                                                          ("fp16", CUDA, "fp16")])
def test_amp_auto_is_bf16_on_cuda_and_off_on_cpu(amp, device, expected):
    assert precision(TrialSpec.from_settings("ce", {"amp": amp}).train, device) == expected


@pytest.mark.parametrize(("fmt", "device", "expected"), [("auto", CPU, "channels_last"), ("auto", CUDA, "channels_last"),
                                                          ("contiguous", CPU, "contiguous")])
def test_memory_format_auto_is_channels_last(fmt, device, expected):
    assert memory_format(TrialSpec.from_settings("ce", {"memory_format": fmt}).train, device) == expected


def test_bad_precision_settings_name_the_field():
    with pytest.raises(ConfigError, match="`memory_format` must be one of auto, channels_last, contiguous"):
        TrialSpec.from_settings("ce", {"memory_format": "nhwc"})
    with pytest.raises(ConfigError, match="`amp=fp16` needs a GPU"):
        fit(TrialSpec.from_settings("ce", {**SMALL, "amp": "fp16"}), data=load_dataset("digits"), device=CPU)


def test_channels_last_trains_like_contiguous_on_cpu():
    data = load_dataset("digits")
    runs = {}
    for fmt in ("contiguous", "channels_last"):
        reporter = RecordingReporter()
        fit(TrialSpec.from_settings("supcon", {**SMALL, "memory_format": fmt}), data=data, reporter=reporter)
        runs[fmt] = reporter
    weights = runs["channels_last"].state["model"]["backbone.stem.0.weight"]
    assert weights.is_contiguous(memory_format=torch.channels_last) and not weights.is_contiguous()
    a, b = runs["contiguous"].metrics[0], runs["channels_last"].metrics[0]
    assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-4)  # same maths, another summation order
    assert b["images_per_s"] > 0


@cuda_only
def test_cuda_path_bf16_channels_last_and_compile_with_cuda_counters():
    data = load_dataset("digits")
    reporter = RecordingReporter()
    fit(TrialSpec.from_settings("supcon", {**SMALL, "epochs": 2, "compile": True, "deterministic": False}),
        data=data, reporter=reporter, device=CUDA)
    first, second = reporter.metrics
    assert math.isfinite(first["images_per_s"]) and second["images_per_s"] > 0
    assert 0 < second["peak_mem_mb"] < torch.cuda.get_device_properties(0).total_memory / 2**20
    assert reporter.state["model"]["backbone.stem.0.weight"].is_contiguous(memory_format=torch.channels_last)
