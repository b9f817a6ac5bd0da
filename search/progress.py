"""A concise live table of a sweep's trials (a Tune Callback), under one line of progress: elapsed time, trials
done of the total, an ETA, and the best value of the objective so far.

On a terminal the table redraws in place at most once a second; otherwise (CI, files) it is printed when a trial
finishes and at most every ``interval_s`` seconds, so logs stay short. Ray's own output goes to its log files.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Mapping
from typing import Any, TextIO

from ray.tune import Callback

from search.fusion import FUSED, latest_members, member_status
from search.printing import RESULT_COLUMNS, finished_status, fmt, format_table, group_column, status_of
from search.spec import COMPLETED, ERRORED, STOPPED

__all__ = ["ProgressTable", "duration"]

HIDDEN = {"dataset", "data_dir", "seed"}


def _trial_row(
    trial_id: str, config: Mapping[str, Any], result: Mapping[str, Any] | None, status: str, params: Iterable[str]
) -> dict[str, Any]:
    result = result or {}
    row = {"trial": trial_id, "status": status, "method": config.get("method")}
    for p in params:
        row[p] = config.get(p)
    for m in RESULT_COLUMNS:
        row[m] = result.get(m)
    return row


def duration(seconds: float) -> str:
    """``1h02m``, ``3m05s`` or ``42s``."""
    s = int(round(seconds))
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


class ProgressTable(Callback):
    """Tune callback: a progress line (elapsed, n/N trials done, ETA, best ``metric`` so far) over one row per
    trial (id, status, method, sampled parameters, epoch, knn_top1, linear_top1)."""

    def __init__(
        self,
        *,
        stream: TextIO | None = None,
        interval_s: float = 30.0,
        fixed_method: str | None = None,
        total: int | None = None,
        metric: str = "knn_top1",
        mode: str = "max",
        clock=time.monotonic,
    ):
        self.total = total
        self.metric, self.mode = metric, mode
        self.clock = clock
        self._start = clock()
        self._best: tuple[float, str] | None = None
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.interval_s = 1.0 if self.tty else interval_s
        self.fixed_method = fixed_method
        self._rows: dict[str, dict[str, Any]] = {}
        self._params: list[str] = []
        self._last = 0.0
        self._drawn_lines = 0

    def _update(
        self, trial, result: Mapping[str, Any] | None = None, *, force: bool = False, status: str | None = None
    ) -> None:
        if FUSED in trial.config:  # one row per member (search/fusion.py)
            for mid, sampled, row in latest_members(trial.config, result):
                own = member_status(row, status and (finished_status(row) if status in (COMPLETED, STOPPED)
                                                     else status))
                self._update_row(mid, trial.status, sampled, row, own, fused_group=trial.trial_id)
        else:
            self._update_row(trial.trial_id, trial.status, trial.config, result, status)
        now = self.clock()
        if force or now - self._last >= self.interval_s:
            self._draw()
            self._last = now

    def _update_row(self, trial_id: str, tune_status: str, config: Mapping[str, Any],
                    result: Mapping[str, Any] | None, status: str | None, *, fused_group: str | None = None) -> None:
        config = {"method": self.fixed_method, **{k: v for k, v in config.items() if not k.startswith("__")}}
        for k in config:
            if k not in self._params and k != "method" and k not in HIDDEN:
                self._params.append(k)
        value = (result or {}).get(self.metric)
        if isinstance(value, (int, float)) and value == value:
            better = self._best is None or (value > self._best[0] if self.mode == "max" else value < self._best[0])
            if better:
                self._best = (float(value), trial_id)
        previous = self._rows.get(trial_id, {})
        if previous.get("status") in (STOPPED, ERRORED) and fused_group:
            return  # a dropped member stays as it was dropped
        merged = result if result is not None else {k: previous.get(k) for k in RESULT_COLUMNS}
        status = status or status_of(tune_status, merged)
        self._rows[trial_id] = {**_trial_row(trial_id, config, merged, status, self._params),
                                **({"fused_group": fused_group} if fused_group else {})}

    def headline(self) -> str:
        """``elapsed 3m05s | 5/8 trials done (2 running) | ETA 1m51s | best knn_top1 0.7033 (trial 7e5d4499)``."""
        elapsed = self.clock() - self._start
        statuses = [r["status"] for r in self._rows.values()]
        done = sum(s in (COMPLETED, STOPPED, ERRORED) for s in statuses)
        running = sum(s == "running" for s in statuses)
        parts = [f"elapsed {duration(elapsed)}", f"{done}/{self.total or '?'} trials done ({running} running)"]
        if self.total and 0 < done < self.total:
            parts.append(f"ETA {duration(elapsed / done * (self.total - done))}")
        elif self.total and done >= self.total:
            parts.append("ETA 0s")
        else:
            parts.append("ETA -")
        best = f"{fmt(self._best[0])} (trial {self._best[1]})" if self._best else "-"
        parts.append(f"best {self.metric} ({self.mode}) {best}")
        return " | ".join(parts)

    def _draw(self) -> None:
        text = self.headline() + "\n" + format_table(
            list(self._rows.values()),
            ["trial", *group_column(self._rows.values()), "status", "method", *self._params, *RESULT_COLUMNS]
        )
        if self.tty and self._drawn_lines:
            self.stream.write(f"\x1b[{self._drawn_lines}F\x1b[J")  # move up and clear: redraw in place
        self.stream.write(text + "\n")
        self.stream.flush()
        self._drawn_lines = text.count("\n") + 1 if self.tty else 0

    def on_trial_start(self, iteration, trials, trial, **info):
        self._update(trial)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        self._update(trial, result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        # called before Tune marks the trial TERMINATED: say whether it ran to the end or was stopped early
        self._update(trial, trial.last_result, force=True, status=finished_status(trial.last_result))

    def on_trial_error(self, iteration, trials, trial, **info):
        self._update(trial, trial.last_result, force=True, status=ERRORED)

    def on_experiment_end(self, trials, **info):
        for t in trials:
            self._update(t, t.last_result, status=status_of(t.status, t.last_result))
        self._draw()

