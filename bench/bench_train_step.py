"""Train-step throughput: a ResNet-18 CIFAR trial through ``trainables.loop.fit`` vs a plain PyTorch loop.

Both train the same model (ResNet-18, CIFAR stem, 32 px, cross-entropy) on the same synthetic CIFAR-shaped data
with SGD, side by side in one process; the trial also does its real work per step (uint8 batch read from the
memory-mapped split, on-device augmentation, lr schedule) and its epoch-end kNN evaluation is excluded (we compare
``images_per_s``, which the loop measures over the training steps only).

    .venv/bin/python bench/bench_train_step.py [--width 1.0] [--batch 64] [--steps 8] [--threads 2]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F

from trainables.data import ImageData, Split
from trainables.loop import fit
from trainables.nets import build_backbone
from trainables.trial import TrialSpec


def synthetic_cifar(n: int, seed: int = 0) -> ImageData:
    rng = np.random.default_rng(seed)

    def split(k: int) -> Split:
        return Split(rng.integers(0, 256, (k, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, k).astype(np.int64))

    train = split(n)
    return ImageData(name="synthetic-cifar", num_classes=10, channels=3, image_size=32,
                     mean=(0.4914, 0.4822, 0.4465), std=(0.2023, 0.1994, 0.2010), train=train, train_labeled=train,
                     val=split(64), test=split(64))


def plain_loop(width: float, batch: int, steps: int, data: ImageData) -> float:
    """images/s of the textbook loop: model, SGD, pre-normalised float batches already in memory."""
    torch.manual_seed(0)
    backbone = build_backbone("resnet18", stem="cifar", width=width)
    model = torch.nn.Sequential(backbone, torch.nn.Linear(backbone.feature_dim, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=1e-4)
    x = (torch.from_numpy(data.train.images[:batch]).float() / 255 - 0.5) / 0.25
    y = torch.from_numpy(data.train.labels[:batch])
    model.train()
    for _ in range(2):  # warm-up
        F.cross_entropy(model(x), y).backward()
        opt.step()
        opt.zero_grad()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return steps * batch / (time.perf_counter() - t0)


def trial_loop(width: float, batch: int, steps: int, data: ImageData) -> float:
    spec = TrialSpec.from_settings("ce", {"width": width, "batch_size": batch, "epochs": 2, "lr": 0.05,
                                          "probe_epochs": 0, "knn_k": 5})
    from trainables.loop import RecordingReporter

    rec = RecordingReporter()
    fit(spec, reporter=rec, data=data)
    return rec.metrics[-1]["images_per_s"]  # epoch 2: after warm-up


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    data = synthetic_cifar(a.batch * a.steps)
    plain = plain_loop(a.width, a.batch, a.steps, data)
    trial = trial_loop(a.width, a.batch, a.steps, data)
    plain2 = plain_loop(a.width, a.batch, a.steps, data)  # bracket the trial: this machine is noisy
    plain = (plain + plain2) / 2
    print(f"command: .venv/bin/python bench/bench_train_step.py --width {a.width} --batch {a.batch} "
          f"--steps {a.steps} --threads {a.threads}")
    print("| loop | images/s | ratio |")
    print("| --- | ---: | ---: |")
    print(f"| plain PyTorch (ResNet-18 width {a.width}, batch {a.batch}) | {plain:.1f} | 1.00 |")
    print(f"| csweep trial loop (fit, ce, same model) | {trial:.1f} | {trial / plain:.2f} |")


if __name__ == "__main__":
    main()
