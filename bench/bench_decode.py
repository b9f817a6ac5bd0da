"""Streaming decode throughput: images/s of ``data_loading=stream`` per decode thread vs reading the node cache.

Writes a folder of real JPEG files of ImageNet's typical shape (500 x 375, quality 90) into a temporary directory,
loads it as a ``folder`` dataset at ``--size`` px both streamed and cached, then times reading shuffled batches of
``--batch`` images the way the training loop does (``images[rows]``), streamed with 1, 2, ... ``--threads`` decode
threads, and from the memory-mapped cache. Prints a markdown table.

    .venv/bin/python bench/bench_decode.py [--images 512] [--size 224] [--batch 64] [--threads 2]
"""

from __future__ import annotations

import argparse
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from trainables.data import load_dataset


def write_folder(root: Path, n: int, *, classes: int = 8) -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (375 // 15, 500 // 20, 3), dtype=np.uint8)  # smooth-ish content compresses like photos
    for i in range(n):
        d = root / f"c{i % classes}"
        d.mkdir(parents=True, exist_ok=True)
        img = Image.fromarray(np.roll(base, i, axis=1)).resize((500, 375), Image.Resampling.BILINEAR)
        img.save(d / f"{i}.jpg", quality=90)


def images_per_s(images, batch: int, rounds: int = 3) -> float:
    rng = np.random.default_rng(1)
    best = 0.0
    for _ in range(rounds):
        rows = np.sort(rng.permutation(len(images))[:batch])
        t0 = time.perf_counter()
        images[rows]
        best = max(best, batch / (time.perf_counter() - t0))
    return best


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=512)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=2, help="largest number of decode threads to try")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "imgs"
        write_folder(root, a.images)
        cached = load_dataset("folder", data_dir=root, size=a.size, cache_dir=Path(tmp) / "cache", loading="cache")
        streamed = load_dataset("folder", data_dir=root, size=a.size, loading="stream")
        print("command: .venv/bin/python bench/bench_decode.py " + shlex.join(argv if argv is not None else sys.argv[1:]))
        print(f"{a.images} JPEG files 500x375 -> {a.size} px, batches of {a.batch}, best of 3\n")
        print("| read | images/s | images/s per decode thread |")
        print("| --- | ---: | ---: |")
        for threads in range(1, a.threads + 1):
            streamed.train.images.threads = threads
            streamed.train.images._pool = None
            rate = images_per_s(streamed.train.images, a.batch)
            print(f"| stream, {threads} decode thread(s) | {rate:.0f} | {rate / threads:.0f} |")
        print(f"| node cache (memory-mapped uint8) | {images_per_s(cached.train.images, a.batch):.0f} | - |")


if __name__ == "__main__":
    main()
