"""Figures of the tables (matplotlib, rendered off-screen): the ones ``csweep report`` embeds and ``csweep tables
--plots`` writes. Each function returns a ``matplotlib.figure.Figure``; :func:`save` writes it as PNG.

Conventions shared by every figure: a trial keeps one colour in every panel of a sweep (:func:`trial_colors`);
statuses are told apart by line style and marker (``completed`` solid with dots, ``stopped`` dashed and ending in an
x, ``errored``/``diverged`` dotted); every epoch is a marker, so a trial stopped after one epoch is a visible point.
Lines are drawn as collections, so a 500-trial sweep renders in well under a second per figure.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from search.spec import COMPLETED, DIVERGED, ERRORED, STOPPED

__all__ = [
    "ablation_heatmap",
    "best_so_far",
    "importances",
    "learning_curves",
    "method_comparison",
    "metric_vs_params",
    "parallel_coordinates",
    "pareto_front",
    "save",
    "trial_colors",
]

#: status -> (line style, marker, marker size)
STYLE = {
    COMPLETED: ("-", "o", 9),
    STOPPED: ("--", "x", 22),
    ERRORED: (":", "s", 12),
    DIVERGED: (":", "s", 12),
}
OTHER_STYLE = ("-.", "^", 12)  # running, abandoned, ...


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: str | os.PathLike, *, dpi: int = 100) -> Path:
    """Write ``fig`` as a PNG (no software metadata) and close it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, metadata={"Software": None})
    _plt().close(fig)
    return path


def trial_colors(trial_ids: Sequence[str]) -> dict[str, tuple]:
    """One distinct colour per trial, in the given order (tab10/tab20 for few trials, a cyclic map for many)."""
    plt = _plt()
    n = len(trial_ids)
    if n <= 10:
        colors = [plt.get_cmap("tab10")(i) for i in range(n)]
    elif n <= 20:
        colors = [plt.get_cmap("tab20")(i) for i in range(n)]
    else:
        cmap = plt.get_cmap("turbo")
        colors = [cmap(0.05 + 0.9 * ((i * 0.618034) % 1.0)) for i in range(n)]  # golden-ratio spread: neighbours differ
    return dict(zip(trial_ids, colors))


def _trial_order(trials: pd.DataFrame) -> pd.DataFrame:
    """Trials in the order they started (trial id breaks ties and stands in when times are missing)."""
    keys = [k for k in ("start_time", "trial_id") if k in trials]
    return trials.sort_values(keys, na_position="last", kind="stable") if keys else trials


def _status_handles(statuses: Sequence[str]):
    from matplotlib.lines import Line2D

    handles = []
    for s in statuses:
        ls, marker, _ = STYLE.get(s, OTHER_STYLE)
        handles.append(Line2D([], [], color="0.3", linestyle=ls, marker=marker, markersize=5, label=s))
    return handles


def _statuses(trials: pd.DataFrame) -> dict[str, str]:
    if "status" not in trials:
        return {}
    return dict(zip(trials["trial_id"].astype(str), trials["status"].astype(str)))


