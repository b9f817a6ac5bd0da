"""PNG plots from the tables: learning curves per method, metric vs each parameter, Pareto front, ablation heatmap."""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

__all__ = ["ablation_heatmap", "learning_curves", "metric_vs_params", "pareto_front"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def learning_curves(epochs: pd.DataFrame, path: str | os.PathLike, *, metric: str = "knn_top1") -> Path:
    """One panel per method: ``metric`` vs epoch, one line per trial."""
    plt = _plt()
    methods = sorted(epochs["method"].dropna().astype(str).unique())
    fig, axes = plt.subplots(1, max(1, len(methods)), figsize=(4 * max(1, len(methods)), 3), squeeze=False)
    for ax, method in zip(axes[0], methods):
        for _, g in epochs[epochs["method"].astype(str) == method].groupby("trial_id", observed=True):
            ax.plot(g["epoch"], g[metric], alpha=0.7)
        ax.set(title=method, xlabel="epoch", ylabel=metric)
    fig.tight_layout()
    return _save(fig, path)


def metric_vs_params(
    trials: pd.DataFrame, params: list[str], path: str | os.PathLike, *, metric: str = "best_knn_top1"
) -> Path:
    """Scatter of ``metric`` against each parameter (log x for positive ranges spanning > 2 decades)."""
    plt = _plt()
    params = [p for p in params if p in trials] or ["epochs_run"]
    fig, axes = plt.subplots(1, len(params), figsize=(4 * len(params), 3), squeeze=False)
    for ax, p in zip(axes[0], params):
        for method, g in trials.groupby("method", observed=True):
            x = g[p]
            if pd.api.types.is_numeric_dtype(x):
                ax.scatter(x, g[metric], label=str(method), s=14)
                if (x > 0).all() and x.max() / max(x.min(), 1e-12) > 100:
                    ax.set_xscale("log")
            else:
                ax.scatter(x.astype(str), g[metric], label=str(method), s=14)
        ax.set(xlabel=p, ylabel=metric)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def pareto_front(pareto: pd.DataFrame, trials: pd.DataFrame, x: str, y: str, path: str | os.PathLike) -> Path:
    """All trials (grey) and the Pareto-optimal ones (red) in the plane of two objectives."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    if x in trials and y in trials:
        ax.scatter(trials[x], trials[y], c="0.7", s=12, label="trials")
    if x in pareto and y in pareto:
        front = pareto.sort_values(x)
        ax.plot(front[x], front[y], "o-", c="tab:red", label="Pareto front")
    ax.set(xlabel=x, ylabel=y)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def ablation_heatmap(pivot: pd.DataFrame, path: str | os.PathLike, *, title: str = "") -> Path:
    """Heatmap of an ``analysis.ablation`` pivot's means, annotated with mean ± std."""
    plt = _plt()
    mean, std = pivot["mean"], pivot["std"]
    fig, ax = plt.subplots(figsize=(1.6 + 1.3 * mean.shape[1], 1.2 + 0.6 * mean.shape[0]))
    im = ax.imshow(mean.to_numpy(dtype=float), cmap="viridis", aspect="auto")
    ax.set_xticks(range(mean.shape[1]), [str(c) for c in mean.columns], rotation=30, ha="right")
    ax.set_yticks(range(mean.shape[0]), [str(i) for i in mean.index])
    for i in range(mean.shape[0]):
        for j in range(mean.shape[1]):
            m, s = mean.iat[i, j], std.iat[i, j]
            if pd.notna(m):
                ax.text(
                    j,
                    i,
                    f"{m:.3f}" + (f"\n±{s:.3f}" if pd.notna(s) else ""),
                    ha="center",
                    va="center",
                    color="w",
                    fontsize=7,
                )
    ax.set(title=title, xlabel=" / ".join(map(str, mean.columns.names)), ylabel=" / ".join(map(str, mean.index.names)))
    fig.colorbar(im, ax=ax)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path
