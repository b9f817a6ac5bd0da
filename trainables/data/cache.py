"""The node-level cache: each dataset decoded once per node into ``.npy`` files (written atomically, under a lock
so that trials starting together decode it once), split with a fixed seed, and opened memory-mapped."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from trainables.data.checks import CHANNELS, SPECS, DataError, Split, one_line
from trainables.data.readers import ArraySource, FileSource, Plan, RawData

__all__ = ["CACHE_VERSION", "Parts", "cache_entry", "channel_stats", "open_split", "split_layout"]

CACHE_VERSION = 1  # bump when decoding or splitting changes, so stale cache entries are never reused
_SPLIT_SEED = 0
_HOLDOUT_FRACTION = 0.1
_HOLDOUT_MAX = 10_000
_CHUNK = 1024  # images decoded / written per step (bounds memory: 1024 x 3 x 224 x 224 B = 154 MB)


def _cache_root(cache_dir: Any) -> Path:
    if cache_dir is None:
        cache_dir = os.environ.get("CSWEEP_CACHE") or Path.home() / ".cache" / "contrastive-sweeps"
    return Path(cache_dir).expanduser().resolve()


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Exclusive lock across processes, so trials starting together on one node decode a dataset once."""
    try:
        import fcntl
    except ImportError:  # not POSIX: concurrent writers are still safe (atomic replace), only wasteful
        yield
        return
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


@contextlib.contextmanager
def _atomic(path: Path) -> Iterator[Path]:
    """A temporary path in ``path``'s folder, renamed onto ``path`` when the block succeeds, removed if it fails."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _write_split(entry: Path, split: str, parts: list[tuple[ArraySource | FileSource, np.ndarray]],
                 size: int) -> None:
    n = sum(len(idx) for _, idx in parts)
    with _atomic(entry / f"{split}_images.npy") as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, CHANNELS, size, size))
        at = 0
        for source, idx in parts:
            for start in range(0, len(idx), _CHUNK):
                chunk = source.read(idx[start:start + _CHUNK])
                out[at:at + len(chunk)] = chunk
                at += len(chunk)
        out.flush()
        del out
    labels = np.concatenate([source.labels[idx] for source, idx in parts]).astype(np.int64)
    with _atomic(entry / f"{split}_labels.npy") as tmp, open(tmp, "wb") as fh:
        np.save(fh, labels)


def _holdout(n: int) -> int:
    return min(_HOLDOUT_MAX, max(1, round(_HOLDOUT_FRACTION * n)))


def _split_indices(n: int, n_test: int, n_val: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fixed-seed (train_labeled, val, test) indices into the labelled pool, each sorted."""
    if n - n_test - n_val < 1:
        raise DataError(f"`data_dir` must hold at least {n_test + n_val + 1} labelled training images to hold out "
                        f"val ({n_val}) and test ({n_test}), but holds {n}")
    perm = np.random.default_rng(_SPLIT_SEED).permutation(n)
    test, val, train = perm[:n_test], perm[n_test:n_test + n_val], perm[n_test + n_val:]
    return np.sort(train), np.sort(val), np.sort(test)


def channel_stats(images: Any) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of uint8 ``images`` scaled to [0, 1], accumulated in float64 chunk by chunk."""
    total = np.zeros(images.shape[1])
    total_sq = np.zeros(images.shape[1])
    for start in range(0, len(images), _CHUNK):
        x = np.asarray(images[start:start + _CHUNK], dtype=np.float64) / 255.0
        total += x.sum(axis=(0, 2, 3))
        total_sq += (x * x).sum(axis=(0, 2, 3))
    count = images.shape[0] * images.shape[2] * images.shape[3]
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
    return mean.tolist(), np.maximum(std, 1e-6).tolist()


def _build_entry(entry: Path, plan: Plan, name: str, size: int) -> None:
    try:
        _write_entry(entry, plan, name, size)
    except BaseException:
        for partial in entry.glob("*.npy"):  # a failed ImageNet decode may have written tens of GB
            partial.unlink(missing_ok=True)
        raise


#: Where a split's images come from: (source, indices into it) parts, concatenated in order.
Parts = list[tuple[ArraySource | FileSource, np.ndarray]]


def split_layout(raw: RawData) -> tuple[dict[str, Parts], str]:
    """The fixed-seed splits of a dataset's sources (``train_labeled``, ``val``, ``test`` and, with unlabeled
    images, ``train``) and the name of the split pretraining iterates over. The cache and the streaming path both
    use it, so a streamed dataset has exactly the cached one's splits."""
    n = len(raw.pool)
    n_test = 0 if raw.test is not None else (raw.n_test if raw.n_test is not None else _holdout(n))
    n_val = raw.n_val if raw.n_val is not None else _holdout(n - n_test)
    train_idx, val_idx, test_idx = _split_indices(n, n_test, n_val)
    layout: dict[str, Parts] = {
        "train_labeled": [(raw.pool, train_idx)],
        "val": [(raw.pool, val_idx)],
        "test": [(raw.test, np.arange(len(raw.test)))] if raw.test is not None else [(raw.pool, test_idx)],
    }
    if raw.unlabeled is None:
        return layout, "train_labeled"
    layout["train"] = [(raw.pool, train_idx), (raw.unlabeled, np.arange(len(raw.unlabeled)))]
    return layout, "train"


def _write_entry(entry: Path, plan: Plan, name: str, size: int) -> None:
    raw = plan.build()
    layout, train_file = split_layout(raw)
    for split, parts in layout.items():
        _write_split(entry, split, parts, size)
    meta: dict[str, Any] = {"version": CACHE_VERSION, "name": name, "num_classes": raw.num_classes,
                            "channels": CHANNELS, "image_size": size, "train_file": train_file,
                            "mean": None, "std": None}
    if SPECS[name].mean is None:  # digits, folder: statistics of the training images
        meta["mean"], meta["std"] = channel_stats(np.load(entry / "train_labeled_images.npy", mmap_mode="r"))
    with _atomic(entry / "meta.json") as tmp:  # written last: its presence marks a complete entry
        tmp.write_text(json.dumps(meta, indent=1))


def open_split(entry: Path, stem: str) -> Split:
    images_path = entry / f"{stem}_images.npy"
    images = np.load(images_path, mmap_mode="r")
    if images.size == 0:  # a zero-length file cannot be memory-mapped
        images = np.load(images_path)
    labels = np.load(entry / f"{stem}_labels.npy")
    labels.setflags(write=False)
    return Split(images, labels)


def cache_entry(plan: Plan, name: str, size: int, cache_dir: Any) -> Path:
    """The cache folder of a located dataset, decoded and written first if this node does not hold it yet."""
    key = json.dumps([CACHE_VERSION, name, str(plan.root) if plan.root else None, size, plan.fingerprint])
    entry = _cache_root(cache_dir) / f"{name}-{size}px-{hashlib.sha256(key.encode()).hexdigest()[:20]}"
    if not (entry / "meta.json").exists():
        try:
            entry.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataError(f"`cache_dir` must be writable, but creating {str(entry)!r} failed: {one_line(exc)}") \
                from exc
        with _locked(entry / ".lock"):
            if not (entry / "meta.json").exists():  # another process may have finished it while we waited
                _build_entry(entry, plan, name, size)
    return entry