def learning_curves(
    epochs: pd.DataFrame,
    trials: pd.DataFrame | None = None,
    *,
    metrics: Sequence[str] = ("knn_top1", "train_loss"),
    title: str = "",
    max_labelled: int = 12,
):
    """One row of panels per method, one column per metric: each trial a line with a marker at every epoch.

    Colours follow the trial (the same in every panel), line style and final marker the status (legend); with at
    most ``max_labelled`` trials the legend names them too. Pass one sweep's tables: several sweeps mix trial ids.
    """
    plt = _plt()
    from matplotlib.collections import LineCollection

    if trials is None or trials.empty:
        trials = epochs.drop_duplicates("trial_id")[["trial_id", "method"]].assign(status="")
    trials = _trial_order(trials)
    colors = trial_colors(list(trials["trial_id"].astype(str)))
    status = _statuses(trials)
    metrics = [m for m in metrics if m in epochs and epochs[m].notna().any()] or ["knn_top1"]
    methods = sorted(epochs["method"].dropna().astype(str).unique()) or [""]
    fig, axes = plt.subplots(
        len(methods), len(metrics), figsize=(4.6 * len(metrics) + 1.8, 3.0 * len(methods) + 0.4), squeeze=False
    )
    data = epochs.sort_values(["trial_id", "epoch"])
    data = data.assign(trial_id=data["trial_id"].astype(str), method=data["method"].astype(str))
    for r, method in enumerate(methods):
        sub = data[data["method"] == method]
        groups = [(tid, g) for tid, g in sub.groupby("trial_id", sort=False)]
        for c, metric in enumerate(metrics):
            ax = axes[r][c]
            by_style: dict[str, list] = {}
            for tid, g in groups:
                xy = g[["epoch", metric]].dropna().to_numpy(dtype=float)
                if len(xy):
                    by_style.setdefault(status.get(tid, ""), []).append((tid, xy))
            for st, items in by_style.items():
                ls, marker, size = STYLE.get(st, OTHER_STYLE)
                ax.add_collection(LineCollection([xy for _, xy in items], colors=[colors[t] for t, _ in items],
                                                 linestyles=ls, linewidths=1.2, alpha=0.85))
                pts = np.concatenate([xy for _, xy in items])
                cols = [colors[t] for t, xy in items for _ in range(len(xy))]
                ax.scatter(pts[:, 0], pts[:, 1], c=cols, s=7, zorder=3)
                last = np.array([xy[-1] for _, xy in items])
                ax.scatter(last[:, 0], last[:, 1], c=[colors[t] for t, _ in items], marker=marker, s=size * 2,
                           zorder=4, linewidths=1.5)
            ax.autoscale_view()
            ax.set(xlabel="epoch", ylabel=metric, title=f"{method}: {metric}" if method else metric)
            ax.grid(alpha=0.3)
            if len(sub) and sub["epoch"].max() <= 12:
                ax.set_xticks(range(1, int(sub["epoch"].max()) + 1))
    present = [s for s in (COMPLETED, STOPPED, ERRORED, DIVERGED) if s in set(status.values())]
    present += sorted(set(status.values()) - set(present) - {""})
    handles = _status_handles(present)
    if len(trials) <= max_labelled:
        from matplotlib.lines import Line2D

        handles += [Line2D([], [], color=colors[t], linewidth=2, label=f"{t} ({status.get(t, '')})")
                    for t in colors]
    fig.legend(handles=handles, loc="upper right", fontsize=7, title="status / trial", title_fontsize=8,
               frameon=False)
    if title:
        fig.suptitle(title, x=0.02, ha="left")
    fig.tight_layout(rect=(0, 0, 1 - 1.7 / fig.get_figwidth(), 1))
    return fig


def best_so_far(trials: pd.DataFrame, *, metric: str, mode: str = "max", title: str = ""):
    """Each trial's ``metric`` in start order (colour and marker by status) and the best value so far."""
    plt = _plt()
    data = _trial_order(trials).reset_index(drop=True)
    fig, ax = plt.subplots(figsize=(7, 3.4))
    x = np.arange(1, len(data) + 1)
    y = data[metric].to_numpy(dtype=float) if metric in data else np.full(len(data), np.nan)
    st = data["status"].astype(str).to_numpy() if "status" in data else np.array([""] * len(data))
    for s in pd.unique(st):
        mask = st == s
        _, marker, _ = STYLE.get(s, OTHER_STYLE)
        ax.scatter(x[mask], y[mask], marker=marker, s=22, label=s, alpha=0.8)
    filled = pd.Series(y).fillna(-np.inf if mode == "max" else np.inf)
    best = (filled.cummax() if mode == "max" else filled.cummin()).replace([np.inf, -np.inf], np.nan)
    ax.step(x, best, where="post", color="k", linewidth=1.5, label=f"best so far ({mode})")
    ax.set(xlabel="trial (in start order)", ylabel=metric, title=title or f"best {metric} so far")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return fig


