"""Per-trial orchestration overhead of a sweep: the time a trial spends not training.

Runs the same N small trials (digits, tiny ResNet-18, a few epochs) three ways, side by side in one process:
  plain   back to back in one process through ``trainables.loop.fit`` (no Ray): the work itself;
  train   a Ray Tune sweep whose trials each start a Ray Train TorchTrainer (the documented Train-in-Tune
          pattern: driver function + TuneReportCallback), concurrency 1;
  inline  the same sweep with csweep's inline executor (the loop runs in the reused Tune actor), concurrency 1.
Overhead per trial = (sweep wall time - N x plain time per trial) / N. Ray is started once, before timing. The
sweep's time splits into its first trial (Tune actor start, imports in it, first dataset open and model build)
and each later trial (from one trial's end to the next one's end): the steady-state overhead is the latter minus
the plain time.

    .venv/bin/python bench/bench_overhead.py [--trials 4] [--epochs 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass

FIXED = {"dataset": "digits", "width": 0.125, "batch_size": 128, "probe_epochs": 10, "method": "supcon",
         "num_threads": 1}


@dataclass
class SweepTiming:
    """Seconds per trial of a sweep: over all trials, the first one, and the mean of the later ones."""

    per_trial: float
    first: float
    later: float


def plain_seconds(trials: int, epochs: int) -> float:
    """Seconds per trial of ``trials`` plain ``fit`` calls back to back (imports and caches warmed first)."""
    import torch

    from trainables.loop import fit, load_data
    from trainables.trial import TrialSpec

    torch.set_num_threads(1)
    settings = {k: v for k, v in FIXED.items() if k != "method"} | {"epochs": epochs}
    data = load_data(TrialSpec.from_settings("supcon", settings).train)
    fit(TrialSpec.from_settings("supcon", {**settings, "epochs": 1}), data=data)  # warm caches and imports
    t0 = time.perf_counter()
    for i in range(trials):
        fit(TrialSpec.from_settings("supcon", {**settings, "seed": i}), data=data)
    return (time.perf_counter() - t0) / trials


def _completion_clock():
    from ray.tune import Callback

    class Clock(Callback):
        def __init__(self) -> None:
            self.done: list[float] = []

        def on_trial_complete(self, iteration, trials, trial, **info) -> None:
            self.done.append(time.perf_counter())

    return Clock()


def sweep_seconds(executor: str, trials: int, epochs: int, storage: str) -> SweepTiming:
    """Time a FIFO random-search sweep of ``trials`` identical trials at concurrency 1 (Ray must be running)."""
    from search.spec import SweepConfig
    from search.sweep import build_tuner

    cfg = SweepConfig(name=f"bench-{executor}", space="supcon", storage_path=storage, fixed={**FIXED, "epochs": epochs},
                      trials=trials, concurrency=1, executor=executor, scheduler="fifo", sampler="random")
    clock = _completion_clock()
    t0 = time.perf_counter()
    build_tuner(cfg, concurrency=1, callbacks=[clock]).fit()
    total = time.perf_counter() - t0
    done = sorted(clock.done)
    later = (done[-1] - done[0]) / (len(done) - 1) if len(done) > 1 else float("nan")
    return SweepTiming(total / trials, done[0] - t0 if done else float("nan"), later)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--epochs", type=int, default=2)
    a = p.parse_args()
    plain = plain_seconds(a.trials, a.epochs)

    from search.cluster import init_ray

    init_ray(num_cpus=2, driver_slots=1)
    print(f"command: .venv/bin/python bench/bench_overhead.py --trials {a.trials} --epochs {a.epochs}")
    print("| how | s per trial | overhead per trial (s) | first trial (s) | later trials (s each) | "
          "steady overhead (s) |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    print(f"| plain loop, one process | {plain:.2f} | 0.00 | {plain:.2f} | {plain:.2f} | 0.00 |")
    with tempfile.TemporaryDirectory() as storage:
        for executor in ("train", "inline"):
            t = sweep_seconds(executor, a.trials, a.epochs, storage)
            print(f"| Tune sweep, {executor} executor | {t.per_trial:.2f} | {t.per_trial - plain:.2f} | "
                  f"{t.first:.2f} | {t.later:.2f} | {t.later - plain:.2f} |")


if __name__ == "__main__":
    main()
