"""Reading what Ray Tune writes into an experiment directory, tolerating files a running or crashed sweep left
half-written: each trial's ``params.json`` / ``result.json`` / ``error.txt`` and the ``experiment_state-*.json``
snapshots."""

from __future__ import annotations

import dataclasses
import glob
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from search.fusion import FUSED, member_trials

__all__ = ["TrialFiles", "experiment_state", "read_results", "read_trials"]


@dataclass
class TrialFiles:
    """What one trial directory and the experiment snapshot say about a Tune trial."""

    trial_id: str
    path: Path
    config: dict[str, Any]
    results: list[dict[str, Any]]
    tune_status: str | None
    error: str | None
    start_time: float | None
    known_to_state: bool = False  # an experiment snapshot exists, so a trial missing from it is not Tune's any more
    fused_group: str | None = None  # the fused Tune trial this one is a member of (search/fusion.py)


def read_results(path: Path) -> list[dict[str, Any]]:
    """Tune's result.json (one JSON object per line); a torn last line (a crash mid-write) is skipped."""
    out = []
    file = path / "result.json"
    if file.exists():
        for line in file.read_text().splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def experiment_state(exp: Path) -> dict[str, dict[str, Any]]:
    """trial_id -> {status, relative_logdir, start_time, error_filename} from the newest experiment snapshot."""
    files = sorted(glob.glob(str(exp / "experiment_state-*.json")))
    for file in reversed(files):
        try:
            data = json.loads(Path(file).read_text())
        except (OSError, json.JSONDecodeError):
            continue  # torn snapshot: try the previous one
        out = {}
        for trial_json, runtime_json in data.get("trial_data", []):
            t = json.loads(trial_json) if isinstance(trial_json, str) else trial_json
            r = json.loads(runtime_json) if isinstance(runtime_json, str) else runtime_json
            out[t["trial_id"]] = {
                "status": t.get("status"),
                "relative_logdir": t.get("relative_logdir"),
                "start_time": r.get("start_time"),
                "error_filename": r.get("error_filename"),
            }
        return out
    return {}


def read_trials(exp: Path) -> list[TrialFiles]:
    """Every trial directory of experiment ``exp`` (those with a ``params.json``), sorted by name."""
    state = experiment_state(exp)
    dirs = {p.name: p for p in exp.iterdir() if p.is_dir() and (p / "params.json").exists()}
    trials = []
    for name, path in sorted(dirs.items()):
        results = read_results(path)
        trial_id = results[-1]["trial_id"] if results else name.split("_")[2] if name.count("_") >= 2 else name
        s = state.get(trial_id, {})
        error = None
        error_file = path / "error.txt"
        if error_file.exists():
            lines = [ln for ln in error_file.read_text().splitlines() if ln.strip()]
            error = _error_line(lines)
        try:
            config = json.loads((path / "params.json").read_text())
        except json.JSONDecodeError:
            config = {}
        trial = TrialFiles(trial_id, path, config, results, s.get("status"), error, s.get("start_time"),
                           known_to_state=bool(state))
        trials.extend(_members(trial) if FUSED in config else [trial])
    return trials


def _members(group: TrialFiles) -> list[TrialFiles]:
    """A fused Tune trial as its members: a member dropped early is TERMINATED (stopped, or errored with its own
    divergence) whatever the group did after, and carries no error of the group's."""
    out = []
    for mid, sampled, results in member_trials(group.config, group.results):
        dropped = any(r.get("dropped") for r in results)
        own_error = next((r["error"] for r in results if r.get("error")), None)  # it diverged on its own
        results = [{k: v for k, v in r.items() if k not in ("member", "dropped", "error")} for r in results]
        out.append(dataclasses.replace(
            group, trial_id=mid, config=sampled, results=results, fused_group=group.trial_id,
            tune_status="TERMINATED" if dropped else group.tune_status,
            error=own_error or (None if dropped else group.error)))
    return out


def _error_line(lines: list[str]) -> str | None:
    """The most informative line of a Tune error file: the last ``SomeError: message`` line."""
    for line in reversed(lines):
        head = line.split(":", 1)[0].strip()
        if head.endswith(("Error", "Exception")) and ":" in line:
            return line.strip()
    return lines[-1].strip() if lines else None
