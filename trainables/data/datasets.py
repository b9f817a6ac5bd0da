"""Image datasets as uint8 arrays ``[N, C, H, W]``, decoded once per node and shared through the page cache.

:func:`load_dataset` locates a dataset's files, decodes them (on a cache miss) into ``.npy`` files under the node
cache and returns :class:`ImageData` whose image arrays are opened with ``np.load(mmap_mode="r")``: every trial and
worker on a node reads the same page-cache pages instead of decoding or copying the dataset again. Large trees of
image files (ImageNet) are streamed instead (``loading``: :mod:`trainables.data.stream`), with the same splits and
pixels and nothing written to the cache.

Splits (the same for every method; the seed is fixed, so every trial sees the same split):

- ``train``: what pretraining iterates over; for STL-10 also the 100,000 unlabeled images with label ``-1``.
- ``train_labeled``: the labelled training images minus ``val`` (kNN bank, probe training).
- ``val``: 10 % of the labelled training images, at most 10,000 (kNN metric, early stopping).
- ``test``: the official evaluation split (CIFAR test batch, STL-10 test fold, TinyImageNet val, ImageNet val); for a
  ``folder`` tree without ``val/``, another fixed 10 % (at most 10,000) held out of the images.

The cache key hashes (dataset, absolute data directory, size, the source files' names, sizes and mtimes). For trees of
image files (TinyImageNet, ImageFolder) it hashes the file names and every directory's mtime instead of stat-ing each
image: adding, removing or renaming an image is detected, rewriting one in place under the same name is not (delete
the cache entry, or touch its directory, after such an edit).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Sequence

from trainables.data.cache import cache_entry, open_split
from trainables.data.checks import (
    CHANNELS,
    DATASETS,
    SPECS,
    DataError,
    ImageData,
    Split,
    check_data_dir,
    check_name,
    check_size,
    check_stats,
    default_image_size,
)
from trainables.data.readers import Plan, locate_dataset
from trainables.data.stream import stream_splits

__all__ = ["AUTO_STREAM_BYTES", "DATASETS", "DataError", "ImageData", "Split", "check_dataset", "default_image_size",
           "load_dataset", "resolve_loading"]

#: ``loading="auto"`` streams a tree of image files whose decoded cache would exceed this many bytes (16 GiB).
AUTO_STREAM_BYTES = 16 * 2**30
LOADINGS = ("auto", "cache", "stream")


def resolve_loading(plan: Plan, size: int, loading: str) -> str:
    """``cache`` or ``stream`` for ``loading``: ``auto`` streams image-file trees above :data:`AUTO_STREAM_BYTES`
    decoded (ImageNet-1k at 224 px: ~193 GB) and caches everything else (arrays and small trees decode fast)."""
    if loading not in LOADINGS:
        raise DataError(f"`data_loading` must be one of {', '.join(LOADINGS)}; got data_loading={loading!r}")
    if loading != "auto":
        return loading
    decoded = (plan.num_files or 0) * CHANNELS * size * size
    return "stream" if decoded > AUTO_STREAM_BYTES else "cache"


def load_dataset(name: str, *, data_dir: str | os.PathLike[str] | None = None, size: int | None = None,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None, download: bool = False,
                 cache_dir: str | os.PathLike[str] | None = None, loading: str = "auto") -> ImageData:
    """Load dataset ``name`` (one of :data:`DATASETS`) through the node cache, or streamed from its files.

    Args:
        name: ``digits`` (embedded: scikit-learn's 8x8 digits upsampled to 16x16 RGB; test 300, val 300,
            train_labeled 1,197), ``cifar10``/``cifar100`` (python pickles), ``stl10`` (binaries; ``unlabeled_X.bin``
            optional), ``tinyimagenet``, or an ImageFolder tree ``imagenet``/``imagenet100``/``folder``
            (``root/train/<class>/<image>`` and ``root/val/<class>/<image>``; ``folder`` also takes one
            ``root/<class>/<image>`` tree, with test held out).
        data_dir: folder holding the dataset (torchvision's layout: the parent of ``cifar-10-batches-py``,
            ``stl10_binary``, ``tiny-imagenet-200``, or that folder itself); ignored for ``digits``.
        size: side of the square images; defaults: digits 16, CIFAR 32, STL-10 96, TinyImageNet 64, ImageNet 224;
            required for ``folder``. Image files are resized (shorter side) and centre-cropped, arrays resized.
        mean, std: per-channel normalisation statistics of images in [0, 1]. Default: the dataset's published values;
            for ``digits`` and ``folder`` computed from the training images (and cached).
        download: fetch cifar10/cifar100/stl10 with torchvision if their files are missing; other datasets are never
            downloaded (their errors then say so).
        cache_dir: node cache root (default ``$CSWEEP_CACHE`` or ``~/.cache/contrastive-sweeps``).
        loading: ``cache`` (decode once per node into the cache, memory-map it), ``stream`` (decode each batch from
            the files, write nothing: :mod:`trainables.data.stream`) or ``auto`` (:func:`resolve_loading`).

    Raises:
        DataError: an argument or file is invalid; the one-line message names the field and echoes the value.
    """
    name = check_name(name)
    size = check_size(name, size)
    user_mean, user_std = check_stats("mean", mean), check_stats("std", std)
    root = check_data_dir(name, data_dir, download)
    plan = locate_dataset(name, root, size, download)
    for note in plan.warnings:
        warnings.warn(note, UserWarning, stacklevel=2)
    spec = SPECS[name]
    if resolve_loading(plan, size, loading) == "stream":
        splits, num_classes, train_split, mean, std = stream_splits(plan, size=size)
        return ImageData(name=name, num_classes=num_classes, channels=CHANNELS, image_size=size,
                         mean=user_mean or spec.mean or tuple(mean), std=user_std or spec.std or tuple(std),
                         train=splits[train_split], train_labeled=splits["train_labeled"], val=splits["val"],
                         test=splits["test"])
    entry = cache_entry(plan, name, size, cache_dir)
    meta = json.loads((entry / "meta.json").read_text())
    splits = {s: open_split(entry, s) for s in ("train_labeled", "val", "test")}
    train = splits["train_labeled"] if meta["train_file"] == "train_labeled" else open_split(entry, "train")
    return ImageData(
        name=name, num_classes=int(meta["num_classes"]), channels=int(meta["channels"]), image_size=size,
        mean=user_mean or spec.mean or tuple(meta["mean"]), std=user_std or spec.std or tuple(meta["std"]),
        train=train, **splits,
    )


def check_dataset(name: str, *, data_dir: str | os.PathLike[str] | None = None, size: int | None = None,
                  mean: Sequence[float] | None = None, std: Sequence[float] | None = None, download: bool = False,
                  cache_dir: str | os.PathLike[str] | None = None, loading: str = "auto") -> ImageData:
    """Validate a dataset before Ray starts, with :func:`load_dataset`'s arguments and errors.

    Arguments and the file layout are checked before anything is decoded; then the dataset is loaded, which fills
    this node's cache (a no-op when it is already there), so trials on this node start without decoding.
    """
    return load_dataset(name, data_dir=data_dir, size=size, mean=mean, std=std, download=download,
                        cache_dir=cache_dir, loading=loading)
