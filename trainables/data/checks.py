"""What valid data is: :class:`DataError`, the table of datasets and their defaults, the :class:`Split` and
:class:`ImageData` containers (validated on construction), and the checks of :func:`load_dataset`'s arguments."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "CHANNELS",
    "DATASETS",
    "DOWNLOADABLE",
    "SPECS",
    "SPLITS",
    "DataError",
    "DatasetSpec",
    "ImageData",
    "Split",
    "check_data_dir",
    "check_name",
    "check_size",
    "check_stats",
    "default_image_size",
    "one_line",
]

#: Names :func:`load_dataset` accepts.
DATASETS: tuple[str, ...] = ("digits", "cifar10", "cifar100", "stl10", "tinyimagenet", "imagenet", "imagenet100",
                             "folder")

SPLITS = ("train", "train_labeled", "val", "test")


class DataError(ValueError):
    """A dataset argument or file is invalid; the one-line message names the field and echoes the value."""


def one_line(exc: BaseException) -> str:
    """``Type: message`` of an exception on one line (for DataError messages)."""
    return " ".join(f"{type(exc).__name__}: {exc}".split())


# -- public containers -------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Split:
    """One split: ``images`` uint8 ``[N, C, H, W]`` (often a read-only memmap) and ``labels`` int64 ``[N]``
    (``-1`` = unlabeled)."""

    images: np.ndarray
    labels: np.ndarray

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise DataError(f"`images` must be uint8 [N, C, H, W], but got images.dtype={self.images.dtype}, "
                            f"images.shape={self.images.shape}")
        if self.labels.dtype != np.int64 or self.labels.shape != (self.images.shape[0],):
            raise DataError(f"`labels` must be int64 [N] with N={self.images.shape[0]}, but got "
                            f"labels.dtype={self.labels.dtype}, labels.shape={self.labels.shape}")

    def __len__(self) -> int:
        return int(self.images.shape[0])


@dataclass(frozen=True)
class ImageData:
    """A dataset's four splits and what a model needs to know about it (see the module docstring for the splits)."""

    name: str  # one of DATASETS
    num_classes: int
    channels: int  # always 3 (RGB)
    image_size: int  # images are image_size x image_size
    mean: tuple[float, ...]  # per-channel mean of images scaled to [0, 1]
    std: tuple[float, ...]  # per-channel std of images scaled to [0, 1]
    train: Split  # pretraining set (STL-10: + unlabeled, label -1); else the same object as train_labeled
    train_labeled: Split  # labelled training images minus val: kNN bank, probe training
    val: Split  # fixed-seed 10 % (<= 10,000) of the labelled training images: kNN metric, early stopping
    test: Split  # the official evaluation split: final probe accuracy

    def __post_init__(self) -> None:
        want = (self.channels, self.image_size, self.image_size)
        for split in SPLITS:
            got = getattr(self, split).images.shape[1:]
            if got != want:
                raise DataError(f"`{split}.images` must be [N, {', '.join(map(str, want))}] (channels, image_size, "
                                f"image_size), but got {split}.images.shape[1:]={got}")
        for field in ("mean", "std"):
            if len(getattr(self, field)) != self.channels:
                raise DataError(f"`len({field}) == channels` must hold, but got {field}={getattr(self, field)}, "
                                f"channels={self.channels}")


# -- per-dataset defaults ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DatasetSpec:
    size: int | None  # default image size; None: `size` is required
    mean: tuple[float, float, float] | None  # None: computed from the training images
    std: tuple[float, float, float] | None


_IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
SPECS: dict[str, DatasetSpec] = {
    "digits": DatasetSpec(16, None, None),
    # SupContrast's values, so its recipe is reproduced as published.
    "cifar10": DatasetSpec(32, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": DatasetSpec(32, (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    "stl10": DatasetSpec(96, (0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713)),
    "tinyimagenet": DatasetSpec(64, (0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821)),
    "imagenet": DatasetSpec(224, *_IMAGENET_STATS),
    "imagenet100": DatasetSpec(224, *_IMAGENET_STATS),
    "folder": DatasetSpec(None, None, None),
}
DOWNLOADABLE = ("cifar10", "cifar100", "stl10")


def default_image_size(name: str) -> int | None:
    """The side a dataset's images have unless ``size`` says otherwise (None: it must be given, e.g. ``folder``)."""
    spec = SPECS.get(name)
    return spec.size if spec is not None else None

CHANNELS = 3  # every dataset is RGB (digits and grayscale images are replicated to three channels)


# -- argument checks ---------------------------------------------------------------------------------------------------
def check_name(name: Any) -> str:
    if name not in DATASETS:
        raise DataError(f"`dataset` must be one of {', '.join(DATASETS)}; got dataset={name!r}")
    return name


def check_size(name: str, size: Any) -> int:
    if size is None:
        size = SPECS[name].size
        if size is None:
            raise DataError(f"`size` is required for dataset {name!r} (the side its images are resized and "
                            f"centre-cropped to), but got size=None")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 8:
        raise DataError(f"`size >= 8` must hold (an integer), but got size={size!r}")
    return int(size)


def check_stats(field: str, value: Any) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        values = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise DataError(f"`{field}` must be {CHANNELS} numbers (one per channel), but got {field}={value!r}") from None
    if len(values) != CHANNELS or not all(math.isfinite(v) for v in values):
        raise DataError(f"`{field}` must be {CHANNELS} finite numbers (one per channel), but got {field}={value!r}")
    if field == "std" and min(values) <= 0:
        raise DataError(f"`std > 0` must hold for every channel, but got std={value!r}")
    return values


def check_data_dir(name: str, data_dir: Any, download: bool) -> Path | None:
    if name == "digits":
        return None  # embedded in scikit-learn; data_dir and download are ignored
    if data_dir is None:
        raise DataError(f"`data_dir` is required for dataset {name!r} (only 'digits' is embedded), but got "
                        f"data_dir=None")
    path = Path(data_dir).expanduser().resolve()
    if download and name in DOWNLOADABLE:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataError(f"`data_dir` must be creatable for download=True, but got data_dir={str(data_dir)!r}: "
                            f"{one_line(exc)}") from exc
    if not path.is_dir():
        raise DataError(f"`data_dir` must be an existing directory, but got data_dir={str(data_dir)!r}")
    return path


