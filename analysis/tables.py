"""Experiment storage -> pandas -> Parquet.

``build_tables(path)`` reads one sweep's experiment directory (``sweep.json``, Tune's experiment state, each trial's
``params.json`` / ``result.json`` / ``error.txt``, and the Optuna study) and returns its tables as DataFrames; it works
on finished, running and crashed sweeps alike, because every piece it reads is written incrementally.
``write_tables(paths, out)`` writes them as a Parquet dataset partitioned by sweep::

    out/trials/sweep=NAME/part-0.parquet        pd.read_parquet("out/trials")
    out/epochs/sweep=NAME/part-0.parquet        duckdb: read_parquet('out/epochs/*/*.parquet', hive_partitioning=1)
    out/leaderboard/sweep=NAME/part-0.parquet
    out/importances/sweep=NAME/part-0.parquet   (Optuna parameter importances per method)
    out/pareto/sweep=NAME/part-0.parquet        (multi-objective sweeps: the study's Pareto front)
    out/early_rank/sweep=NAME/part-0.parquet    (per epoch: does the rung metric rank trials as the final objective?)

Reading Tune's files lives in :mod:`analysis.tune_files`, column types and Parquet writing in
:mod:`analysis.columns`. Every file is written to a temporary name and renamed into place, so a reader never sees
half a file and a failed refresh never replaces a good table.
"""

from __future__ import annotations

import json
import math
import os
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from analysis.columns import is_number, setting_types, typed_frame, write_parquet
from analysis.early_rank import early_rank
from analysis.schema import EARLY_RANK_COLUMNS, EPOCH_COLUMNS, LEADERBOARD_COLUMNS, TRIAL_COLUMNS
from analysis.tune_files import TrialFiles, read_trials
from search.spec import ABANDONED, COMPLETED, DIVERGED, ERRORED, RUNNING, STOPPED, read_sweep_file
from trainables.config import yaml_flow

__all__ = ["SweepTables", "build_tables", "sweep_status", "write_tables"]

TABLES = ("trials", "epochs", "leaderboard", "importances", "pareto", "early_rank")
SCHEMAS = {
    "trials": TRIAL_COLUMNS,
    "epochs": EPOCH_COLUMNS,
    "leaderboard": LEADERBOARD_COLUMNS,
    "early_rank": EARLY_RANK_COLUMNS,
}
#: Keys Tune adds to every result; not metrics of ours.
TUNE_KEYS = {
    "timestamp",
    "checkpoint_dir_name",
    "should_checkpoint",
    "training_iteration",
    "trial_id",
    "date",
    "time_this_iter_s",
    "pid",
    "hostname",
    "node_ip",
    "config",
    "time_since_restore",
    "iterations_since_restore",
    "done",
    "experiment_tag",
    "checkpoint_path",
}
FINAL_ONLY = ("linear_top1", "linear_val_top1", "logreg_top1", "ensemble_top1")
#: Per-epoch bookkeeping summarised by dedicated trial columns (mean_epoch_time_s, ...) rather than copied.
PER_EPOCH = {
    "epoch",
    "step",
    "current_lr",
    "epoch_time_s",
    "eval_time_s",
    "images_per_s",
    "peak_mem_mb",
    "time_total_s",
    "best_linear_top1",
}


@dataclass
class SweepTables:
    """One sweep's tables as DataFrames (``sweep`` is a column here; on disk it is the partition)."""

    sweep: str
    trials: pd.DataFrame
    epochs: pd.DataFrame
    leaderboard: pd.DataFrame
    importances: pd.DataFrame
    pareto: pd.DataFrame
    #: the sweep's fixed settings (``--set`` and the space's) and its objectives as (metric, mode)
    fixed: dict[str, Any] = field(default_factory=dict)
    objective: list[tuple[str, str]] = field(default_factory=list)
    #: per epoch, Spearman/Kendall of the rung metric against the final objective (analysis/early_rank.py)
    early_rank: pd.DataFrame = field(default_factory=lambda: pd.DataFrame())


def _spec_settings(fixed: Mapping[str, Any], config: Mapping[str, Any]) -> tuple[str | None, dict[str, Any]]:
    """The trial's full, validated settings (fixed + sampled + defaults), or the raw merge if they do not validate
    (an errored trial with an invalid configuration still gets its row)."""
    from trainables.trial import TrialSpec, trial_settings

    try:
        method, settings = trial_settings(fixed, config)
        return method, TrialSpec.from_settings(method, settings).flat()
    except Exception:
        merged = {**config, **fixed}
        return merged.get("method"), {k: v for k, v in merged.items() if not k.startswith("__")}