def _axis_values(s: pd.Series) -> tuple[np.ndarray, list[float], list[str]]:
    """A setting mapped to [0, 1] (log scale for positive ranges over a decade, codes for categories),
    with tick positions and labels."""
    if pd.api.types.is_bool_dtype(s) or not pd.api.types.is_numeric_dtype(s):
        cats = sorted(s.dropna().astype(str).unique())
        codes = s.astype(str).map({c: i for i, c in enumerate(cats)}).astype(float)
        span = max(len(cats) - 1, 1)
        return (codes / span).to_numpy(), [i / span for i in range(len(cats))], cats
    v = s.astype(float)
    lo, hi = v.min(), v.max()
    if pd.isna(lo) or lo == hi:
        return np.where(v.notna(), 0.5, np.nan), [0.5], [f"{lo:.3g}" if pd.notna(lo) else ""]
    log = lo > 0 and hi / lo > 10
    f = np.log10 if log else (lambda a: a)
    norm = ((f(v) - f(lo)) / (f(hi) - f(lo))).to_numpy()
    return norm, [0.0, 1.0], [f"{lo:.3g}", f"{hi:.3g}"]


def parallel_coordinates(trials: pd.DataFrame, params: Sequence[str], *, metric: str, mode: str = "max",
                         title: str = ""):
    """One vertical axis per sampled setting and one for ``metric``; one line per trial coloured by ``metric``
    (the best trials drawn on top)."""
    plt = _plt()
    from matplotlib.collections import LineCollection

    params = [p for p in params if p in trials and trials[p].notna().any()]
    data = trials.dropna(subset=[metric]) if metric in trials else trials.iloc[:0]
    axes_names = [*params, metric]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(axes_names) + 2), 3.8))
    if data.empty:
        ax.text(0.5, 0.5, f"no trial reports {metric}", ha="center", va="center")
        ax.set_axis_off()
        return fig
    columns, ticks = [], []
    for p in axes_names:
        norm, pos, labels = _axis_values(data[p])
        columns.append(norm)
        ticks.append((pos, labels))
    ys = np.column_stack(columns)
    order = np.argsort(data[metric].to_numpy(dtype=float))
    if mode == "min":
        order = order[::-1]  # best last, so on top
    xs = np.arange(len(axes_names), dtype=float)
    segs = [np.column_stack([xs, ys[i]]) for i in order]
    values = data[metric].to_numpy(dtype=float)[order]
    cmap = "viridis" if mode == "max" else "viridis_r"
    lc = LineCollection(segs, array=values, cmap=cmap, linewidths=1.0, alpha=0.8)
    ax.add_collection(lc)
    for i, (pos, labels) in enumerate(ticks):
        ax.axvline(i, color="0.5", linewidth=0.8)
        for p, lab in zip(pos, labels):
            ax.text(i + 0.04, p, lab, fontsize=7, va="center", ha="left",
                    bbox={"facecolor": "white", "alpha": 0.7, "edgecolor": "none", "pad": 0.5})
    ax.set_xlim(-0.2, len(axes_names) - 0.6)
    ax.set_ylim(-0.08, 1.08)
    ax.set_xticks(xs, axes_names, rotation=20, ha="right")
    ax.set_yticks([])
    cb = fig.colorbar(lc, ax=ax)
    cb.set_label(metric)
    ax.set_title(title or f"sampled settings coloured by {metric}")
    fig.tight_layout()
    return fig


def importances(table: pd.DataFrame, *, title: str = ""):
    """Optuna's parameter importances (the tables' ``importances``): one bar chart per method."""
    plt = _plt()
    methods = sorted(table["method"].dropna().astype(str).unique())
    fig, axes = plt.subplots(1, max(1, len(methods)), figsize=(4.2 * max(1, len(methods)), 0.5 + 0.45 * max(
        [int((table["method"].astype(str) == m).sum()) for m in methods] or [2]) + 1), squeeze=False)
    for ax, method in zip(axes[0], methods):
        g = table[table["method"].astype(str) == method].sort_values("importance")
        ax.barh(g["param"].astype(str), g["importance"], color="tab:blue")
        for y, v in enumerate(g["importance"]):
            ax.text(v, y, f" {v:.2f}", va="center", fontsize=7)
        ax.set(title=f"{method}: importance", xlabel="importance (fANOVA, sums to 1)", xlim=(0, 1.15))
    if title:
        fig.suptitle(title, x=0.02, ha="left")
    fig.tight_layout()
    return fig


