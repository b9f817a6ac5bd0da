"""Fidelity benchmark: every registered method with its ``digits`` preset, several seeds, against an untrained encoder.

For each method and seed it trains with :func:`trainables.loop.fit` (no Ray) and evaluates the untrained encoder of
the same configuration (:func:`trainables.loop.evaluate_untrained`); it reports kNN top-1 and linear top-1 as
``mean ± 95 % CI`` (Student t over seeds), the mean epoch time and the peak memory, and writes a Markdown table.

    CSWEEP_CACHE=/tmp/fid-cache python bench/bench_fidelity.py [--seeds 3] [--methods supcon,simclr]
        [--out BENCH_FIDELITY.md] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

import torch

from trainables.config import parse_overrides
from trainables.loop import RecordingReporter, evaluate_untrained, fit
from trainables.methods import METHODS
from trainables.trial import TrialSpec

#: two-sided 95 % Student t quantiles by degrees of freedom (1..10); beyond, the normal 1.96
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}


def mean_ci(values: list[float]) -> str:
    """``mean ± half-width`` of the 95 % t interval, in percent; a single value has no interval."""
    m = statistics.fmean(values)
    if len(values) < 2:
        return f"{100 * m:.1f}"
    half = T95.get(len(values) - 1, 1.96) * statistics.stdev(values) / math.sqrt(len(values))
    return f"{100 * m:.1f} ± {100 * half:.1f}"


def run_method(method: str, seeds: int, overrides: dict) -> dict[str, list[float]]:
    """Trained and untrained metrics of ``method``'s digits preset for seeds 0 .. seeds - 1."""
    out: dict[str, list[float]] = {k: [] for k in ("knn", "linear", "knn0", "linear0", "epoch_s", "mem_mb")}
    for seed in range(seeds):
        spec = TrialSpec.from_settings(method, {**overrides, "seed": seed}, preset="digits")
        reporter = RecordingReporter()
        last = fit(spec, reporter=reporter, device=torch.device("cpu"))
        untrained = evaluate_untrained(spec, device=torch.device("cpu"))
        out["knn"].append(last["knn_top1"])
        out["linear"].append(last["linear_top1"])
        out["knn0"].append(untrained["knn_top1"])
        out["linear0"].append(untrained["linear_top1"])
        out["epoch_s"].append(statistics.fmean(m["epoch_time_s"] for m in reporter.metrics))
        out["mem_mb"].append(max(m["peak_mem_mb"] for m in reporter.metrics))
    return out


def table(results: dict[str, dict[str, list[float]]], seeds: int) -> str:
    """The Markdown table: one row per method."""
    lines = [f"Digits preset, {seeds} seed(s), top-1 in % (mean ± 95 % CI); untrained = same net at initialisation.",
             "",
             "| method | kNN | kNN untrained | linear | linear untrained | epoch time (s) | peak memory (MB) |",
             "|---|---|---|---|---|---|---|"]
    for method, r in results.items():
        lines.append(f"| {method} | {mean_ci(r['knn'])} | {mean_ci(r['knn0'])} | {mean_ci(r['linear'])} | "
                     f"{mean_ci(r['linear0'])} | {statistics.fmean(r['epoch_s']):.2f} | {max(r['mem_mb']):.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds per method")
    parser.add_argument("--methods", default=",".join(sorted(METHODS)), help="comma-separated registered methods")
    parser.add_argument("--out", default="BENCH_FIDELITY.md", help="Markdown file to write")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="settings over the presets")
    args = parser.parse_args(argv)
    if args.seeds < 1:
        parser.error(f"--seeds must be >= 1, but got --seeds {args.seeds}")
    methods = [m for m in args.methods.split(",") if m]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"--methods must be among {', '.join(sorted(METHODS))}; got unknown {', '.join(unknown)}")
    overrides = parse_overrides(args.set)
    results = {}
    for method in methods:
        start = time.perf_counter()
        results[method] = run_method(method, args.seeds, overrides)
        print(f"{method}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    text = table(results, args.seeds)
    Path(args.out).write_text(text)
    print(text)


if __name__ == "__main__":
    main()
