"""Fused trials (trainables/fused.py): training throughput of K fused members against the same K trials unfused.

Each member is a SupCon trial on digits (``--width`` backbone, ``--batch``), members differing in lr, temperature
and seed, as a sweep's trials do. One measurement is one epoch of training steps (no evaluation: the kNN monitor and
probes run per member, fused or not): ``FusedRun.train_epoch`` for the K members at once, against
``trainables.loop.fit``'s epoch (``loop.train_epoch``) of each of the K trials one after another, both on the same
``--threads`` intra-op threads (equal cores). Rounds alternate fused and unfused and the median is kept, which evens
out the load of a shared machine. Trials per hour = K * 3600 / (epochs per trial * epoch time), with
``--epochs`` per trial; the ratio fused / unfused does not depend on it.

``--no-onednn`` runs the fused epochs with oneDNN (mkldnn) off, i.e. vmap's grouped convolutions on PyTorch's own
CPU kernels: the alternative measured when choosing how to fuse on CPU.

``--sweep`` measures whole sweeps instead (needs Ray): ``csweep run quickstart --set method=supcon --trials T
--fuse K --scheduler fifo`` for each K, with the CLI's default concurrency and threads (what a user gets on this
machine), K=1 being the unfused sweep; trials per hour = T * 3600 / wall time of the command (Ray start included).

    .venv/bin/python bench/bench_fused.py [--ks 1,2,4,8] [--width 0.125] [--batch 128] [--threads 2] [--rounds 3]
        [--epochs 10] [--device cpu] [--no-onednn] [--dataset digits] [--sweep [--trials 8]]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from trainables import loop
from trainables.fused import FusedRun
from trainables.trial import TrialSpec


def member_specs(k: int, *, width: float, batch: int, dataset: str = "digits") -> list[TrialSpec]:
    return [TrialSpec.from_settings("supcon", {"dataset": dataset, "width": width, "batch_size": batch, "epochs": 1,
                                               "seed": i,
                                               "lr": 0.05 * (1 + i / 8), "temperature": 0.1 + 0.02 * i},
                                    preset="digits") for i in range(k)]


def fused_epoch(specs: list[TrialSpec], data, device: torch.device, *, onednn: bool = True) -> float:
    run = FusedRun(specs, data=data, device=device)
    with torch.backends.mkldnn.flags(enabled=onednn):
        t0 = time.perf_counter()
        run.train_epoch(1)
        return time.perf_counter() - t0


def unfused_epochs(specs: list[TrialSpec], data, device: torch.device) -> float:
    total = 0.0
    for spec in specs:
        run = loop.setup(spec, data=data, device=device, resume_state=None)
        t0 = time.perf_counter()
        loop.train_epoch(run, 1)
        total += time.perf_counter() - t0
    return total


def sweeps(ks: list[int], *, trials: int, epochs: int, width: float, batch: int, rounds: int) -> None:
    """``--sweep``: wall time of whole ``csweep run --fuse K`` sweeps, one after another, rounds alternating K."""
    import os
    import subprocess
    import sys
    import tempfile

    walls: dict[int, list[float]] = {k: [] for k in ks}
    for r in range(rounds):
        for k in ks:
            with tempfile.TemporaryDirectory(prefix="csweep-bench-fused-") as tmp:
                args = [sys.executable, "-m", "search.cli", "run", "quickstart", "--set", "method=supcon",
                        "--trials", str(trials), "--fuse", str(k), "--scheduler", "fifo", "--name", f"f{k}r{r}",
                        "--storage-path", tmp, "--set", f"epochs={epochs}", "--set", f"width={width}",
                        "--set", f"batch_size={batch}"]
                t0 = time.perf_counter()
                subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "PYTHONPATH": os.getcwd()})
                walls[k].append(time.perf_counter() - t0)
    print(f"sweeps of {trials} SupCon trials on digits, {epochs} epochs, width={width} batch={batch}, fifo, "
          f"rounds={rounds}\n")
    print("| K | sweep wall (s) | trials/h | vs K=1 |")
    print("|---|---|---|---|")
    base = statistics.median(walls[ks[0]])
    for k in ks:
        w = statistics.median(walls[k])
        print(f"| {k} | {w:.1f} | {trials * 3600 / w:.0f} | {base / w:.2f}x |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--ks", default="1,2,4,8")
    p.add_argument("--dataset", default="digits", help="digits, or cifar10 etc. (one epoch each: mind the size)")
    p.add_argument("--width", type=float, default=0.125)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-onednn", action="store_true", help="fused epochs with oneDNN (mkldnn) convolutions off")
    p.add_argument("--sweep", action="store_true", help="whole `csweep run --fuse K` sweeps (needs Ray)")
    p.add_argument("--trials", type=int, default=8, help="--sweep: trials per sweep")
    args = p.parse_args()
    if args.sweep:
        return sweeps([int(k) for k in args.ks.split(",")], trials=args.trials, epochs=args.epochs,
                      width=args.width, batch=args.batch, rounds=args.rounds)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    ks = [int(k) for k in args.ks.split(",")]
    one = member_specs(1, width=args.width, batch=args.batch, dataset=args.dataset)
    data = loop.load_data(one[0].train)
    fused: dict[int, list[float]] = {k: [] for k in ks}
    unfused: dict[int, list[float]] = {k: [] for k in ks}
    fused_epoch(one, data, device)  # warm-up (allocator, oneDNN)
    for _ in range(args.rounds):
        for k in ks:
            specs = member_specs(k, width=args.width, batch=args.batch, dataset=args.dataset)
            fused[k].append(fused_epoch(specs, data, device, onednn=not args.no_onednn))
            unfused[k].append(unfused_epochs(specs, data, device))
    print(f"device={device} threads={args.threads} width={args.width} batch={args.batch} rounds={args.rounds} "
          f"epochs/trial={args.epochs} onednn={'off' if args.no_onednn else 'on'} (fused)\n")
    print("| K | fused epoch (s) | K unfused epochs (s) | fused trials/h | unfused trials/h | fused / unfused |")
    print("|---|---|---|---|---|---|")
    for k in ks:
        f, u = statistics.median(fused[k]), statistics.median(unfused[k])
        fph, uph = (k * 3600 / (args.epochs * t) for t in (f, u))
        print(f"| {k} | {f:.2f} | {u:.2f} | {fph:.0f} | {uph:.0f} | {u / f:.2f}x |")


if __name__ == "__main__":
    main()
