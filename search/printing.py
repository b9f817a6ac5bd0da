"""What the CLI prints: fixed-width tables, trial statuses in the shared vocabulary, the leaderboard and the Pareto
front of a sweep, and the final line of ``csweep train``. Ray-free."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from search.spec import COMPLETED, ERRORED, PAUSED, PENDING, RUNNING, STOPPED

__all__ = [
    "RESULT_COLUMNS",
    "finished_status",
    "fmt",
    "format_table",
    "group_column",
    "early_rank_report",
    "jsonable",
    "leaderboard_rows",
    "next_steps",
    "print_leaderboard",
    "print_pareto",
    "result_rows",
    "sampled_keys",
    "status_of",
    "train_summary",
]

#: Tune's trial states in the shared status vocabulary (TERMINATED is completed or stopped: see finished_status).
TUNE_STATUS = {"PENDING": PENDING, "RUNNING": RUNNING, "ERROR": ERRORED, "PAUSED": PAUSED}
#: Per-trial results every table shows after the sampled parameters.
RESULT_COLUMNS = ("epoch", "knn_top1", "linear_top1")


def fmt(v: Any) -> str:
    """A table cell: floats with 4 significant digits, None as ``-``."""
    if isinstance(v, float):
        return f"{v:.4g}"
    if v is None:
        return "-"
    return str(v)


def jsonable(v: Any) -> bool:
    """Whether ``v`` is a JSON scalar (finite floats only)."""
    return isinstance(v, (str, int, bool, type(None))) or (isinstance(v, float) and math.isfinite(v))


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """Plain fixed-width table of ``rows`` (dicts) with the given column order."""
    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def finished_status(result: Mapping[str, Any] | None) -> str:
    """``completed`` when the trial ran to its last epoch (final probes reported), else ``stopped`` (early)."""
    return COMPLETED if (result or {}).get("finished") else STOPPED


def status_of(tune_status: str, result: Mapping[str, Any] | None) -> str:
    """A Tune trial state (PENDING, RUNNING, TERMINATED, ERROR, PAUSED) in the shared vocabulary."""
    if tune_status == "TERMINATED":
        return finished_status(result)
    return TUNE_STATUS.get(tune_status, tune_status.lower())


def group_column(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    """``["fused_group"]`` when some row is a member of a fused trial (``--fuse K``), else nothing."""
    return ["fused_group"] if any(r.get("fused_group") for r in rows) else []


def sampled_keys(rows: Iterable[Mapping[str, Any]]) -> set[str]:
    """The settings the space sampled: the keys of the trials' Tune configs (carried as ``_sampled`` in rows)."""
    return {k for r in rows for k in r.get("_sampled", ())}


def result_rows(result) -> list[dict[str, Any]]:
    """A ``ray.tune.Result`` as leaderboard rows: one, or one per member of a fused trial (search/fusion.py)."""
    from search.fusion import FUSED, latest_members, member_status

    metrics = result.metrics or {}
    if FUSED in (result.config or {}):
        rows = []
        for mid, sampled, mine in latest_members(result.config, metrics):
            row = {**(mine or {}), **sampled, "_sampled": tuple(sampled), "trial": mid,
                   "fused_group": metrics.get("trial_id")}
            row["status"] = member_status(mine, ERRORED if result.error is not None else finished_status(row))
            rows.append(row)
        return rows
    config = {k: v for k, v in (result.config or {}).items() if not k.startswith("__")}
    row = {**metrics, **config, "_sampled": tuple(config)}
    row["trial"] = row.get("trial_id")
    row["status"] = ERRORED if result.error is not None else finished_status(row)
    return [row]


def leaderboard_rows(trials: Iterable[Mapping[str, Any]], metric: str, mode: str) -> list[dict[str, Any]]:
    """Rows sorted best-first by ``metric`` (trials without it last); on a tie a completed trial ranks above a
    stopped one, then more epochs above fewer."""
    rows = list(trials)
    sign = -1.0 if mode == "max" else 1.0
    return sorted(rows, key=lambda r: (r.get(metric) is None, sign * (r.get(metric) or 0.0),
                                       r.get("status") != COMPLETED, -(r.get("epoch") or 0)))