# ---------------------------------------------------------------------------------------------------------------------
# Building the tables


def _status(t: TrialFiles) -> str:
    if t.error is not None or t.tune_status == "ERROR":
        return DIVERGED if t.error and ("diverged" in t.error or "FloatingPointError" in t.error) else ERRORED
    last = t.results[-1] if t.results else {}
    if last.get("finished"):
        return COMPLETED
    if t.tune_status == "TERMINATED":
        return STOPPED
    if t.tune_status is None and t.known_to_state:
        return ABANDONED  # started after the last experiment snapshot of a driver that died; resume re-asks it
    return RUNNING


def _optuna_numbers(study, trials: list[TrialFiles], sweep_objective: list[str]) -> dict[str, int]:
    """Match each Tune trial to its Optuna trial: by the ``tune_trial_id`` user attribute, else by the same sampled
    parameters (repeats share one)."""
    if study is None:
        return {}
    out = {}
    by_params: dict[str, list[int]] = {}
    by_id = {ot.user_attrs["tune_trial_id"]: ot.number for ot in study.get_trials(deepcopy=False)
             if "tune_trial_id" in ot.user_attrs}
    used = set(by_id.values())
    for ot in study.get_trials(deepcopy=False):
        by_params.setdefault(json.dumps(ot.params, sort_keys=True, default=str), []).append(ot.number)
    for t in trials:
        if t.trial_id in by_id:  # recorded by the searcher (search/sweep.py)
            out[t.trial_id] = by_id[t.trial_id]
            continue
        params = {k: v for k, v in t.config.items() if not k.startswith("__")}
        numbers = by_params.get(json.dumps(params, sort_keys=True, default=str)) or []
        if t.config.get("__trial_index__") is not None and numbers:
            out[t.trial_id] = numbers[0]
            continue
        free = [n for n in numbers if n not in used]
        if free:
            out[t.trial_id] = free[0]
            used.add(free[0])
    return out


def _load_study(cfg):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    url = cfg.study_url
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).is_file():
        return None  # reading must not create an empty study file
    try:
        return optuna.load_study(study_name=cfg.name, storage=cfg.study_url)
    except Exception:  # no study yet (crashed before the first ask) or storage not reachable from here
        return None


