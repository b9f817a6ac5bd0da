"""The pandas API: load the tables a ``csweep tables`` run wrote, and pivot ablations."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from search.spec import COMPLETED

__all__ = ["Tables", "ablation", "bin_setting", "format_ablation", "load"]


@dataclass
class Tables:
    """All tables of one output directory (every sweep in it), with ``sweep`` as a categorical column."""

    trials: pd.DataFrame
    epochs: pd.DataFrame
    leaderboard: pd.DataFrame
    importances: pd.DataFrame
    pareto: pd.DataFrame
    early_rank: pd.DataFrame  # per epoch: rung metric vs final objective (analysis/early_rank.py)


def _read(directory: Path) -> pd.DataFrame:
    if not directory.is_dir() or not any(directory.glob("sweep=*/*.parquet")):
        return pd.DataFrame()
    return pd.read_parquet(directory)


def load(out: str | os.PathLike) -> Tables:
    """Read ``out/<table>/sweep=*/`` (what ``csweep tables --out OUT`` wrote) into DataFrames."""
    out = Path(out)
    if not out.is_dir():
        raise FileNotFoundError(f"no tables directory at {out}; run `csweep tables NAME --out {out}` first")
    return Tables(**{name: _read(out / name) for name in ("trials", "epochs", "leaderboard", "importances", "pareto",
                                                                  "early_rank")})


def ablation(
    df: pd.DataFrame,
    *,
    rows: str | Sequence[str],
    cols: str | Sequence[str],
    metric: str,
    statuses: Sequence[str] | None = (COMPLETED,),
    bins: int | None = None,
) -> pd.DataFrame:
    """Pivot ``metric`` over ``rows`` x ``cols`` (e.g. selfcon_pos x selfcon_size, gamma x gamma_scaling_steps).

    Returns a frame indexed by ``rows`` whose columns are a MultiIndex (statistic, *cols values) with statistics
    ``mean``, ``std`` (over trials, e.g. seeds; NaN for one trial) and ``n``. ``statuses`` filters trials first
    (default: completed only; None keeps every trial that reported the metric). With ``bins``, a float setting
    with more distinct values than ``bins`` is cut into that many ranges (:func:`bin_setting`).
    """
    rows = [rows] if isinstance(rows, str) else list(rows)
    cols = [cols] if isinstance(cols, str) else list(cols)
    missing = [c for c in [*rows, *cols, metric] if c not in df.columns]
    if missing:
        raise KeyError(f"columns {missing} are not in the table; it has {sorted(df.columns)}")
    if not pd.api.types.is_numeric_dtype(df[metric]) or pd.api.types.is_bool_dtype(df[metric]):
        raise ValueError(f"`metric` must be a numeric column, but got metric={metric!r} (of type {df[metric].dtype})")
    data = df if statuses is None else df[df["status"].astype(str).isin(statuses)]
    data = data.dropna(subset=[metric])
    keys = [*rows, *cols]
    data = data.assign(**{k: _key(data[k], bins) for k in keys})
    return data.pivot_table(
        index=rows, columns=cols, values=metric, aggfunc=["mean", "std", "count"], observed=True, dropna=False
    ).rename(columns={"count": "n"}, level=0)


def _key(s: pd.Series, bins: int | None) -> pd.Series:
    if bins and pd.api.types.is_float_dtype(s) and s.nunique() > bins:
        binned = bin_setting(s, bins=bins)
        return binned.cat.add_categories("NA").fillna("NA") if binned.isna().any() else binned
    return s.astype(object).where(s.notna(), "NA")


def _edge(v: float) -> str:
    return f"{v:.2g}" if v != 0 else "0"


def bin_setting(s: pd.Series, *, bins: int = 5) -> pd.Series:
    """A continuous setting as an ordered categorical of ``bins`` ranges labelled like ``0.05-0.1``: log-spaced
    edges for positive values spanning over a decade, linear otherwise; edges rounded to 2 significant digits."""
    v = s.astype(float)
    lo, hi = v.min(), v.max()
    if pd.isna(lo) or lo == hi:
        return v.map(lambda x: _edge(x) if pd.notna(x) else None).astype("category")
    if lo > 0 and hi / lo > 10:
        edges = np.geomspace(lo, hi, bins + 1)
    else:
        edges = np.linspace(lo, hi, bins + 1)
    edges = np.unique([float(f"{e:.2g}") for e in edges])
    edges[0], edges[-1] = min(edges[0], lo), max(edges[-1], hi)
    labels = [f"{_edge(a)}-{_edge(b)}" for a, b in zip(edges[:-1], edges[1:])]
    return pd.cut(v, edges, labels=labels, include_lowest=True, duplicates="drop")


def format_ablation(pivot: pd.DataFrame, *, digits: int = 4) -> pd.DataFrame:
    """Cells as ``mean ± std (n)`` strings, for printing."""
    mean, std, n = pivot["mean"], pivot["std"], pivot["n"]

    def cell(m, s, k):
        if pd.isna(m):
            return ""
        spread = f" ± {s:.{digits}f}" if pd.notna(s) else ""
        return f"{m:.{digits}f}{spread} ({int(k)})"

    return pd.DataFrame(
        [
            [cell(mean.iat[i, j], std.iat[i, j], n.iat[i, j]) for j in range(mean.shape[1])]
            for i in range(mean.shape[0])
        ],
        index=mean.index,
        columns=mean.columns,
    )
