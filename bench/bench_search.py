"""Search efficiency: does TPE + ASHA find good settings for less compute than TPE alone or random search?

The same space on digits is searched three ways, each with several search seeds (`--seed` of `csweep run`):
  tpe+asha     TPE sampler, ASHA early stopping (grace period, reduction factor as given)
  tpe          TPE sampler, every trial runs all epochs (fifo)
  random       random sampler, every trial runs all epochs (fifo)
Every run gets the same total epoch budget B = --budget-trials x epochs: the two fifo strategies sample
--budget-trials configurations; tpe+asha samples --asha-factor times more, and its curve is cut where it has spent B
epochs. The score of a configuration is its final objective (the objective at its last epoch, completed trials
only: a stopped trial has no final score). From each sweep's tables (trials.parquet, in the order trials ended):
  best final score vs epochs spent (mean and spread over the seeds, at tenths of the budget),
  the epochs each strategy needs to reach random search's final best (the mean over seeds of random's best at B).
Each sweep is a `csweep run` subprocess (its own local Ray). Run it under the Ray lock on a shared machine:

    flock /tmp/csweep-ray.lock .venv/bin/python bench/bench_search.py [--space quickstart] [--seeds 3]
        [--budget-trials 12] [--asha-factor 3] [--epochs 10] [--grace-period G] [--set method=supcon] [--out DIR]
        [--strategies tpe+asha --target RANDOM_BEST]   (one strategy against an earlier run's random best)
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
STRATEGIES = {"tpe+asha": ("tpe", "asha"), "tpe": ("tpe", "fifo"), "random": ("random", "fifo")}


def run_sweep(strategy: str, seed: int, a: argparse.Namespace, storage: Path) -> str:
    sampler, scheduler = STRATEGIES[strategy]
    trials = a.budget_trials * (a.asha_factor if scheduler == "asha" else 1)
    name = f"{strategy.replace('+', '-')}-s{seed}"
    cmd = [sys.executable, "-m", "search.cli", "run", a.space, "--sampler", sampler, "--scheduler", scheduler,
           "--trials", str(trials), "--seed", str(seed), "--name", name, "--storage-path", str(storage),
           "--objective", f"{a.objective}:max", "--set", f"epochs={a.epochs}"]
    if scheduler == "asha":
        cmd += ["--reduction-factor", str(a.reduction_factor)]
        if a.grace_period:
            cmd += ["--grace-period", str(a.grace_period)]
    for s in a.overrides:
        cmd += ["--set", s]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{name} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    print(f"  {name}: {trials} trial(s) in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return name


def curve(storage: Path, name: str, objective: str) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative epochs spent and best final score so far, trial by trial in the order they ended."""
    from analysis.tables import build_tables

    trials = build_tables(storage / name).trials.sort_values("end_time")
    spent = trials["epochs_run"].fillna(0).to_numpy(dtype=float).cumsum()
    final = np.where(trials["status"].astype(str) == "completed", trials[objective].to_numpy(dtype=float), np.nan)
    best = np.fmax.accumulate(np.nan_to_num(final, nan=-np.inf))
    return spent, best


def best_at(spent: np.ndarray, best: np.ndarray, budget: float) -> float:
    i = np.searchsorted(spent, budget, side="right") - 1
    return float(best[i]) if i >= 0 and np.isfinite(best[i]) else math.nan


def epochs_to_reach(spent: np.ndarray, best: np.ndarray, target: float, budget: float) -> float:
    hit = np.nonzero((best >= target) & (spent <= budget))[0]
    return float(spent[hit[0]]) if len(hit) else math.nan


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--space", default="quickstart")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--budget-trials", type=int, default=12, help="full-length trials the budget pays for")
    p.add_argument("--asha-factor", type=int, default=3, help="tpe+asha samples this many times more trials")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--grace-period", type=int, default=None, help="ASHA grace period (default csweep's 10 %%)")
    p.add_argument("--reduction-factor", type=float, default=3.0)
    p.add_argument("--objective", default="knn_top1", help="per-epoch metric ASHA ranks on and the final score")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--out", default=None, help="keep the sweeps here (default: a temporary directory)")
    p.add_argument("--strategies", default=",".join(STRATEGIES), help="comma-separated subset to run")
    p.add_argument("--target", type=float, default=None,
                   help="random search's final best from an earlier run (needed when random is not run)")
    a = p.parse_args()
    strategies = [x for x in a.strategies.split(",") if x]
    unknown = [x for x in strategies if x not in STRATEGIES]
    if unknown or ("random" not in strategies and a.target is None):
        p.error(f"--strategies must be among {', '.join(STRATEGIES)} and include random unless --target is given")

    budget = float(a.budget_trials * a.epochs)
    with tempfile.TemporaryDirectory() as tmp:
        storage = Path(a.out or tmp).resolve()
        curves: dict[str, list] = {s: [] for s in strategies}
        t0 = time.perf_counter()
        for seed in range(a.seeds):
            for strategy in strategies:
                curves[strategy].append(curve(storage, run_sweep(strategy, seed, a, storage), a.objective))
        wall = time.perf_counter() - t0

    grid = [budget * k / 10 for k in range(1, 11)]
    target = a.target if a.target is not None else float(np.nanmean([best_at(s, b, budget)
                                                                      for s, b in curves["random"]]))
    print(f"command: {' '.join(['bench/bench_search.py', *sys.argv[1:]])}  ({wall / 60:.1f} min)")
    print(f"budget {budget:g} epochs per run; score: final {a.objective} of completed trials; "
          f"random's final best (mean over {a.seeds} seeds): {target:.4f}\n")
    print("| strategy | " + " | ".join(f"{g:g} ep" for g in grid) + " | epochs to reach random's best |")
    print("| --- |" + " ---: |" * (len(grid) + 1))
    summary = {}
    for strategy, runs in curves.items():
        cells = []
        for g in grid:
            v = np.array([best_at(s, b, g) for s, b in runs])
            cells.append(f"{np.nanmean(v):.3f} ± {np.nanstd(v):.3f}" if np.isfinite(v).any() else "-")
        reach = np.array([epochs_to_reach(s, b, target, budget) for s, b in runs])
        got = np.isfinite(reach)
        reach_cell = (f"{np.nanmean(reach):.0f} ({got.sum()}/{len(runs)} seeds)" if got.any()
                      else f"not within {budget:g}")
        print(f"| {strategy} | " + " | ".join(cells) + f" | {reach_cell} |")
        summary[strategy] = {"best_at_budget": [best_at(s, b, budget) for s, b in runs],
                             "epochs_to_reach": reach.tolist()}
    print("\n" + json.dumps({"target": target, "budget_epochs": budget, **summary}))


if __name__ == "__main__":
    main()