def build_tables(path: str | os.PathLike) -> SweepTables:
    """Read one sweep's experiment directory into its tables."""
    exp = Path(path).resolve()
    cfg = read_sweep_file(str(exp))
    study = _load_study(cfg)
    trials = read_trials(exp)
    numbers = _optuna_numbers(study, trials, [o.metric for o in cfg.objective])
    kinds = setting_types()

    trial_rows, epoch_rows = [], []
    for t in trials:
        method, settings = _spec_settings(cfg.fixed, t.config)
        results = [r for r in t.results if "epoch" in r]
        last = results[-1] if results else {}
        devices = cfg.gpus_per_worker if cfg.gpus_per_worker else cfg.cpus_per_worker
        start = t.start_time or (last.get("timestamp", 0) - last.get("time_total_s", 0) if last else None)
        wall = (last["timestamp"] - start) if last and start else None
        row: dict[str, Any] = {
            "trial_id": t.trial_id,
            "optuna_trial": numbers.get(t.trial_id),
            "status": _status(t),
            "error": t.error,
            "method": method,
            "dataset": settings.get("dataset"),
            "backbone": settings.get("backbone"),
            "seed": settings.get("seed"),
            "repeat": int(t.config.get("__trial_index__", 0)),
            "fused_group": t.fused_group,
            "sampled": ",".join(sorted(k for k in t.config if not k.startswith("__"))),
            "epochs_run": last.get("epoch"),
            "stopped_early": _status(t) == STOPPED,
            "knn_top1": last.get("knn_top1"),
            "best_knn_top1": _best(results, "knn_top1", max),
            "train_loss": last.get("train_loss"),
            "min_train_loss": _best(results, "train_loss", min),
            "mean_epoch_time_s": _mean(results, "epoch_time_s"),
            "mean_images_per_s": _mean(results, "images_per_s"),
            "max_peak_mem_mb": _best(results, "peak_mem_mb", max),
            "wall_s": wall,
            "device_s": _device_s(t, results, wall) * devices * cfg.workers if wall is not None else None,
            "world_size": last.get("world_size"),
            "per_worker_batch": last.get("per_worker_batch"),
            "gathered_negatives": last.get("gathered_negatives"),
            "node_id": last.get("node_id"),
            "torch_version": last.get("torch_version"),
            "ray_version": last.get("ray_version"),
            "csweep_version": last.get("csweep_version"),
            "start_time": pd.Timestamp(start, unit="s", tz="UTC") if start else None,
            "end_time": pd.Timestamp(last["timestamp"], unit="s", tz="UTC") if last else None,
        }
        for key in FINAL_ONLY:
            row[key] = last.get(key)
        for key, value in last.items():  # method extras (exit_top1, gamma, ...) as float columns
            if (
                key not in row
                and key not in TUNE_KEYS
                and key not in PER_EPOCH
                and is_number(value)
                and key not in settings
            ):
                row[key] = float(value)
        for key, value in settings.items():
            if key not in row or key in ("seed",):
                row[key] = yaml_flow(value) if kinds.get(key) == "list" and value is not None else value
        trial_rows.append(row)
        for r in results:
            epoch_rows.append(
                {
                    "trial_id": t.trial_id,
                    "method": method,
                    **{k: v for k, v in r.items() if k not in TUNE_KEYS and is_number(v)},
                    "time_total_s": r.get("time_total_s"),
                    **{k: r[k] for k in ("cloned_from", "lineage") if k in r},  # PBT (analysis/population.py)
                }
            )

    trials_df = typed_frame(trial_rows, TRIAL_COLUMNS, kinds)
    epochs_df = typed_frame(epoch_rows, EPOCH_COLUMNS, {})
    epochs_df = epochs_df.drop(
        columns=[c for c in ("finished", "gathered_negatives", "world_size", "per_worker_batch") if c in epochs_df]
    )
    rung = cfg.scheduler_objective
    ranks = early_rank(trials_df, epochs_df, rung=(rung.metric, rung.mode),
                       objective=(cfg.objective[0].metric, cfg.objective[0].mode), completed=COMPLETED)
    for df in (trials_df, epochs_df, ranks):
        df.insert(0, "sweep", pd.Categorical([cfg.name] * len(df)))
    return SweepTables(
        sweep=cfg.name,
        trials=trials_df,
        epochs=epochs_df,
        leaderboard=_leaderboard(trials_df, cfg),
        importances=_importances(study, trials_df, cfg),
        pareto=_pareto(study, cfg),
        fixed=dict(cfg.fixed),
        objective=[(o.metric, o.mode) for o in cfg.objective],
        early_rank=ranks,
    )


def _device_s(t: TrialFiles, results: list[dict], wall: float) -> float:
    """Seconds of the trial's devices it is charged: its wall time, or for a member of a fused trial its share of
    each epoch (the epoch's time over the members trained in it), so a fused sweep's total is its real one."""
    if t.fused_group is None:
        return wall
    return sum((r.get("time_this_iter_s") or 0.0) / max(1, int(r.get("fused_members") or 1)) for r in results)


def sweep_status(path: str | os.PathLike) -> tuple[Counter, float]:
    """Trial counts by status and the newest modification time (epoch seconds) of one sweep's directory, read
    from Tune's files alone (no study, no tables): what ``csweep ls`` shows."""
    exp = Path(path)
    trials = read_trials(exp)
    counts = Counter(_status(t) for t in trials)
    times = [p.stat().st_mtime for p in exp.iterdir()]
    times += [(t.path / "result.json").stat().st_mtime for t in trials if (t.path / "result.json").exists()]
    return counts, max(times, default=exp.stat().st_mtime)


def _best(results: list[dict], key: str, fn) -> float | None:
    values = [r[key] for r in results if is_number(r.get(key))]
    return float(fn(values)) if values else None


def _mean(results: list[dict], key: str) -> float | None:
    values = [r[key] for r in results if is_number(r.get(key))]
    return float(np.mean(values)) if values else None


