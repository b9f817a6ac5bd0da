"""Per-trial orchestration overhead of a sweep: the time a trial spends not training.

Runs the same N small trials (digits, tiny ResNet-18, a few epochs) three ways, side by side in one process:
  plain   back to back in one process through ``trainables.loop.fit`` (no Ray): the work itself;
  train   a Ray Tune sweep whose trials each start a Ray Train TorchTrainer (the documented Train-in-Tune
          pattern: driver function + TuneReportCallback), concurrency 1;
  inline  the same sweep with csweep's inline executor (the loop runs in the reused Tune actor), concurrency 1.
Overhead per trial = (sweep wall time - N x plain time per trial) / N. Ray is started once, before timing.

    .venv/bin/python bench/bench_overhead.py [--trials 4] [--epochs 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--epochs", type=int, default=2)
    a = p.parse_args()
    fixed = {"dataset": "digits", "width": 0.125, "batch_size": 128, "epochs": a.epochs, "probe_epochs": 10,
             "method": "supcon", "num_threads": 1}
    torch.set_num_threads(1)

    from trainables.loop import fit, load_data
    from trainables.trial import TrialSpec

    settings = {k: v for k, v in fixed.items() if k != "method"}
    data = load_data(TrialSpec.from_settings("supcon", settings).train)
    fit(TrialSpec.from_settings("supcon", {**settings, "epochs": 1}), data=data)  # warm caches and imports
    t0 = time.perf_counter()
    for i in range(a.trials):
        fit(TrialSpec.from_settings("supcon", {**settings, "seed": i}), data=data)
    plain = (time.perf_counter() - t0) / a.trials

    from search.cluster import init_ray
    from search.spec import SweepConfig
    from search.sweep import build_tuner

    init_ray(num_cpus=2, driver_slots=1)
    rows = [("plain loop, one process", plain, 0.0)]
    with tempfile.TemporaryDirectory() as storage:
        for executor in ("train", "inline"):
            cfg = SweepConfig(name=f"bench-{executor}", space="supcon", storage_path=storage, fixed=fixed,
                              trials=a.trials, concurrency=1, executor=executor, scheduler="fifo", sampler="random")
            t0 = time.perf_counter()
            build_tuner(cfg, concurrency=1).fit()
            per_trial = (time.perf_counter() - t0) / a.trials
            rows.append((f"Tune sweep, {executor} executor", per_trial, per_trial - plain))
    print(f"command: .venv/bin/python bench/bench_overhead.py --trials {a.trials} --epochs {a.epochs}")
    print("| how | seconds per trial | overhead per trial (s) |")
    print("| --- | ---: | ---: |")
    for name, seconds, overhead in rows:
        print(f"| {name} | {seconds:.2f} | {overhead:.2f} |")


if __name__ == "__main__":
    main()
