"""Images/s of BatchAugment(supcon_augment(32)) against the per-image torchvision.transforms.v2 pipeline.

Both run on the same batch of random CIFAR-size uint8 images: BatchAugment in one call per batch on ``--device``
(on the CPU with torch's threads and with one), the v2 pipeline (RandomResizedCrop, RandomHorizontalFlip,
RandomApply(ColorJitter), RandomGrayscale, ToDtype, Normalize) image by image on one CPU thread, as a DataLoader
worker runs it. Prints a markdown table.

    python bench/bench_augment.py [--batch 256] [--seconds 5] [--device cpu|cuda] [--threads N]
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Callable

import torch
from torchvision.transforms import v2

from trainables.data.augment import BatchAugment, supcon_augment

CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)


def images_per_second(step: Callable[[], object], n_images: int, seconds: float, sync: Callable[[], None]) -> float:
    """Run ``step`` (one pass over ``n_images``) once to warm up, then for about ``seconds``; return images/s."""
    step()
    sync()
    done, start = 0, time.perf_counter()
    while True:
        step()
        sync()
        done += n_images
        elapsed = time.perf_counter() - start
        if elapsed >= seconds:
            return done / elapsed


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=256, help="images per batch")
    parser.add_argument("--size", type=int, default=32, help="image side (CIFAR: 32)")
    parser.add_argument("--seconds", type=float, default=5.0, help="timed seconds per pipeline")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="device of BatchAugment (the v2 pipeline always runs per image on the CPU)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

    images = torch.randint(0, 256, (args.batch, 3, args.size, args.size), dtype=torch.uint8,
                           generator=torch.Generator().manual_seed(0))
    batched = BatchAugment(supcon_augment(args.size), mean=CIFAR_MEAN, std=CIFAR_STD)
    on_device = images.to(device)
    generator = torch.Generator(device=device).manual_seed(0)
    per_image = v2.Compose([
        v2.RandomResizedCrop(args.size, scale=(0.2, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        v2.RandomGrayscale(p=0.2),
        v2.ToDtype(torch.float32, scale=True),
        v2.Normalize(CIFAR_MEAN, CIFAR_STD),
    ])
    torch.manual_seed(0)

    threads = torch.get_num_threads()
    where = f"cpu, {threads} threads" if device.type == "cpu" else str(device)
    rows = [(f"BatchAugment(supcon_augment({args.size})), one call per batch", where,
             images_per_second(lambda: batched(on_device, generator), args.batch, args.seconds, sync))]
    torch.set_num_threads(1)  # the per-core comparison: a DataLoader worker runs the v2 pipeline on one core
    if device.type == "cpu" and threads > 1:
        rows.append((rows[0][0], "cpu, 1 thread",
                     images_per_second(lambda: batched(on_device, generator), args.batch, args.seconds, sync)))
    rate_v2 = images_per_second(lambda: torch.stack([per_image(img) for img in images]), args.batch, args.seconds,
                                lambda: None)
    rows.append(("torchvision.transforms.v2, per image", "cpu, 1 thread", rate_v2))

    print("command: " + " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]))
    print(f"torch {torch.__version__}, batch {args.batch} x 3 x {args.size} x {args.size} uint8, "
          f"{args.seconds:g} s timed per row\n")
    print("| pipeline | device | images/s | vs. v2 |")
    print("|---|---|---:|---:|")
    for name, where, rate in rows:
        print(f"| {name} | {where} | {rate:,.0f} | {rate / rate_v2:.1f}x |")


if __name__ == "__main__":
    main()
