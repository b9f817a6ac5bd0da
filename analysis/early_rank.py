"""Early-stopping trust: do early rankings of trials predict the final one?

ASHA stops trials on the rung metric (the scheduler's per-epoch objective, ``knn_top1`` by default) at its rungs;
that is only sound if the ranking at an early epoch agrees with the ranking by the final objective. From the trials
that ran to the end, :func:`early_rank` computes, for every epoch e, the rank correlation between the rung metric at e
and the final objective:

    spearman(e) = pearson(rank(x_e), rank(y))                      (average ranks for ties)
    kendall(e)  = (C - D) / sqrt((C + D + T_x) (C + D + T_y))      (tau-b; C/D concordant/discordant pairs,
                                                                    T_x/T_y pairs tied in x only / y only)

over the ``n_trials`` trials with both values. Both metrics are oriented so that larger is better (a ``min`` metric
is negated), so +1 means "early order = final order" whatever the modes. :func:`grace_advice` turns the table into
the safe grace period and a plain warning.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from analysis.schema import EARLY_RANK_COLUMNS

__all__ = ["TRUSTED_SPEARMAN", "GraceAdvice", "early_rank", "grace_advice"]

#: Spearman at or above which an epoch's ranking is trusted to stand in for the final one.
TRUSTED_SPEARMAN = 0.7
#: Fewer completed trials than this give correlations too noisy to judge (|rho| of 0.7 is not significant below 5).
MIN_TRIALS = 5
_DTYPES = {"int64": "int64", "string": "string", "double": "float64"}


def early_rank(
    trials: pd.DataFrame,
    epochs: pd.DataFrame,
    *,
    rung: tuple[str, str],
    objective: tuple[str, str],
    completed: str = "completed",
) -> pd.DataFrame:
    """One row per epoch: Spearman and Kendall tau-b between ``rung`` (metric, mode) at that epoch (epochs table) and
    the final ``objective`` (metric, mode; trials table) over the ``completed`` trials; null when fewer than 3
    trials have both values or either side is constant."""
    from scipy import stats

    (rung_metric, rung_mode), (obj_metric, obj_mode) = rung, objective
    rows = []
    if obj_metric in trials and rung_metric in epochs and len(trials):
        done = trials[trials["status"].astype(str) == completed]
        final = pd.Series(done[obj_metric].to_numpy(dtype=float), index=done["trial_id"].astype(str)).dropna()
        per_epoch = epochs[epochs["trial_id"].astype(str).isin(final.index)]
        for epoch, group in per_epoch.groupby("epoch", sort=True):
            x = pd.Series(group[rung_metric].to_numpy(dtype=float), index=group["trial_id"].astype(str)).dropna()
            x = x[~x.index.duplicated(keep="last")]  # a retried epoch: its last report
            y = final.reindex(x.index)
            xv = x.to_numpy() * (1 if rung_mode == "max" else -1)
            yv = y.to_numpy() * (1 if obj_mode == "max" else -1)
            n = len(xv)
            rho = tau = None
            if n >= 3 and np.ptp(xv) > 0 and np.ptp(yv) > 0:
                rho = float(stats.spearmanr(xv, yv).statistic)
                tau = float(stats.kendalltau(xv, yv, variant="b").statistic)
            rows.append({"epoch": int(epoch), "n_trials": n, "spearman": rho, "kendall": tau})
    df = pd.DataFrame(rows, columns=["epoch", "n_trials", "spearman", "kendall"])
    df["rung_metric"], df["rung_mode"] = rung_metric, rung_mode
    df["objective"], df["objective_mode"] = obj_metric, obj_mode
    return df[[c for c, _, _ in EARLY_RANK_COLUMNS]].astype({c: _DTYPES[str(t)] for c, t, _ in EARLY_RANK_COLUMNS})


@dataclass(frozen=True)
class GraceAdvice:
    """What the early-rank table says about a grace period."""

    grace_period: int  # the sweep's grace period (epochs)
    spearman: float | None  # Spearman at that epoch (None: not measurable)
    n_trials: int  # completed trials it was measured on
    safe_grace_period: int | None  # first epoch from which Spearman stays >= TRUSTED_SPEARMAN (None: none)
    warning: str | None  # a plain sentence when early rankings predict the final one poorly, else None


def grace_advice(table: pd.DataFrame, grace_period: int, *, last_epoch: int) -> GraceAdvice:
    """The Spearman at ``grace_period`` and the earliest epoch from which it stays >= TRUSTED_SPEARMAN up to (but not
    counting) ``last_epoch``, where the final objective is often the rung metric itself; with a warning when the
    sweep's grace period is earlier than that, or when too few trials ran to the end to tell."""
    early = table[table["epoch"] < last_epoch].sort_values("epoch")
    at = early[early["epoch"] == grace_period]
    rho = float(at["spearman"].iloc[0]) if len(at) and pd.notna(at["spearman"].iloc[0]) else None
    n = int(table["n_trials"].max()) if len(table) else 0
    safe = None
    for epoch, value in zip(early["epoch"][::-1], early["spearman"][::-1]):
        if pd.isna(value) or value < TRUSTED_SPEARMAN:
            break
        safe = int(epoch)
    if safe is None and len(early) and len(table[table["epoch"] == last_epoch]):
        safe = last_epoch  # no earlier epoch ranks well enough: only a full run does
    warning = None
    if n < MIN_TRIALS:
        warning = (f"only {n} trial(s) ran to the end: too few to tell whether early rankings predict the final "
                   f"one (need {MIN_TRIALS})")
    elif rho is None or rho < TRUSTED_SPEARMAN or (safe is not None and grace_period < safe):
        shown = "not measurable" if rho is None else f"{rho:.2f}"
        warning = (f"early rankings predict the final one poorly: Spearman at the grace period (epoch "
                   f"{grace_period}) is {shown} over {n} completed trials (trusted from {TRUSTED_SPEARMAN}); "
                   f"ASHA may stop the eventual best trials. A safe grace period would be "
                   + (f"{safe} epoch(s)" if safe is not None else "unknown (no epoch ranks well)"))
    return GraceAdvice(grace_period, rho, n, safe, warning)
