"""``csweep report``: one self-contained HTML page of one or more sweeps, with its figures as PNG files beside it.

The page opens offline: figures are embedded as base64 PNG, the style sheet is inline, and nothing refers to a URL.
For each sweep it shows status counts and time, the trials ranked by the objective (each with the ``csweep train``
command that reruns it), the best configuration as YAML (also written as ``best_config.yaml``), learning curves,
the best value so far, parallel coordinates, parameter importances, slice plots, the Pareto front (multi-objective),
the best configuration per method with a 95 % CI over seeds, and ablation pivots; several sweeps sit side by side.

>>> from analysis import build_tables, write_report
>>> write_report([build_tables("results/NAME")], "report")      # report/report.html, report/*.png
"""

from __future__ import annotations

import base64
import html
import io
import math
import os
import shlex
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from analysis import plots
from analysis.api import ablation
from analysis.tables import SweepTables
from search.spec import COMPLETED
from trainables.config import yaml_flow

__all__ = ["best_config", "figures", "rank_trials", "train_command", "write_report"]

#: Settings never put on a ``csweep train`` command line (where the data lives is the reader's own business).
NOT_ON_COMMAND = {"method", "data_dir"}
TOP_TRIALS = 20


def _objective(t: SweepTables) -> tuple[str, str]:
    """The metric trials are ranked by (the first objective when it is a trials column) and its mode."""
    metric, mode = t.objective[0] if t.objective else ("knn_top1", "max")
    if metric not in t.trials and len(t.leaderboard) and "metric" in t.leaderboard:
        metric = str(t.leaderboard["metric"].iloc[0])
    return (metric if metric in t.trials else "best_knn_top1"), mode


def _sampled(trials: pd.DataFrame) -> list[str]:
    if "sampled" not in trials:
        return []
    names = {c for s in trials["sampled"].dropna() for c in str(s).split(",") if c}
    return sorted(c for c in names - {"method"} if c in trials and trials[c].notna().any())


