"""The Parquet schema: every column of every table, its Arrow type and meaning. This is a public contract, checked
by tests/test_analysis.py and rendered into ARCHITECTURE.md's table by ``python -m analysis.schema``.

Setting columns (one per TrainConfig / method Config field, e.g. ``lr``, ``temperature``, ``selfcon_pos``) are typed
from the dataclass annotations: float -> float64, int -> int64, bool -> bool, str/Literal -> dictionary<string>,
tuples (``selfcon_pos``, ``mean``) -> string in YAML flow style (``[false, true, false]``). A setting that does not
apply to a trial's method is null.
"""

from __future__ import annotations

import pyarrow as pa

__all__ = ["EARLY_RANK_COLUMNS", "EPOCH_COLUMNS", "LEADERBOARD_COLUMNS", "TRIAL_COLUMNS", "markdown"]

DICT = pa.dictionary(pa.int32(), pa.string())
TS = pa.timestamp("ms", tz="UTC")  # Parquet has no second unit

#: trials.parquet: one row per trial (a Tune trial, or a member of a fused one) (the sweep name comes from the partition directory ``sweep=NAME``).
TRIAL_COLUMNS: list[tuple[str, pa.DataType, str]] = [
    ("trial_id", pa.string(), "Tune trial id (also names the Train run train_<trial_id>)"),
    ("optuna_trial", pa.int64(), "number of the matching Optuna trial in the sweep's study (null if none)"),
    ("status", DICT, "completed | stopped (early, by the scheduler) | errored | diverged | running | abandoned (its "
                     "driver died before Tune recorded it; a resumed sweep samples that configuration again)"),
    ("error", pa.string(), "first line of the error for errored/diverged trials"),
    ("method", DICT, "method name"),
    ("dataset", DICT, "dataset name"),
    ("backbone", DICT, "backbone name"),
    ("seed", pa.int64(), "trial seed (base seed + repeat index)"),
    ("repeat", pa.int64(), "index of this seed among --repeats copies of one configuration (0 without repeats)"),
    ("fused_group", pa.string(), "id of the fused Tune trial that trained this trial with others (--fuse K; "
                                 "this trial is GROUP-k), null when not fused"),
    ("sampled", pa.string(), "comma-separated names of the settings the search space sampled for this trial"),
    ("epochs_run", pa.int64(), "last epoch reported"),
    ("stopped_early", pa.bool_(), "the scheduler stopped the trial before its last epoch"),
    ("knn_top1", pa.float64(), "kNN top-1 on the val split at the last reported epoch"),
    ("best_knn_top1", pa.float64(), "best kNN top-1 over the reported epochs"),
    ("linear_top1", pa.float64(), "linear-probe top-1 on the test split (completed trials)"),
    ("linear_val_top1", pa.float64(), "linear-probe top-1 on the val split (completed trials)"),
    ("logreg_top1", pa.float64(), "logistic-regression probe top-1 on the test split, when run"),
    ("ensemble_top1", pa.float64(), "top-1 of the mean logits over backbone and exits/extra features, when any"),
    ("train_loss", pa.float64(), "training loss of the last reported epoch"),
    ("min_train_loss", pa.float64(), "lowest epoch training loss"),
    ("mean_epoch_time_s", pa.float64(), "mean training time per epoch"),
    ("mean_images_per_s", pa.float64(), "mean training throughput over epochs (global images per second)"),
    ("max_peak_mem_mb", pa.float64(), "peak memory of the busiest worker (CUDA allocator on GPU, RSS on CPU)"),
    ("wall_s", pa.float64(), "seconds from the trial's start to its last report"),
    ("device_s", pa.float64(), "wall_s x devices held (GPUs, or CPUs for CPU trials), summed over workers; a fused "
                               "trial's member is charged its share of each epoch (epoch time / members trained)"),
    ("world_size", pa.int64(), "DDP workers"),
    ("per_worker_batch", pa.int64(), "batch per worker"),
    ("gathered_negatives", pa.bool_(), "in-batch negatives gathered across workers"),
    ("node_id", pa.string(), "Ray node of the (rank-0) worker at the last report"),
    ("torch_version", pa.string(), "package versions on the worker"),
    ("ray_version", pa.string(), ""),
    ("csweep_version", pa.string(), ""),
    ("start_time", TS, "start of the trial (UTC)"),
    ("end_time", TS, "time of its last report (UTC)"),
]

