"""Population-based training (``--scheduler pbt|pb2``): the schedule of settings a trial's weights were trained with.

A PBT trial reports its perturbable settings (``lr``, ``temperature``, ...) with every epoch, so they are columns of
epochs.parquet; when it takes over another trial's checkpoint, its first report after that carries ``cloned_from``
(the donor's trial id). The weights a trial ends with were therefore trained by the donor's epochs up to the clone,
then by its own: :func:`settings_history` follows that lineage back to epoch 1. The lineage also travels inside
every checkpoint and the last epoch reports it whole (``lineage``, JSON), since the result rows of a trial that was
resumed after a driver kill may lack its epochs before the kill (measured).
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import pandas as pd

from trainables.config import yaml_flow

__all__ = ["replay_args", "settings_history"]


def settings_history(epochs: pd.DataFrame, trial_id: str, settings: Sequence[str]) -> pd.DataFrame:
    """One row per epoch 1..E of the lineage of ``trial_id``'s final weights: ``epoch``, the ``settings`` in effect
    and ``trial`` (whose run trained that epoch). From the ``lineage`` its last epoch reported (the history that
    travelled with the weights through every clone and resume) when there is one; else rebuilt from the rows, in
    report order, a donor's part being its history up to its last report of the epoch it was cloned at."""
    own = epochs[epochs["trial_id"].astype(str) == trial_id]
    if "lineage" in own and own["lineage"].notna().any():
        entries = json.loads(str(own["lineage"].dropna().iloc[-1]))
        return pd.DataFrame([{"epoch": int(e["epoch"]), **{k: e.get(k) for k in settings}, "trial": e["trial"]}
                             for e in entries], columns=["epoch", *settings, "trial"])
    rows: dict[int, dict] = {}
    tid, upto = trial_id, None
    seen = set()
    while tid is not None and tid not in seen:
        seen.add(tid)
        own = epochs[epochs["trial_id"].astype(str) == tid].reset_index(drop=True)
        if upto is not None:
            last = own.index[own["epoch"] == upto]
            own = own.iloc[: last.max() + 1] if len(last) else own.iloc[:0]
        clones = own.index[own["cloned_from"].notna()] if "cloned_from" in own else []
        start = clones.max() if len(clones) else 0
        for r in own.iloc[start:].itertuples():
            rows.setdefault(int(r.epoch), {"epoch": int(r.epoch), **{k: getattr(r, k) for k in settings},
                                           "trial": tid})
        if len(clones):
            tid, upto = str(own.loc[start, "cloned_from"]), int(own.loc[start, "epoch"]) - 1
        else:
            tid = None
    return pd.DataFrame([rows[e] for e in sorted(rows)], columns=["epoch", *settings, "trial"])


def replay_args(epochs: pd.DataFrame, trial_id: str, settings: Sequence[str]) -> list[str]:
    """``csweep train`` arguments that replay the lineage of ``trial_id``: ``--set`` for the epoch-1 values of
    ``settings``, then one ``--schedule EPOCH:KEY=VALUE,...`` per later change (add the trial's other settings)."""
    rows = settings_history(epochs, trial_id, settings).to_dict("records")
    if not rows:
        return []

    def text(v):
        return yaml_flow(v.item() if hasattr(v, "item") else v)

    args, previous = [], {k: rows[0][k] for k in settings}
    for k, v in previous.items():
        args += ["--set", f"{k}={text(v)}"]
    for r in rows[1:]:
        change = {k: r[k] for k in settings if r[k] != previous[k]}
        if change:
            args += ["--schedule", f"{int(r['epoch'])}:" + ",".join(f"{k}={text(v)}" for k, v in change.items())]
            previous.update(change)
    return args