def _native(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if v is pd.NA or v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return v


def rank_trials(trials: pd.DataFrame, *, metric: str, mode: str = "max") -> pd.DataFrame:
    """Trials best first by ``metric``; on a tie a completed trial ranks above a stopped one, then more epochs
    above fewer; trials without the metric come last."""
    if metric not in trials:
        return trials.iloc[:0]
    key = trials[metric].astype(float) * (-1.0 if mode == "max" else 1.0)
    order = pd.DataFrame({
        "missing": trials[metric].isna(),
        "key": key.fillna(0.0),
        "incomplete": trials["status"].astype(str) != COMPLETED if "status" in trials else False,
        "epochs": -trials["epochs_run"].fillna(0).astype(float) if "epochs_run" in trials else 0.0,
    }, index=trials.index)
    return trials.loc[order.sort_values(["missing", "key", "incomplete", "epochs"], kind="stable").index]


def _settings(row: pd.Series, fixed: dict[str, Any]) -> dict[str, Any]:
    sampled = [c for c in str(row.get("sampled") or "").split(",") if c and c != "method"]
    out = {k: v for k, v in fixed.items() if k not in NOT_ON_COMMAND}
    for k in sampled:
        v = _native(row.get(k))
        if v is not None:
            out[k] = v
    seed = _native(row.get("seed"))
    if seed and seed != fixed.get("seed", 0):
        out["seed"] = seed
    return out


def train_command(row: pd.Series, fixed: dict[str, Any] | None = None) -> str:
    """The ``csweep train METHOD --set k=v ...`` command that reruns one trial (a row of ``trials``)."""
    parts = ["csweep", "train", str(row.get("method"))]
    for k, v in sorted(_settings(row, fixed or {}).items()):
        parts += ["--set", f"{k}={yaml_flow(v)}"]
    return shlex.join(parts)


def best_config(t: SweepTables) -> dict[str, Any]:
    """The best trial of a sweep as a plain dict (``method``, ``settings``, its metric, trial and command)."""
    metric, mode = _objective(t)
    ranked = rank_trials(t.trials, metric=metric, mode=mode)
    if ranked.empty or pd.isna(ranked[metric].iloc[0]):
        return {}
    row = ranked.iloc[0]
    return {
        "sweep": t.sweep,
        "trial_id": str(row["trial_id"]),
        "method": str(row["method"]),
        "status": str(row["status"]),
        metric: _native(row[metric]),
        "settings": _settings(row, t.fixed),
        "command": train_command(row, t.fixed),
    }


def _yaml(config: dict[str, Any]) -> str:
    import yaml

    return yaml.safe_dump(config, sort_keys=False, default_flow_style=False, width=1000)


def _ablation_pairs(t: SweepTables, metric: str) -> Iterator[tuple[str, str, str, pd.DataFrame, str]]:
    """For each method with two or more sampled settings: the two most important ones (else the first two),
    pivoted over completed trials (or every trial when too few completed), floats binned."""
    for method, g in t.trials.groupby("method", observed=True):
        params = _sampled(g)
        if len(params) < 2 or metric not in g:
            continue
        imp = t.importances
        if len(imp) and "method" in imp:
            ranked = imp[imp["method"].astype(str) == str(method)].sort_values("importance", ascending=False)
            top = [p for p in ranked["param"].astype(str) if p in params]
            params = top + [p for p in params if p not in top]
        rows, cols = params[0], params[1]
        pivot, which = ablation(g, rows=rows, cols=cols, metric=metric, bins=4), "completed trials"
        if pivot.empty or pivot["n"].fillna(0).to_numpy().sum() < 2:
            pivot, which = ablation(g, rows=rows, cols=cols, metric=metric, bins=4, statuses=None), "all trials"
        if not pivot.empty and pivot["mean"].notna().to_numpy().sum() >= 2:  # one cell compares nothing
            yield str(method), rows, cols, pivot, which


def figures(t: SweepTables) -> Iterator[tuple[str, str, Any]]:
    """One sweep's figures as ``(file stem, caption, matplotlib Figure)``, in the order the report shows them."""
    metric, mode = _objective(t)
    trials, params = t.trials, _sampled(t.trials)
    if len(t.epochs):
        yield ("learning_curves", "Learning curves per method. Each trial keeps its colour in every panel; the marker "
               "at the end says how it ended (x: stopped early by the scheduler).",
               plots.learning_curves(t.epochs, trials, title=f"{t.sweep}: learning curves"))
    if len(trials):
        yield ("best_so_far", f"{metric} of each trial in start order, and the best so far.",
               plots.best_so_far(trials, metric=metric, mode=mode, title=f"{t.sweep}: best {metric} so far"))
    if params:
        yield ("parallel_coordinates", "Sampled settings of every trial that reports the metric, coloured by it.",
               plots.parallel_coordinates(trials, params, metric=metric, mode=mode,
                                          title=f"{t.sweep}: settings coloured by {metric}"))
    if len(t.importances):
        yield ("importances", "Optuna's parameter importances (fANOVA) per method, over completed Optuna trials.",
               plots.importances(t.importances, title=f"{t.sweep}: parameter importances"))
    if params:
        yield ("slices", f"{metric} against each sampled setting (hollow: stopped or errored).",
               plots.metric_vs_params(trials, params, metric=metric, title=f"{t.sweep}: slices"))
    objectives = [m for m, _ in t.objective]
    if len(t.pareto) and len(objectives) >= 2:
        # trials hold per-epoch metrics as their mean (epoch_time_s -> mean_epoch_time_s)
        others = trials.assign(**{m: trials[f"mean_{m}"] for m in objectives if m not in trials
                                  and f"mean_{m}" in trials})
        yield ("pareto", "Pareto front of the first two objectives (grey: every trial).",
               plots.pareto_front(t.pareto, others, x=objectives[1], y=objectives[0], modes=dict(t.objective),
                                  title=f"{t.sweep}: Pareto front"))
    if len(trials) and trials[metric].notna().any():
        yield ("methods", "Best configuration of each method: mean ± 95 % CI over its seeds (dots: each seed).",
               plots.method_comparison(trials, metric=metric, title=f"{t.sweep}: best configuration per method"))
    for method, rows, cols, pivot, which in list(_ablation_pairs(t, metric)):
        yield (f"ablation_{method}_{rows}_x_{cols}", f"{method}: mean {metric} over {rows} x {cols} ({which}; "
               "float settings binned; std and count per cell).",
               plots.ablation_heatmap(pivot, metric=metric, title=f"{t.sweep} / {method}: {rows} x {cols}"))


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    plots._plt().close(fig)
    return buf.getvalue()


def _table(df: pd.DataFrame) -> str:
    return df.to_html(index=False, escape=True, na_rep="–", border=0, classes="t", float_format=lambda v: f"{v:.4g}")


def _hours(seconds: float) -> str:
    return f"{seconds / 3600:.2f} h" if seconds >= 3600 else f"{seconds / 60:.1f} min"


def _summary(t: SweepTables) -> str:
    tr = t.trials
    counts = tr["status"].astype(str).value_counts().to_dict() if len(tr) else {}
    wall = (tr["end_time"].max() - tr["start_time"].min()).total_seconds() if len(tr) and "end_time" in tr \
        and tr["end_time"].notna().any() and tr["start_time"].notna().any() else float("nan")
    device = float(tr["device_s"].fillna(0).sum()) if "device_s" in tr else 0.0
    objective = ", ".join(f"{m} ({mode})" for m, mode in t.objective) or "-"
    items = [
        ("trials", str(len(tr))),
        ("status", ", ".join(f"{k}: {v}" for k, v in counts.items()) or "-"),
        ("objective", objective),
        ("wall time", _hours(wall) if not math.isnan(wall) else "-"),
        ("device time", _hours(device)),
        ("methods", ", ".join(sorted(tr["method"].dropna().astype(str).unique())) if len(tr) else "-"),
    ]
    return "<dl>" + "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in items) + "</dl>"


def _leaderboard(t: SweepTables) -> str:
    metric, mode = _objective(t)
    ranked = rank_trials(t.trials, metric=metric, mode=mode).head(TOP_TRIALS)
    params = _sampled(t.trials)
    cols = ["trial_id", "method", "status", *params, "epochs_run", metric]
    cols += [c for c in ("linear_top1",) if c in ranked and c != metric]
    shown = ranked[[c for c in cols if c in ranked]].copy()
    shown.insert(0, "rank", range(1, len(shown) + 1))
    shown["command"] = [train_command(r, t.fixed) for _, r in ranked.iterrows()]
    return _table(shown)


def _methods_table(t: SweepTables) -> str:
    lb = t.leaderboard
    cols = ["method", "best_value", "best_ci95_low", "best_ci95_high", "best_seeds", "best_linear_top1",
            "n_trials", "n_completed", "device_hours"]
    return _table(lb[[c for c in cols if c in lb]]) if len(lb) else "<p>no leaderboard</p>"


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;background:#fff}
h1{font-size:1.5em}h2{font-size:1.25em;border-bottom:1px solid #ccc;padding-bottom:4px}h3{font-size:1.05em}
.sweeps{display:grid;gap:28px}
.sweep{min-width:0}
figure{margin:14px 0}figure img{max-width:100%;height:auto;border:1px solid #eee}
figcaption{font-size:.85em;color:#555}
table.t{border-collapse:collapse;font-size:.8em;margin:8px 0}
table.t th,table.t td{padding:3px 7px;border-bottom:1px solid #e3e3e3;text-align:left;white-space:nowrap}
table.t th{background:#f4f4f4}
table.t td:last-child{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.95em}
.scroll{overflow-x:auto}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 14px;font-size:.9em}dt{font-weight:600}dd{margin:0}
pre{background:#f6f6f6;padding:8px;overflow-x:auto;font-size:.85em}
"""


def write_report(sweeps: Sequence[SweepTables], out: str | os.PathLike, *, title: str = "") -> Path:
    """Write ``out/report.html`` (self-contained), every figure as ``out/<sweep>_<figure>.png`` and the best
    configuration as ``out/best_config.yaml`` (several sweeps: ``out/best_config_<sweep>.yaml`` each, and
    ``best_config.yaml`` for the first). Returns the HTML path."""
    if not sweeps:
        raise ValueError("`sweeps` must hold at least one sweep's tables, but got none")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    title = title or "Sweep report: " + ", ".join(t.sweep for t in sweeps)
    sections = []
    for i, t in enumerate(sweeps):
        best = best_config(t)
        text = _yaml(best) if best else "# no trial reports the objective yet\n"
        if i == 0:
            (out / "best_config.yaml").write_text(text)
        if len(sweeps) > 1:
            (out / f"best_config_{t.sweep}.yaml").write_text(text)
        parts = [f"<h2>{html.escape(t.sweep)}</h2>", _summary(t),
                 "<h3>Trials, best first</h3>", f"<div class='scroll'>{_leaderboard(t)}</div>",
                 "<h3>Best configuration per method</h3>", f"<div class='scroll'>{_methods_table(t)}</div>",
                 "<h3>Best configuration (best_config.yaml)</h3>", f"<pre>{html.escape(text)}</pre>"]
        for stem, caption, fig in figures(t):
            png = _png(fig)
            (out / f"{t.sweep}_{stem}.png").write_bytes(png)
            data = base64.b64encode(png).decode()
            parts.append(f"<figure id='{html.escape(t.sweep)}_{html.escape(stem)}'>"
                         f"<img alt='{html.escape(t.sweep)}_{html.escape(stem)}' src='data:image/png;base64,{data}'>"
                         f"<figcaption>{html.escape(caption)}</figcaption></figure>")
        sections.append("<section class='sweep'>" + "\n".join(parts) + "</section>")
    head = ""
    if len(sweeps) > 1:
        head = "<h2>Sweeps side by side</h2>" + _comparison(sweeps, out)
    columns = min(len(sweeps), 3)
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{CSS}.sweeps{{grid-template-columns:repeat({columns},minmax(0,1fr))}}</style></head><body>"
            f"<h1>{html.escape(title)}</h1>{head}<div class='sweeps'>{''.join(sections)}</div></body></html>")
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


def _comparison(sweeps: Sequence[SweepTables], out: Path) -> str:
    rows = []
    for t in sweeps:
        metric, mode = _objective(t)
        best = best_config(t)
        counts = t.trials["status"].astype(str).value_counts().to_dict() if len(t.trials) else {}
        rows.append({"sweep": t.sweep, "trials": len(t.trials), **{k: counts.get(k, 0) for k in (COMPLETED,
                     "stopped", "errored")}, "metric": f"{metric} ({mode})", "best": best.get(metric),
                     "best method": best.get("method"),
                     "device h": float(t.trials["device_s"].fillna(0).sum() / 3600) if len(t.trials) else 0.0})
    parts = [f"<div class='scroll'>{_table(pd.DataFrame(rows))}</div>"]
    metrics = {_objective(t)[0] for t in sweeps}
    if len(metrics) == 1:
        metric = metrics.pop()
        trials = pd.concat([t.trials.assign(sweep=t.sweep) for t in sweeps], ignore_index=True)
        png = _png(plots.method_comparison(trials, metric=metric, by=("sweep", "method"),
                                           title=f"best configuration per sweep / method: {metric}"))
        (out / "sweeps_methods.png").write_bytes(png)
        parts.append(f"<figure><img alt='sweeps_methods' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
                     "<figcaption>Each sweep's best configuration per method: mean ± 95 % CI over seeds."
                     "</figcaption></figure>")
    return "\n".join(parts)