def print_leaderboard(cfg, rows: list[dict[str, Any]]) -> None:
    """The trials of a sweep, best first by its first objective."""
    obj = cfg.objective[0]
    params = sorted(sampled_keys(rows) - {"method"})
    columns = ["trial", *group_column(rows), "method", *params, "status", *RESULT_COLUMNS]
    if obj.metric not in columns:
        columns.append(obj.metric)
    print(f"\nleaderboard ({obj.metric}, {obj.mode}):")
    print(format_table(leaderboard_rows(rows, obj.metric, obj.mode), columns))


def print_pareto(cfg) -> None:
    """The Optuna study's Pareto front of a multi-objective sweep."""
    import optuna

    study = optuna.load_study(study_name=cfg.name, storage=cfg.study_url)
    names = [o.metric for o in cfg.objective]
    rows = [{"optuna_trial": t.number, **t.params, **dict(zip(names, t.values))} for t in study.best_trials]
    params = sorted({k for t in study.best_trials for k in t.params})
    print(f"\nPareto front ({', '.join(f'{o.metric}:{o.mode}' for o in cfg.objective)}): {len(rows)} trial(s)")
    print(format_table(rows, ["optuna_trial", *params, *names]))


def next_steps(cfg) -> str:
    """What to run after a sweep: its report, its tables, TensorBoard on its directory, optuna-dashboard."""
    import shlex

    storage = "" if cfg.storage_path == _default_storage() else f" --storage-path {shlex.quote(cfg.storage_path)}"
    name = shlex.quote(cfg.name)
    lines = [
        (f"csweep report {name}{storage} --out report-{cfg.name}", "one HTML page: curves, importances, best config"),
        (f"csweep tables {name}{storage} --plots", "Parquet tables for pandas, and the figures"),
        (f"tensorboard --logdir {shlex.quote(cfg.experiment_path)}", "every trial's curves"),
    ]
    if cfg.study_url.startswith("sqlite:///"):
        lines.append((f"optuna-dashboard {shlex.quote(cfg.study_url)}", "the study (pip install -e '.[viz]')"))
    width = max(len(c) for c, _ in lines)
    lines = [f"{c.ljust(width)}   # {why}" for c, why in lines]
    return "next:\n" + "\n".join(f"  {line}" for line in lines)


def _default_storage() -> str:
    from pathlib import Path

    return str(Path("results").resolve())


def train_summary(metrics: Mapping[str, Any]) -> str:
    """The last line of ``csweep train``: the headline metrics as ``key=value``."""
    keys = ("epoch", "train_loss", "knn_top1", "linear_top1", "best_knn_top1", "images_per_s")
    return "  ".join(f"{k}={fmt(metrics[k])}" for k in keys if k in metrics)


def early_rank_report(table, cfg) -> str:
    """``csweep status``'s early-stopping section: Spearman / Kendall of the rung metric per epoch against the final
    objective (``table``: the sweep's early_rank table), then a warning with a safe grace period when early
    rankings predict the final one poorly (only for sweeps that stop early)."""
    from analysis.early_rank import grace_advice

    if not len(table):
        return "early stopping trust: no trial has run to the end yet"
    first = table.iloc[0]
    rows = [{"epoch": int(r.epoch), "trials": int(r.n_trials),
             "spearman": None if r.spearman != r.spearman else float(r.spearman),
             "kendall": None if r.kendall != r.kendall else float(r.kendall)} for r in table.itertuples()]
    lines = [f"early stopping trust: {first['rung_metric']} at each epoch vs final {first['objective']} "
             "(rank correlations over trials that ran to the end)",
             format_table(rows, ["epoch", "trials", "spearman", "kendall"])]
    if cfg.scheduler == "asha":
        advice = grace_advice(table, cfg.resolved_grace_period, last_epoch=cfg.epochs)
        lines.append(f"warning: {advice.warning}" if advice.warning else
                     f"grace period {advice.grace_period}: early rankings agree with the final one "
                     f"(Spearman {advice.spearman:.2f} over {advice.n_trials} trials)")
    return "\n".join(lines)
