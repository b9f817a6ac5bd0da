"""Performance on one machine (issue 16): every row of the issue's table, side by side in one run.

1. CLI start: wall seconds of ``csweep --help`` and ``csweep`` alone (fresh interpreters, best of 3).
2. Train step vs the machine: fp32 matmul GFLOP/s and a ResNet-18 CIFAR training step's GFLOP/s (FLOPs of forward
   and backward counted by ``torch.utils.flop_counter``), in contiguous and channels_last memory formats,
   interleaved rounds, best of each (what ``memory_format=auto`` is chosen by).
3. ``csweep train`` (its default, the inline executor for one local worker, and ``--executor train``) vs plain
   ``trainables.loop.fit`` of the same spec at the same threads, all as fresh processes timed from start to exit
   (Ray start, imports, checkpoints and the final probe included).
4. Per-trial overhead of a sweep per executor (``bench_overhead.py``): Ray started once, before timing.

    PYTHONPATH=. .venv/bin/python bench/bench_perf.py [--threads 2] [--train-epochs 2] [--train-width 1.0]
        [--train-rounds 1] [--trials 4] [--epochs 2] [--sections start,step,train,sweep]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


def _wall(cmd: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=ROOT, env=ENV, capture_output=True, text=True)
    if out.returncode not in (0, 2):  # `csweep` alone prints its usage and exits 2
        raise RuntimeError(f"{' '.join(cmd)} failed: {out.stderr[-2000:]}")
    return time.perf_counter() - t0, out.stdout


def cli_start() -> dict[str, float]:
    cli = [sys.executable, "-m", "search.cli"]
    return {name: min(_wall(cli + argv)[0] for _ in range(3)) for name, argv in (("--help", ["--help"]), ("", []))}


def matmul_gflops(n: int = 1024, reps: int = 10) -> float:
    import torch

    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        for _ in range(reps):
            torch.mm(a, b)
        best = min(best, (time.perf_counter() - t0) / reps)
    return 2 * n**3 / best / 1e9


def step_gflops(batch: int, steps: int, rounds: int) -> tuple[float, dict[str, tuple[float, float]]]:
    """Matmul GFLOP/s and {memory format: (GFLOP/s, images/s)} of a ResNet-18 CIFAR cross-entropy SGD step, each
    the best over ``rounds`` interleaved rounds (matmul, then ``steps`` steps per format), so that a busy spell of
    a shared machine hits all of them alike."""
    import torch
    import torch.nn.functional as F
    from torch.utils.flop_counter import FlopCounterMode

    from trainables.nets import build_backbone

    torch.manual_seed(0)
    x0 = torch.randn(batch, 3, 32, 32)
    y = torch.randint(0, 10, (batch,))
    runs = {}
    for fmt in ("contiguous", "channels_last"):
        mf = torch.channels_last if fmt == "channels_last" else torch.contiguous_format
        backbone = build_backbone("resnet18", stem="cifar", width=1.0)
        model = torch.nn.Sequential(backbone, torch.nn.Linear(backbone.feature_dim, 10)).to(memory_format=mf)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
        x = x0.contiguous(memory_format=mf)

        def step(model=model, opt=opt, x=x) -> None:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        step()  # warm-up
        with FlopCounterMode(display=False) as counter:
            step()
        runs[fmt] = (step, counter.get_total_flops())
    best = {fmt: float("inf") for fmt in runs}
    mm = 0.0
    for _ in range(rounds):
        mm = max(mm, matmul_gflops())
        for fmt, (step, _) in runs.items():
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            best[fmt] = min(best[fmt], (time.perf_counter() - t0) / steps)
    return mm, {fmt: (runs[fmt][1] / best[fmt] / 1e9, batch / best[fmt]) for fmt in runs}


_PLAIN = """
import json, sys, torch
torch.set_num_threads({threads})
from trainables.loop import fit
from trainables.trial import prepare_trial
spec = prepare_trial("supcon", {settings!r}, workers=1, gpus_per_worker=0)
m = fit(spec)
print(json.dumps({{"images_per_s": m["images_per_s"], "linear_top1": m["linear_top1"]}}))
"""


def train_vs_plain(threads: int, epochs: int, width: float, rounds: int = 1) -> dict[str, tuple[float, float]]:
    """{how: (wall seconds, images/s of the last epoch)} for ``csweep train`` with its default executor (``""``:
    inline, one local worker), with ``" --executor train"`` (Ray Train), and ``"plain fit"`` of one spec; the best
    of ``rounds`` interleaved rounds, each command a fresh process on fresh storage."""
    settings = {"dataset": "digits", "epochs": epochs, "width": width}
    cli = [sys.executable, "-m", "search.cli", "train", "supcon", "--dataset", "digits", "--epochs", str(epochs),
           "--set", f"width={width}", "--cpus-per-worker", str(threads), "--json", "--name", "bench"]
    commands = {
        "": cli,  # the default: --executor auto, inline for one local worker
        " --executor train": [*cli, "--executor", "train"],
        "plain fit": [sys.executable, "-c", _PLAIN.format(threads=threads, settings=settings)],
    }
    best: dict[str, tuple[float, float]] = {}
    for _ in range(rounds):
        for how, cmd in commands.items():
            with tempfile.TemporaryDirectory() as storage:
                wall, out = _wall([*cmd, "--storage-path", storage] if cmd[1] == "-m" else cmd)
            ips = json.loads(out.strip().splitlines()[-1])["images_per_s"]
            if wall < best.get(how, (float("inf"),))[0]:
                best[how] = (wall, ips)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--train-epochs", type=int, default=2)
    p.add_argument("--train-width", type=float, default=1.0)
    p.add_argument("--train-rounds", type=int, default=1, help="interleaved rounds of the train section (best kept)")
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--sections", default="start,step,train,sweep",
                   help="comma-separated subset of start, step, train, sweep (train and sweep start Ray)")
    a = p.parse_args()
    sections = set(a.sections.split(","))
    print(f"command: PYTHONPATH=. .venv/bin/python bench/bench_perf.py --threads {a.threads} --train-epochs "
          f"{a.train_epochs} --train-width {a.train_width} --train-rounds {a.train_rounds} --trials {a.trials} --epochs {a.epochs} --batch {a.batch} "
          f"--steps {a.steps} --rounds {a.rounds} --sections {a.sections}  (load average at start: "
          f"{os.getloadavg()[0]:.1f})", flush=True)
    rows: list[tuple[str, str]] = []

    if "start" in sections:
        start = cli_start()
        rows.append(("`csweep --help` / `csweep` alone, wall s", f"{start['--help']:.2f} / {start['']:.2f}"))
        print(rows[-1], flush=True)

    import torch

    torch.set_num_threads(a.threads)
    if "step" in sections:
        mm, step = step_gflops(a.batch, a.steps, a.rounds)
        for fmt, (gflops, ips) in step.items():
            rows.append((f"ResNet-18 CIFAR step, batch {a.batch}, {a.threads} threads, {fmt}: GFLOP/s (img/s) vs "
                         f"matmul {mm:.0f} GFLOP/s", f"{gflops:.0f} ({ips:.1f} img/s), {gflops / mm:.0%} of matmul"))
            print(rows[-1], flush=True)
        rows.append(("channels_last / contiguous step speed",
                     f"{step['channels_last'][1] / step['contiguous'][1]:.2f}x"))
        print(rows[-1], flush=True)

    if "train" in sections:
        tp = train_vs_plain(a.threads, a.train_epochs, a.train_width, a.train_rounds)
        ps, pips = tp.pop("plain fit")
        for flag, (cs, cips) in tp.items():
            rows.append((f"`csweep train supcon --dataset digits --epochs {a.train_epochs} --set width={a.train_width}"
                         f"{flag}` vs plain `fit`, {a.threads} threads, fresh processes, best of {a.train_rounds}: "
                         "wall s (img/s)",
                         f"{cs:.1f} ({cips:.1f}) vs {ps:.1f} ({pips:.1f}): {cs / ps:.2f}x"))
            print(rows[-1], flush=True)
    if "sweep" in sections:
        rows += sweep_rows(a.trials, a.epochs)
    print("\n| what | measured |\n| --- | --- |")
    for what, value in rows:
        print(f"| {what} | {value} |")


def sweep_rows(trials: int, epochs: int) -> list[tuple[str, str]]:
    """Rows of the per-trial overhead of each executor (starts Ray in this process, shuts it down at the end)."""
    from bench_overhead import plain_seconds, sweep_seconds

    rows = []
    plain = plain_seconds(trials, epochs)
    from search.cluster import init_ray

    ray = init_ray(num_cpus=2, driver_slots=1)
    try:
        with tempfile.TemporaryDirectory() as storage:
            for executor in ("inline", "train"):
                t = sweep_seconds(executor, trials, epochs, storage)
                rows.append((f"sweep of {trials} trials x {epochs} epochs, {executor} executor: s/trial vs plain "
                             f"{plain:.2f}; overhead per trial; first trial; later trials' steady overhead",
                             f"{t.per_trial:.2f} ({t.per_trial / plain:.2f}x); {t.per_trial - plain:.2f}; "
                             f"{t.first:.2f}; {t.later - plain:.2f}"))
                print(rows[-1], flush=True)
    finally:
        ray.shutdown()
    return rows


if __name__ == "__main__":
    main()
