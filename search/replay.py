"""Replaying a schedule of settings in one run: ``csweep train METHOD --schedule EPOCH:KEY=VALUE[,KEY=VALUE]``.

A schedule maps the first epoch of a change to the settings it changes (``{3: {"lr": 0.08}}``: epochs 1-2 with the
``--set`` values, epoch 3 on with lr 0.08). It is trained the way PBT trains a clone (search/sweep.py): the run stops
after the epoch before a change, its exact checkpoint gets the new values and :func:`trainables.loop.fit` continues
from it with the changed spec. So the schedule a PBT trial's weights were trained with
(:func:`analysis.population.settings_history`) reruns as one ``csweep train``
(:func:`analysis.population.replay_args` writes the arguments). Ray-free.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from trainables.config import ConfigError, parse_overrides
from trainables.trial import TrialSpec, typed_settings

__all__ = ["fit_schedule", "parse_schedule", "segments"]


def parse_schedule(items: Sequence[str]) -> dict[int, dict[str, Any]]:
    """``["3:lr=0.08,temperature=0.2", "5:lr=0.1"]`` -> ``{3: {"lr": 0.08, "temperature": 0.2}, 5: {"lr": 0.1}}``."""
    out: dict[int, dict[str, Any]] = {}
    for item in items:
        epoch, sep, rest = item.partition(":")
        if not sep or not epoch.strip().isdigit() or not rest.strip():
            raise ConfigError(f"`schedule` entries look like EPOCH:KEY=VALUE[,KEY=VALUE], but got {item!r}")
        out.setdefault(int(epoch), {}).update(typed_settings(parse_overrides(rest.split(","))))
    return dict(sorted(out.items()))


def segments(spec: TrialSpec, schedule: Mapping[int, Mapping[str, Any]]) -> list[tuple[int, int, TrialSpec]]:
    """``(first epoch, last epoch, spec)`` of each stretch of constant settings; every spec validated (ConfigError
    naming the field), the epochs checked to lie in 2..epochs."""
    epochs = spec.train.epochs
    bad = [e for e in schedule if not 2 <= e <= epochs]
    if bad:
        raise ConfigError(f"`schedule` epochs must lie in 2..epochs={epochs} (epoch 1 uses the --set values), "
                          f"but got {bad[0]}")
    base = {k: v for k, v in spec.flat().items() if k != "method"}
    starts = [1, *schedule]
    out, current = [], dict(base)
    for i, first in enumerate(starts):
        current.update(schedule.get(first, {}))
        last = starts[i + 1] - 1 if i + 1 < len(starts) else epochs
        out.append((first, last, TrialSpec.from_settings(spec.method, dict(current))))
    return out


class _Segment:
    """Forwards reports (with the segment's scheduled settings) and keeps the last checkpoint state."""

    def __init__(self, inner, settings: Mapping[str, Any]) -> None:
        self.inner, self.settings, self.state = inner, dict(settings), None

    def report(self, metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
        if self.inner is not None:
            self.inner.report({**metrics, **self.settings}, state)
        self.state = state


def fit_schedule(spec: TrialSpec, schedule: Mapping[int, Mapping[str, Any]], *, reporter=None,
                 resume_state: dict[str, Any] | None = None, data=None, device=None,
                 memory_limit_mb: float | None = None) -> dict[str, Any]:
    """Train ``spec`` with ``schedule`` applied at its epochs; returns the last epoch's metrics. One worker only (the
    state handed from one stretch to the next is rank 0's). ``resume_state`` may come from any epoch of the run;
    ``memory_limit_mb`` is :func:`trainables.loop.fit`'s."""
    from trainables.loop import fit

    keys = sorted({k for change in schedule.values() for k in change})
    state, done, last = resume_state, (resume_state or {}).get("progress", {}).get("epoch", 0), {}
    for _, end, seg in segments(spec, schedule):
        if end <= done:
            continue
        flat = seg.flat()
        if state is not None:  # the checkpoint carries the values of its own stretch: continue with this one's
            state = {**state, "spec": {**state["spec"], **{k: flat[k] for k in keys}}}
        capture = _Segment(reporter, {k: flat[k] for k in keys})
        last = fit(seg, reporter=capture, resume_state=state, data=data, device=device,
                   stop_after_epoch=end if end < seg.train.epochs else None, memory_limit_mb=memory_limit_mb)
        state, done = capture.state, end
    return last