def _leaderboard(trials: pd.DataFrame, cfg) -> pd.DataFrame:
    """Best configuration per (dataset, method); with repeats, mean/std/95 % CI over its seeds."""
    from scipy import stats

    obj = cfg.objective[0]
    metric = obj.metric if obj.metric in trials else "best_knn_top1"
    rows = []
    for (dataset, method), group in trials.groupby(["dataset", "method"], observed=True, dropna=False):
        sampled = {c for s in group["sampled"].dropna() for c in str(s).split(",") if c} - {"method"}
        key_cols = sorted(c for c in sampled if c in group)
        configs = group.groupby(key_cols, dropna=False, observed=True) if key_cols else [((), group)]
        best = None
        for _, g in configs:
            g = g[g["status"].astype(str) == COMPLETED]  # a stopped trial's early value is not ranked beside full runs
            values = g[metric].dropna().to_numpy(dtype=float)
            if not len(values):
                continue
            mean = float(values.mean())
            if best is None or (mean > best[0] if obj.mode == "max" else mean < best[0]):
                best = (mean, values, g)
        row = {
            "dataset": dataset,
            "method": method,
            "metric": metric,
            "mode": obj.mode,
            "n_trials": len(group),
            "n_completed": int((group["status"] == COMPLETED).sum()),
            "device_hours": float(group["device_s"].fillna(0).sum() / 3600),
        }
        if best is not None:
            mean, values, g = best
            n = len(values)
            std = float(values.std(ddof=1)) if n > 1 else None
            half = float(stats.t.ppf(0.975, n - 1) * std / math.sqrt(n)) if n > 1 else None
            first = g.sort_values("repeat").iloc[0]
            row.update(
                best_trial_id=first["trial_id"],
                best_value=mean,
                best_std=std,
                best_ci95_low=mean - half if half is not None else None,
                best_ci95_high=mean + half if half is not None else None,
                best_seeds=n,
                best_config=json.dumps({c: _jsonable(first[c]) for c in key_cols}, sort_keys=True),
                best_linear_top1=_nanmean(g["linear_top1"]),
                best_knn_top1=_nanmean(g["best_knn_top1"]),
            )
        rows.append(row)
    return typed_frame(rows, LEADERBOARD_COLUMNS, {})


def _nanmean(s: pd.Series) -> float | None:
    v = s.dropna()
    return float(v.mean()) if len(v) else None


def _jsonable(v: Any) -> Any:
    if isinstance(v, (np.generic,)):
        return v.item()
    if v is pd.NA or (isinstance(v, float) and math.isnan(v)):
        return None
    return v


def _importances(study, trials: pd.DataFrame, cfg) -> pd.DataFrame:
    """Optuna's fANOVA parameter importances for each method with enough completed trials (single objective)."""
    import optuna

    rows = []
    if study is None or len(cfg.objective) > 1:
        return pd.DataFrame(
            {
                "method": pd.Categorical([]),
                "param": pd.Series([], dtype="string"),
                "importance": pd.Series([], dtype="float64"),
            }
        )
    complete = [t for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))]
    methods = {t.params.get("method", cfg.fixed.get("method")) for t in complete}
    for method in sorted(m for m in methods if m):
        subset = [t for t in complete if t.params.get("method", cfg.fixed.get("method")) == method]
        params = {k for t in subset for k in t.params if k != "method"}
        if len(subset) < 3 or not params:
            continue
        tmp = optuna.create_study(direction=study.direction)
        for t in subset:
            tmp.add_trial(
                optuna.trial.create_trial(
                    params={k: v for k, v in t.params.items() if k != "method"},
                    distributions={k: d for k, d in t.distributions.items() if k != "method"},
                    value=t.value,
                )
            )
        try:
            importances = optuna.importance.get_param_importances(tmp)
        except (RuntimeError, ValueError):
            continue  # e.g. conditional parameters that never co-occur
        rows += [{"method": method, "param": k, "importance": float(v)} for k, v in importances.items()]
    return pd.DataFrame(rows, columns=["method", "param", "importance"]).astype(
        {"method": "category", "param": "string", "importance": "float64"}
    )


def _pareto(study, cfg) -> pd.DataFrame:
    if study is None or len(cfg.objective) < 2:
        return pd.DataFrame({"optuna_trial": pd.Series([], dtype="Int64")})
    names = [o.metric for o in cfg.objective]
    rows = [
        {"optuna_trial": t.number, **{f"param_{k}": v for k, v in t.params.items()}, **dict(zip(names, t.values))}
        for t in study.best_trials
    ]
    return pd.DataFrame(rows).astype({"optuna_trial": "Int64", **{n: "float64" for n in names}})


# ---------------------------------------------------------------------------------------------------------------------
# Writing


def write_tables(paths: Iterable[str | os.PathLike | SweepTables], out: str | os.PathLike) -> list[SweepTables]:
    """Build every sweep's tables (or take them as built) and write them under ``out`` (partitioned by sweep).
    Returns the tables."""
    out = Path(out)
    written = []
    for path in paths:
        tables = path if isinstance(path, SweepTables) else build_tables(path)
        for name in TABLES:
            df = getattr(tables, name)
            if "sweep" in df:
                df = df.drop(columns=["sweep"])  # the partition directory carries it
            write_parquet(df, out / name / f"sweep={tables.sweep}" / "part-0.parquet", SCHEMAS.get(name, []))
        written.append(tables)
    return written
