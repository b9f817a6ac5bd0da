"""Trials per hour with K trials sharing one device: what ``--gpus-per-worker 1/K`` buys on a GPU.

Runs K identical short trials (``trainables.loop.fit``, no Ray: the GPU machine has none) as K concurrent processes
on one device, for K in ``--share`` (default 1, 2, 4, 8), and reports trials per hour = K * 3600 / (wall time of the
slowest), and the speed-up over K = 1. Each trial: SupCon, ResNet-18 (CIFAR stem) at ``--width`` on random
CIFAR-shaped data (``--images`` images, ``--epochs`` epochs, batch ``--batch``), kNN on a small val split, no probe.

    python bench/bench_share.py [--share 1,2,4,8] [--width 1.0] [--images 4096] [--epochs 2] [--batch 256]
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time

import torch


def one_trial(a: argparse.Namespace) -> dict[str, float]:
    from bench_train_step import synthetic_cifar

    from trainables.loop import RecordingReporter, fit
    from trainables.trial import TrialSpec

    data = synthetic_cifar(a.images)
    spec = TrialSpec.from_settings("supcon", {"width": a.width, "batch_size": a.batch, "epochs": a.epochs,
                                              "probe_epochs": 0, "knn_k": 20, "lr": 0.1})
    rec = RecordingReporter()
    fit(spec, reporter=rec, data=data)
    return {"images_per_s": rec.metrics[-1]["images_per_s"], "peak_mem_mb": rec.metrics[-1]["peak_mem_mb"]}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--share", default="1,2,4,8")
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--images", type=int, default=4096)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--threads", type=int, default=1, help="CPU threads per trial")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.child:
        print(json.dumps(one_trial(a)))
        return
    child = [sys.executable, __file__, "--child", f"--width={a.width}", f"--images={a.images}",
             f"--epochs={a.epochs}", f"--batch={a.batch}", f"--threads={a.threads}"]
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    print("command: python bench/bench_share.py " + shlex.join(argv if argv is not None else sys.argv[1:]))
    print(f"device: {device}; SupCon ResNet-18 x{a.width}, {a.images} images x {a.epochs} epochs, batch {a.batch}\n")
    print("| trials sharing the device | wall (s) | trials / hour | vs 1 | images/s per trial | peak MiB per trial |")
    print("| ---: | ---: | ---: | ---: | ---: | ---: |")
    base = None
    for k in (int(x) for x in a.share.split(",")):
        t0 = time.perf_counter()
        procs = [subprocess.Popen(child, stdout=subprocess.PIPE, text=True) for _ in range(k)]
        outs = [json.loads(proc.communicate()[0].strip().splitlines()[-1]) for proc in procs]
        wall = time.perf_counter() - t0
        per_hour = k * 3600 / wall
        base = base or per_hour
        ips = sum(o["images_per_s"] for o in outs) / k
        mem = max(o["peak_mem_mb"] for o in outs)
        print(f"| {k} | {wall:.1f} | {per_hour:.0f} | {per_hour / base:.2f} | {ips:.0f} | {mem:.0f} |", flush=True)


if __name__ == "__main__":
    main()
