"""Every registered method on the same backbone and batch: time and memory of one training step, beside SupCon's.

Each configuration runs the method's own hooks exactly as ``trainables.loop.fit`` calls them per step
(``setup`` once, then ``views`` -> ``loss`` -> backward -> optimiser step -> ``after_step``) on random CIFAR-shaped
uint8 images, in a fresh subprocess, so that its peak memory is its own. The configurations are every registered
method with its defaults (optimiser settings from the method's recipe), plus SelfCon's ``small`` exit beside its
default ``fc``; ``--configs`` picks some. No Ray: it runs on a GPU machine as is. Memory:

- CPU: peak resident set size (``ru_maxrss``) minus the RSS just before the first step, i.e. what training adds on
  top of the process, model and data (activations, gradients, optimiser state, allocator slack). ``tracemalloc``
  does not see torch's allocations, and the profiler's memory view has no process-wide peak.
- CUDA: ``torch.cuda.max_memory_allocated`` minus the allocation before the first step.

Configurations run in interleaved rounds (supcon, simclr, ..., supcon, ...) and the median step time over all
rounds is reported, which evens out the load of a shared machine. Epoch time is extrapolated to CIFAR's 50,000
training images. Prints a markdown table and the ratios to SupCon.

    .venv/bin/python bench/bench_methods.py [--configs supcon,selfcon,...] [--width 0.25] [--batch 128] [--steps 6]
        [--rounds 2] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import shlex
import statistics
import subprocess
import sys
import time
from types import SimpleNamespace
from typing import Any

import torch

from trainables.methods import METHODS, Batch, RunShape, get_method
from trainables.optim import build_optimizer
from trainables.trial import TrialSpec

#: Settings that differ from a method's defaults: CMC with its README's 4096 negatives (the code's 16384 per anchor
#: and direction would dominate the step at these sizes).
OVERRIDES: dict[str, dict[str, Any]] = {"cmc": {"nce_k": 4096}}
#: Variants beside each method's defaults: name -> (method, method settings).
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "selfcon_small": ("selfcon", {"selfcon_pos": [False, True, False], "selfcon_size": "small"}),
    # CMC with L, a, b as three views: core view (L-a, L-b) and full graph (L-a, L-b, a-b)
    "cmc_core3": ("cmc", {"nce_k": 4096, "view_split": "channels", "view_mode": "core"}),
    "cmc_full3": ("cmc", {"nce_k": 4096, "view_split": "channels", "view_mode": "full"}),
}
CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    **{name: (name, OVERRIDES.get(name, {})) for name in sorted(METHODS, key=lambda m: (m != "supcon", m))},
    **VARIANTS}
CIFAR_TRAIN = 50_000
CIFAR = dict(num_classes=100, channels=3, image_size=32, mean=(0.5071, 0.4867, 0.4408), std=(0.2675, 0.2565, 0.2761))


def _rss_mb() -> float:
    """Current resident set size of this process in MiB (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def run_config(name: str, *, backbone: str, width: float, batch: int, steps: int, warmup: int,
               device: torch.device) -> dict[str, float]:
    """Time ``steps`` training steps of configuration ``name`` (after ``warmup`` untimed ones) in this process."""
    method_name, settings = CONFIGS[name]
    torch.manual_seed(0)
    spec = TrialSpec.from_settings(method_name, {"backbone": backbone, "width": width, "batch_size": batch,
                                                 "stem": "cifar", **settings})
    method = get_method(method_name)(spec.method_config, train=spec.train, data=SimpleNamespace(**CIFAR))
    method.setup(RunShape.of(spec.train, num_samples=CIFAR_TRAIN))
    model = method.build().to(device)
    optimizer = build_optimizer(model, spec.train)
    gen = torch.Generator(device=device).manual_seed(0)
    images = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8, device=device)
    labels = torch.randint(0, CIFAR["num_classes"], (batch,), device=device)
    data = Batch(images, labels, torch.arange(batch, device=device))
    cuda = device.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)

    def step(i: int) -> None:
        with torch.no_grad():
            views = method.views(images, gen)
        loss, _ = method.loss(model, views, data, step=i)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        method.after_step(model, step=i + 1)

    sync()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device) / 2**20 if cuda else _rss_mb()
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        step(i)
        sync()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    peak = (torch.cuda.max_memory_allocated(device) / 2**20 if cuda
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {"step_s": statistics.median(times), "step_times": times, "peak_mb": peak, "train_mem_mb": peak - base,
            "views": len(method.augmentations())}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, from {', '.join(CONFIGS)}")
    p.add_argument("--backbone", default="resnet18")
    p.add_argument("--width", type=float, default=0.25, help="channel multiplier (1.0: the real ResNet-18)")
    p.add_argument("--batch", type=int, default=128, help="images per step (both methods)")
    p.add_argument("--steps", type=int, default=6, help="timed steps per configuration and round")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds over the configurations")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)  # internal: run one configuration, print JSON
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    kw = dict(backbone=a.backbone, width=a.width, batch=a.batch, steps=a.steps, warmup=a.warmup,
              device=torch.device(a.device))
    if a.child:
        print(json.dumps(run_config(a.child, **kw)))
        return

    names = [n.strip() for n in a.configs.split(",") if n.strip()]
    unknown = sorted(set(names) - set(CONFIGS))
    if unknown or "supcon" not in names:
        p.error(f"--configs must include supcon and come from {', '.join(CONFIGS)}; got {a.configs!r}")
    print("command: .venv/bin/python bench/bench_methods.py " + shlex.join(argv if argv is not None else sys.argv[1:]))
    print(f"{a.backbone} x{a.width} (CIFAR stem, 32 px), batch {a.batch}, {a.steps} timed steps x {a.rounds} rounds, "
          f"device {a.device}, {a.threads} thread(s)\n")
    child_args = [f"--backbone={a.backbone}", f"--width={a.width}", f"--batch={a.batch}", f"--steps={a.steps}",
                  f"--warmup={a.warmup}", f"--threads={a.threads}", f"--device={a.device}"]
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    for _ in range(a.rounds):
        for name in names:
            out = subprocess.run([sys.executable, __file__, *child_args, f"--child={name}"], capture_output=True,
                                 text=True, check=True)
            results[name].append(json.loads(out.stdout.strip().splitlines()[-1]))

    rows = {}
    for name, runs in results.items():
        step_s = statistics.median(t for r in runs for t in r["step_times"])
        rows[name] = {"views": runs[0]["views"], "step_s": step_s, "epoch_s": step_s * CIFAR_TRAIN / a.batch,
                      "train_mem_mb": statistics.median(r["train_mem_mb"] for r in runs),
                      "peak_mb": statistics.median(r["peak_mb"] for r in runs)}
    ref = rows["supcon"]
    mem = "GPU allocated" if a.device.startswith("cuda") else "RSS"
    print(f"| config | views | step (s) | epoch est. (s, 50k) | training memory (MiB, {mem}) | peak {mem} (MiB) "
          "| time / SupCon | training memory / SupCon |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        time_ratio, mem_ratio = r["step_s"] / ref["step_s"], r["train_mem_mb"] / ref["train_mem_mb"]
        print(f"| {name} | {r['views']} | {r['step_s']:.3f} | {r['epoch_s']:.0f} | {r['train_mem_mb']:.0f} | "
              f"{r['peak_mb']:.0f} | {time_ratio:.2f} | {mem_ratio:.2f} |")


if __name__ == "__main__":
    main()
