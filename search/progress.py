"""A concise live table of a sweep's trials (a Tune Callback), and the leaderboard printed at the end.

On a terminal the table redraws in place at most once a second; otherwise (CI, files) it is printed when a trial
finishes and at most every ``interval_s`` seconds, so logs stay short. Ray's own output goes to its log files.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TextIO

from ray.tune import Callback

__all__ = ["ProgressTable", "finished_status", "format_table", "leaderboard_rows"]

STATUS = {"PENDING": "pending", "RUNNING": "running", "TERMINATED": "done", "ERROR": "error", "PAUSED": "paused"}
HIDDEN = {"dataset", "data_dir", "seed"}


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if v is None:
        return "-"
    return str(v)


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """Plain fixed-width table of ``rows`` (dicts) with the given column order."""
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def finished_status(result: Mapping[str, Any] | None) -> str:
    """``done`` when the trial ran to its last epoch (final probes reported), else ``stopped`` (early stopping)."""
    return "done" if (result or {}).get("finished") else "stopped"


def trial_row(
    trial_id: str, config: Mapping[str, Any], result: Mapping[str, Any] | None, status: str, params: Iterable[str]
) -> dict[str, Any]:
    result = result or {}
    row = {"trial": trial_id, "status": STATUS.get(status, status.lower()), "method": config.get("method")}
    for p in params:
        row[p] = config.get(p)
    for m in ("epoch", "knn_top1", "linear_top1"):
        row[m] = result.get(m)
    return row


class ProgressTable(Callback):
    """Tune callback: one row per trial (id, status, method, sampled parameters, epoch, knn_top1, linear_top1)."""

    def __init__(self, *, stream: TextIO | None = None, interval_s: float = 30.0, fixed_method: str | None = None):
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
        config = {"method": self.fixed_method, **{k: v for k, v in trial.config.items() if not k.startswith("__")}}
        for k in config:
            if k not in self._params and k != "method" and k not in HIDDEN:
                self._params.append(k)
        previous = self._rows.get(trial.trial_id, {})
        merged = result if result is not None else {k: previous.get(k) for k in ("epoch", "knn_top1", "linear_top1")}
        self._rows[trial.trial_id] = trial_row(trial.trial_id, config, merged, status or trial.status, self._params)
        now = time.monotonic()
        if force or now - self._last >= self.interval_s:
            self._draw()
            self._last = now

    def _draw(self) -> None:
        text = format_table(
            list(self._rows.values()), ["trial", "status", "method", *self._params, "epoch", "knn_top1", "linear_top1"]
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
        self._update(trial, trial.last_result, force=True, status="error")

    def on_experiment_end(self, trials, **info):
        for t in trials:
            status = (
                "error" if t.status == "ERROR" else finished_status(t.last_result) if t.status == "TERMINATED" else None
            )
            self._update(t, t.last_result, status=status)
        self._draw()


def leaderboard_rows(trials: Iterable[Mapping[str, Any]], metric: str, mode: str) -> list[dict[str, Any]]:
    """Rows sorted best-first by ``metric`` (trials without it last)."""
    rows = list(trials)
    sign = -1.0 if mode == "max" else 1.0
    return sorted(rows, key=lambda r: (r.get(metric) is None, sign * (r.get(metric) or 0.0)))