#: epochs.parquet: one row per (trial, epoch).
EPOCH_COLUMNS: list[tuple[str, pa.DataType, str]] = [
    ("trial_id", pa.string(), "Tune trial id"),
    ("method", DICT, "method name"),
    ("epoch", pa.int64(), "epoch (1-based)"),
    ("train_loss", pa.float64(), "mean training loss of the epoch"),
    ("knn_top1", pa.float64(), "kNN top-1 on the val split"),
    ("current_lr", pa.float64(), "learning rate at the epoch's last step"),
    ("epoch_time_s", pa.float64(), "training seconds of the epoch"),
    ("eval_time_s", pa.float64(), "evaluation seconds (kNN, probes on the last epoch)"),
    ("images_per_s", pa.float64(), "training throughput"),
    ("peak_mem_mb", pa.float64(), "peak memory of the busiest worker"),
    ("time_total_s", pa.float64(), "seconds since the trial (re)started, as Tune reports it"),
]
#: Method extras (``gamma``, ``ema_beta``, ``train_top1``, ...) follow as float64 columns in epochs.parquet.

#: leaderboard.parquet: one row per (dataset, method).
LEADERBOARD_COLUMNS: list[tuple[str, pa.DataType, str]] = [
    ("dataset", DICT, "dataset"),
    ("method", DICT, "method"),
    ("metric", pa.string(), "ranking metric (the sweep's first objective)"),
    ("mode", pa.string(), "max or min"),
    ("best_trial_id", pa.string(), "trial of the best configuration among completed trials (its first seed)"),
    ("best_config", pa.string(), "the best configuration's sampled settings, as JSON"),
    ("best_value", pa.float64(), "its metric (mean over seeds)"),
    ("best_std", pa.float64(), "std over seeds (null with one seed)"),
    ("best_ci95_low", pa.float64(), "95 % confidence interval over seeds (t distribution)"),
    ("best_ci95_high", pa.float64(), ""),
    ("best_seeds", pa.int64(), "seeds of the best configuration"),
    ("best_linear_top1", pa.float64(), "mean linear_top1 of the best configuration"),
    ("best_knn_top1", pa.float64(), "mean best_knn_top1 of the best configuration"),
    ("n_trials", pa.int64(), "trials of this method"),
    ("n_completed", pa.int64(), "of which completed"),
    ("device_hours", pa.float64(), "sum of device_s over the method's trials / 3600"),
]

#: early_rank.parquet: one row per epoch (analysis/early_rank.py): can the rung metric at that epoch stand in for the
#: final objective when ASHA ranks trials?
EARLY_RANK_COLUMNS: list[tuple[str, pa.DataType, str]] = [
    ("epoch", pa.int64(), "epoch (1-based) at which the rung metric is read"),
    ("rung_metric", pa.string(), "the scheduler's per-epoch metric (knn_top1 by default)"),
    ("rung_mode", pa.string(), "max or min"),
    ("objective", pa.string(), "the sweep's first objective, read from trials.parquet (final value)"),
    ("objective_mode", pa.string(), "max or min"),
    ("n_trials", pa.int64(), "completed trials with both values at this epoch"),
    ("spearman", pa.float64(), "Spearman rank correlation, both sides oriented larger-is-better (null if n < 3)"),
    ("kendall", pa.float64(), "Kendall tau-b, oriented the same way (null if n < 3)"),
]


def markdown() -> str:
    """The schema as Markdown tables (for the docs)."""
    out = []
    for title, cols in (
        ("trials.parquet", TRIAL_COLUMNS),
        ("epochs.parquet", EPOCH_COLUMNS),
        ("leaderboard.parquet", LEADERBOARD_COLUMNS),
        ("early_rank.parquet", EARLY_RANK_COLUMNS),
    ):
        out += [f"#### {title}", "", "| column | type | meaning |", "| --- | --- | --- |"]
        out += [f"| `{n}` | {t} | {m} |" for n, t, m in cols]
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(markdown())