def metric_vs_params(trials: pd.DataFrame, params: Sequence[str], *, metric: str = "best_knn_top1", title: str = ""):
    """Slice plots: ``metric`` against each setting (log x for positive ranges over a decade), colour by method,
    hollow markers for trials that did not complete; one shared legend."""
    plt = _plt()
    params = [p for p in params if p in trials and trials[p].notna().any()] or ["epochs_run"]
    ncols = min(4, len(params))
    nrows = math.ceil(len(params) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.8 * ncols + 1.6, 3.1 * nrows), squeeze=False)
    methods = sorted(trials["method"].dropna().astype(str).unique())
    mcolors = {m: _plt().get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    done = trials["status"].astype(str) == COMPLETED if "status" in trials else pd.Series(True, index=trials.index)
    for ax, p in zip(axes.flat, params):
        x = trials[p]
        numeric = pd.api.types.is_numeric_dtype(x) and not pd.api.types.is_bool_dtype(x)
        for method in methods:
            for full in (True, False):
                m = (trials["method"].astype(str) == method) & (done == full) & x.notna()
                if not m.any():
                    continue
                xv = x[m] if numeric else x[m].astype(str)
                kw = {"color": mcolors[method]} if full else {"facecolors": "none", "edgecolors": mcolors[method]}
                ax.scatter(xv, trials.loc[m, metric], s=18, **kw)
        if numeric and (x.dropna() > 0).all() and x.max() / max(x.min(), 1e-12) > 10:
            ax.set_xscale("log")
        elif numeric:
            from matplotlib.ticker import MaxNLocator

            ax.xaxis.set_major_locator(MaxNLocator(4))
        ax.set(xlabel=p, ylabel=metric, title=f"{metric} vs {p}")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(params):]:
        ax.set_axis_off()
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=mcolors[m], marker="o", linestyle="", label=m) for m in methods]
    handles += [Line2D([], [], color="0.3", marker="o", linestyle="", label=COMPLETED),
                Line2D([], [], color="0.3", marker="o", markerfacecolor="none", linestyle="", label="not completed")]
    fig.legend(handles=handles, loc="upper right", fontsize=7, frameon=False, title="method / status",
               title_fontsize=8)
    if title:
        fig.suptitle(title, x=0.02, ha="left")
    fig.tight_layout(rect=(0, 0, 1 - 1.5 / fig.get_figwidth(), 1))
    return fig


