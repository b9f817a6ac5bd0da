"""The contract every method passes, as functions a method's own test file can call with its own settings.

``tests/test_methods.py`` runs :func:`check_method_contract` over every registered method (discovered from the
registry); a method's test file adds its variants, e.g. ``check_method_contract("selfcon", digits, multiview=True)``.
Nothing here assumes a ``model.backbone``: features and their widths come from ``eval_features``, metric names from
the method's declarations.
"""

from __future__ import annotations

from typing import Any

import torch
from conftest import TINY

from trainables.loop import RecordingReporter, fit
from trainables.methods import Batch, Method, RunShape, get_method
from trainables.metrics import reported_metrics
from trainables.optim import build_optimizer
from trainables.trial import TrialSpec

__all__ = ["check_method_contract", "data_batch", "make_method"]


def make_method(name: str, data: Any, **settings: Any) -> tuple[Method, TrialSpec]:
    """The method ``name`` on ``data`` with the tiny settings plus ``settings``, ``setup`` done as the loop does."""
    spec = TrialSpec.from_settings(name, {**TINY, **settings})
    method = get_method(name)(spec.method_config, train=spec.train, data=data)
    method.setup(RunShape.of(spec.train, num_samples=len(data.train)))
    return method, spec


def data_batch(data: Any, n: int = 16, *, start: int = 0) -> Batch:
    """Rows ``start .. start + n - 1`` of the training split as the loop's :class:`Batch`."""
    rows = torch.arange(start, start + n)
    return Batch(torch.from_numpy(data.train.images[start:start + n].copy()),
                 torch.from_numpy(data.train.labels[start:start + n].copy()).long(), rows)


def check_method_contract(name: str, data: Any, **settings: Any) -> None:
    """Two optimiser steps through every hook, with the invariants the loop and the sweep rely on:

    - ``views``: float32 views with the batch's rows; ``loss``: a finite scalar, logs declared in the method's
      epoch metrics; gradients reach trainable parameters and never a buffer;
    - ``after_step`` / ``epoch_logs(step=)``: run after each step, keys declared;
    - ``eval_features``: a ``backbone`` entry, each entry ``[N, D]`` with ``D`` independent of ``N``, every extra
      entry's probe (``{name}_top1``) and ``ensemble_top1`` declared as final metrics;
    - ``state_dict``: a fresh method restores it and saves it back unchanged.
    """
    method, spec = make_method(name, data, **settings)
    declared = reported_metrics(name, spec.method_config)
    model = method.build()
    optimizer = build_optimizer(model, spec.train)
    generator = torch.Generator().manual_seed(0)
    for step in range(2):
        batch = data_batch(data, start=16 * step)
        assert batch.indices.dtype == torch.int64 and batch.labels.dtype == torch.int64
        with torch.no_grad():
            views = method.views(batch.images, generator)
        assert views and all(v.dtype == torch.float32 and v.shape[0] == 16 for v in views)
        loss, logs = method.loss(model, views, batch, step=step)
        assert loss.ndim == 0 and torch.isfinite(loss), loss
        assert isinstance(logs, dict) and set(logs) <= set(declared.epoch), (set(logs), declared.epoch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        assert grads and sum(g.abs().sum() for g in grads) > 0 and all(torch.isfinite(g).all() for g in grads)
        assert all(not b.requires_grad for b in model.buffers())
        optimizer.step()
        method.after_step(model, step=step + 1)
        epoch_logs = method.epoch_logs(step=step + 1)
        assert set(epoch_logs) <= set(declared.epoch), (set(epoch_logs), declared.epoch)

    model.eval()
    with torch.no_grad():
        feats = method.eval_features(model, views[0])
        small = method.eval_features(model, views[0][:5])
    assert "backbone" in feats and list(small) == list(feats)
    for key, value in feats.items():
        assert value.ndim == 2 and value.shape[0] == 16 and small[key].shape == (5, value.shape[1]), key
        assert torch.isfinite(value).all(), key
    extras = {f"{key}_top1" for key in feats if key != "backbone"} | ({"ensemble_top1"} if len(feats) > 1 else set())
    assert extras <= set(declared.final), (extras, declared.final)

    restored, _ = make_method(name, data, **settings)
    restored.load_state_dict(method.state_dict())
    assert restored.state_dict().keys() == method.state_dict().keys()


def straight_and_resumed(spec: TrialSpec, data: Any = None, *, until: int | None = None):
    """``(straight, first, second)`` reporters: ``spec`` trained without a break, and again stopped after epoch 1
    then resumed from that report's state (what a checkpoint holds); both stop after epoch ``until`` when given."""
    straight, first, second = RecordingReporter(), RecordingReporter(), RecordingReporter()
    fit(spec, reporter=straight, data=data, stop_after_epoch=until)
    fit(spec, reporter=first, data=data, stop_after_epoch=1)
    fit(spec, reporter=second, data=data, resume_state=first.state, stop_after_epoch=until)
    return straight, first, second