def pareto_front(pareto: pd.DataFrame, trials: pd.DataFrame, *, x: str, y: str,
                 modes: Mapping[str, str] | None = None, title: str = ""):
    """All trials (grey) and the Pareto-optimal ones (red, joined in order) in the plane of two objectives."""
    plt = _plt()
    modes = modes or {}
    fig, ax = plt.subplots(figsize=(5.5, 4))
    if x in trials and y in trials:
        ax.scatter(trials[x], trials[y], c="0.6", s=16, label="trials")
    if x in pareto and y in pareto and len(pareto):
        front = pareto.sort_values(x)
        ax.plot(front[x], front[y], "o-", c="tab:red", label=f"Pareto front ({len(front)})")
    ax.set(xlabel=f"{x} ({modes.get(x, '')})".replace(" ()", ""), ylabel=f"{y} ({modes.get(y, '')})".replace(" ()", ""),
           title=title or "Pareto front")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def method_comparison(trials: pd.DataFrame, *, metric: str, by: Sequence[str] = ("method",), title: str = ""):
    """Mean ± 95 % CI (t distribution, over seeds) of each group's best configuration, with every seed as a dot.

    The best configuration of a group is the one with the best mean; trials of one configuration share ``sampled``
    values and differ in ``seed``.
    """
    from scipy import stats

    plt = _plt()
    rows = []
    data = trials.dropna(subset=[metric]) if metric in trials else trials.iloc[:0]
    by = [b for b in by if b in data]
    for key, g in data.groupby(by, observed=True, sort=True) if by else []:
        params = sorted({c for s in g["sampled"].dropna() for c in str(s).split(",") if c and c in g} - set(by)) \
            if "sampled" in g else []
        configs = g.groupby(params, dropna=False, observed=True) if params else [((), g)]
        best = max((cg[metric].to_numpy(dtype=float) for _, cg in configs), key=lambda v: v.mean())
        n = len(best)
        half = float(stats.t.ppf(0.975, n - 1) * best.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0
        label = " / ".join(map(str, key if isinstance(key, tuple) else (key,)))
        rows.append((label, best, half))
    fig, ax = plt.subplots(figsize=(max(4.5, 1.1 * len(rows) + 2), 3.6))
    for i, (_label, values, half) in enumerate(rows):
        ax.errorbar(i, values.mean(), yerr=half, fmt="o", color="tab:blue", capsize=5, markersize=7)
        jitter = (np.arange(len(values)) - (len(values) - 1) / 2) * 0.06
        ax.scatter(i + 0.18 + jitter, values, s=12, color="0.4", zorder=3)
        spread = f" ± {half:.3f}" if len(values) > 1 else ""
        ax.annotate(f"{values.mean():.3f}{spread} (n={len(values)})", (i, values.mean()),
                    textcoords="offset points", xytext=(0, 10), ha="center", fontsize=7)
    ax.set_xticks(range(len(rows)), [r[0] for r in rows], rotation=15, ha="right")
    ax.set_xlim(-0.6, len(rows) - 0.4)
    ax.margins(y=0.2)
    ax.set(ylabel=metric, title=title or f"best configuration per {' / '.join(by)}: mean ± 95 % CI over seeds")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return fig


def _luminance(rgba) -> float:
    def channel(c):
        return c / 12.92 if c <= 0.03928 else ((c + 0.055) / 1.055) ** 2.4

    r, g, b = (channel(c) for c in rgba[:3])
    return 0.2126 * r + 0.7152 * g + 0.0722 * b


def ablation_heatmap(pivot: pd.DataFrame, *, metric: str = "", title: str = ""):
    """Heatmap of an :func:`analysis.ablation` pivot's means, each cell annotated ``mean ± std (n)`` in black or
    white by the cell's luminance; the colour bar is labelled with the metric."""
    plt = _plt()
    mean, std, n = pivot["mean"], pivot["std"], pivot["n"]
    values = mean.to_numpy(dtype=float)
    fig, ax = plt.subplots(figsize=(2.6 + 1.35 * mean.shape[1], 1.5 + 0.62 * mean.shape[0]))
    cmap = plt.get_cmap("viridis")
    finite = values[np.isfinite(values)]
    vmin, vmax = (finite.min(), finite.max()) if len(finite) else (0, 1)
    im = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, aspect="auto", vmin=vmin, vmax=vmax)
    ax.set_xticks(range(mean.shape[1]), [_label(c) for c in mean.columns], rotation=30, ha="right")
    ax.set_yticks(range(mean.shape[0]), [_label(i) for i in mean.index])
    for i in range(mean.shape[0]):
        for j in range(mean.shape[1]):
            m, s, k = mean.iat[i, j], std.iat[i, j], n.iat[i, j]
            if pd.notna(m):
                rgba = cmap(im.norm(m))
                ax.text(j, i, f"{m:.3f}" + (f"\n±{s:.3f}" if pd.notna(s) else "") + f" ({int(k)})",
                        ha="center", va="center", fontsize=7, color="black" if _luminance(rgba) > 0.35 else "white")
    ax.set(title=title or metric, xlabel=" / ".join(map(str, mean.columns.names)),
           ylabel=" / ".join(map(str, mean.index.names)))
    cb = fig.colorbar(im, ax=ax)
    cb.set_label(f"mean {metric}".strip())
    fig.tight_layout()
    return fig


def _label(v) -> str:
    if isinstance(v, tuple):
        return " / ".join(_label(x) for x in v)
    return f"{v:.3g}" if isinstance(v, float) else str(v)
