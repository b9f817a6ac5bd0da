"""Image datasets as uint8 arrays ``[N, C, H, W]``, decoded once per node and shared through the page cache.

:func:`load_dataset` locates a dataset's files, decodes them (on a cache miss) into ``.npy`` files under the node
cache and returns :class:`ImageData` whose image arrays are opened with ``np.load(mmap_mode="r")``: every trial and
worker on a node reads the same page-cache pages instead of decoding or copying the dataset again.

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

import contextlib
import hashlib
import json
import math
import os
import pickle
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DATASETS", "DataError", "ImageData", "Split", "check_dataset", "default_image_size", "load_dataset"]

#: Names :func:`load_dataset` accepts.
DATASETS: tuple[str, ...] = ("digits", "cifar10", "cifar100", "stl10", "tinyimagenet", "imagenet", "imagenet100",
                             "folder")

_CACHE_VERSION = 1  # bump when decoding or splitting changes, so stale cache entries are never reused
_SPLIT_SEED = 0
_HOLDOUT_FRACTION = 0.1
_HOLDOUT_MAX = 10_000
_CHUNK = 1024  # images decoded / written per step (bounds memory: 1024 x 3 x 224 x 224 B = 154 MB)
_STL_IMAGE_BYTES = 3 * 96 * 96
_IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_SPLITS = ("train", "train_labeled", "val", "test")


class DataError(ValueError):
    """A dataset argument or file is invalid; the one-line message names the field and echoes the value."""


def _oneline(exc: BaseException) -> str:
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
        for split in _SPLITS:
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
class _Spec:
    size: int | None  # default image size; None: `size` is required
    mean: tuple[float, float, float] | None  # None: computed from the training images
    std: tuple[float, float, float] | None


_IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_SPECS: dict[str, _Spec] = {
    "digits": _Spec(16, None, None),
    # SupContrast's values, so its recipe is reproduced as published.
    "cifar10": _Spec(32, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": _Spec(32, (0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
    "stl10": _Spec(96, (0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713)),
    "tinyimagenet": _Spec(64, (0.4802, 0.4481, 0.3975), (0.2770, 0.2691, 0.2821)),
    "imagenet": _Spec(224, *_IMAGENET_STATS),
    "imagenet100": _Spec(224, *_IMAGENET_STATS),
    "folder": _Spec(None, None, None),
}
_DOWNLOADABLE = ("cifar10", "cifar100", "stl10")


def default_image_size(name: str) -> int | None:
    """The side a dataset's images have unless ``size`` says otherwise (None: it must be given, e.g. ``folder``)."""
    spec = _SPECS.get(name)
    return spec.size if spec is not None else None
_CHANNELS = 3  # every dataset is RGB (digits and grayscale images are replicated to three channels)


# -- image sources: what a cache miss decodes --------------------------------------------------------------------------
class _ArraySource:
    """Images already in memory or in a memory-mapped file: ``[N, 3, h, w]`` (``transpose``: stored ``[N, 3, w, h]``),
    resized to ``size`` if they are not square ``size`` x ``size``."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, *, size: int, transpose: bool = False) -> None:
        self.images, self.labels, self.size, self.transpose = images, labels.astype(np.int64), size, transpose

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, index: np.ndarray) -> np.ndarray:
        batch = np.asarray(self.images[index])
        if self.transpose:
            batch = batch.transpose(0, 1, 3, 2)
        if batch.shape[-2:] != (self.size, self.size):
            batch = _resize_uint8(batch, self.size)
        return batch


class _FileSource:
    """Image files decoded with PIL: RGB, shorter side resized to ``size`` (bilinear, antialiased), centre crop."""

    def __init__(self, paths: Sequence[str], labels: np.ndarray, *, size: int) -> None:
        self.paths, self.labels, self.size = list(paths), labels.astype(np.int64), size

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, index: np.ndarray) -> np.ndarray:
        workers = min(8, os.cpu_count() or 1)  # PIL releases the GIL while decoding and resizing
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return np.stack(list(pool.map(self._decode, (self.paths[i] for i in index))))

    def _decode(self, path: str) -> np.ndarray:
        from PIL import Image

        try:
            with Image.open(path) as im:
                img = im.convert("RGB")
        except Exception as exc:  # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError, ...)
            raise DataError(f"`data_dir` holds an unreadable image {path!r}: {_oneline(exc)}") from exc
        w, h = img.size
        if min(w, h) != self.size:  # torchvision Resize(size): the shorter side becomes `size`
            short, long = (w, h) if w <= h else (h, w)
            new_long = int(self.size * long / short)
            img = img.resize((self.size, new_long) if w <= h else (new_long, self.size), Image.Resampling.BILINEAR)
        w, h = img.size
        top, left = int(round((h - self.size) / 2.0)), int(round((w - self.size) / 2.0))
        img = img.crop((left, top, left + self.size, top + self.size))
        return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


def _resize_float(images: np.ndarray, size: int) -> np.ndarray:
    """Bilinear (antialiased when shrinking) resize of float ``[N, C, h, w]`` to ``[N, C, size, size]``."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True).numpy()


def _resize_uint8(images: np.ndarray, size: int) -> np.ndarray:
    return np.clip(np.rint(_resize_float(images, size)), 0, 255).astype(np.uint8)


@dataclass
class _Raw:
    """What a dataset's files hold, before the split: labelled training pool, optional test and unlabeled sources."""

    num_classes: int
    pool: _ArraySource | _FileSource
    test: _ArraySource | _FileSource | None  # None: hold a test split out of the pool
    unlabeled: _ArraySource | None = None
    n_test: int | None = None  # fixed split sizes (digits); None: 10 %, at most 10,000
    n_val: int | None = None


@dataclass
class _Plan:
    """A located dataset: a cheap fingerprint of its source files and a function that decodes them."""

    root: Path | None
    fingerprint: list[Any]
    build: Callable[[], _Raw]
    warnings: tuple[str, ...] = ()


# -- file helpers ------------------------------------------------------------------------------------------------------
def _stat(path: Path, root: Path) -> list[Any]:
    st = path.stat()
    return [str(path.relative_to(root)), st.st_size, st.st_mtime_ns]


def _require(path: Path, *, name: str, what: str) -> Path:
    if not path.exists():
        raise DataError(f"`data_dir` must contain {what} for dataset {name!r}, but {str(path)!r} does not exist")
    return path


def _locate(data_dir: Path, folder: str, probe: str) -> Path:
    """``data_dir/folder`` (torchvision's layout), or ``data_dir`` itself when it already is that folder."""
    if not (data_dir / folder / probe).exists() and (data_dir / probe).exists():
        return data_dir
    return data_dir / folder


def _image_files(directory: Path) -> tuple[list[str], list[str]]:
    """Image files under ``directory`` (recursive, sorted, as torchvision's ImageFolder finds them) and the
    directories walked. Plain strings: an ImageNet listing holds 1.3 million of them."""
    files, dirs = [], []
    for dirpath, dirnames, filenames in os.walk(directory, followlinks=True):
        dirnames.sort()
        dirs.append(dirpath)
        files.extend(os.path.join(dirpath, f) for f in sorted(filenames)
                     if f.lower().endswith(_IMG_EXTENSIONS) and not f.startswith("."))
    return files, dirs


def _tree_fingerprint(files: Sequence[str], dirs: Sequence[str | Path], root: Path) -> str:
    """Digest of the file names relative to ``root`` and every directory's mtime (see the module docstring)."""
    h = hashlib.sha256()
    skip = len(str(root)) + 1
    for f in files:
        h.update(f[skip:].encode() + b"\0")
    for d in sorted({str(d) for d in dirs}):
        h.update(f"{d[skip:]}:{os.stat(d).st_mtime_ns}\0".encode())
    return h.hexdigest()


# -- digits ------------------------------------------------------------------------------------------------------------
def _plan_digits(size: int) -> _Plan:
    import sklearn

    def build() -> _Raw:
        from sklearn.datasets import load_digits

        d = load_digits()
        x = d.images.astype(np.float32)[:, None] / 16.0  # [N, 1, 8, 8] in [0, 1]
        if size != 8:
            x = _resize_float(x, size)
        x = np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
        x = np.repeat(x, _CHANNELS, axis=1)  # RGB, so colour ops and Lab/YCbCr views run unchanged
        return _Raw(10, _ArraySource(x, d.target, size=size), None, n_test=300, n_val=300)

    return _Plan(None, [["sklearn", sklearn.__version__]], build)


# -- CIFAR -------------------------------------------------------------------------------------------------------------
_CIFAR = {  # folder, training files, test files, label key, classes
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], "labels", 10),
    "cifar100": ("cifar-100-python", ["train"], ["test"], "fine_labels", 100),
}


class _NumpyUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: a dataset file must not run arbitrary code."""

    _ALLOWED = {(m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray") for n in ("_reconstruct", "scalar")}
    _ALLOWED |= {(m, "_frombuffer") for m in ("numpy.core.numeric", "numpy._core.numeric")}
    _ALLOWED |= {("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}  # encode: bytes in protocol < 3

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a dataset file")
        return super().find_class(module, name)


def _read_cifar_file(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    where = f"`data_dir` file {str(path)!r}"
    try:
        with open(path, "rb") as fh:
            entry = _NumpyUnpickler(fh, encoding="latin1").load()  # latin1: the files were pickled by Python 2
    except Exception as exc:
        raise DataError(f"{where} is not a readable CIFAR pickle: {_oneline(exc)}") from exc
    if not isinstance(entry, dict):
        raise DataError(f"{where} must hold a dict, but got {type(entry).__name__}")
    entry = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}
    missing = [k for k in ("data", label_key) if k not in entry]
    if missing:
        raise DataError(f"{where} must hold the keys 'data' and {label_key!r}, but lacks {missing}")
    data = entry["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        got = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{where}: 'data' must be uint8 [N, 3072], but got {got}")
    try:
        labels = np.asarray(entry[label_key], dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where}: {label_key!r} must be a list of integers: {_oneline(exc)}") from exc
    if labels.shape != (data.shape[0],):
        raise DataError(f"{where}: {label_key!r} must hold one label per image ({data.shape[0]}), but got shape "
                        f"{labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{where}: {label_key!r} must lie in [0, {num_classes}), but got "
                        f"[{labels.min()}, {labels.max()}]")
    return data.reshape(-1, 3, 32, 32), labels  # row-major planes R, G, B: no transpose


def _plan_cifar(name: str, data_dir: Path, size: int) -> _Plan:
    folder, train_files, test_files, label_key, classes = _CIFAR[name]
    root = _locate(data_dir, folder, train_files[0])
    paths = [_require(root / f, name=name, what=f"{folder}/{f}") for f in train_files + test_files]

    def read(files: list[str]) -> _ArraySource:
        parts = [_read_cifar_file(root / f, label_key, classes) for f in files]
        return _ArraySource(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), size=size)

    return _Plan(root, [_stat(p, root) for p in paths],
                 lambda: _Raw(classes, read(train_files), read(test_files)))


# -- STL-10 ------------------------------------------------------------------------------------------------------------
def _read_stl_images(path: Path) -> np.ndarray:
    n_bytes = path.stat().st_size
    if n_bytes == 0 or n_bytes % _STL_IMAGE_BYTES:
        raise DataError(f"`data_dir` file {str(path)!r} must hold whole 3x96x96 images (a non-zero multiple of "
                        f"{_STL_IMAGE_BYTES} bytes), but has {n_bytes} bytes (truncated?)")
    return np.memmap(path, dtype=np.uint8, mode="r").reshape(-1, 3, 96, 96)  # column-major: transposed on read


def _read_stl_labels(path: Path, n: int) -> np.ndarray:
    y = np.fromfile(path, dtype=np.uint8).astype(np.int64)
    if y.shape != (n,):
        raise DataError(f"`data_dir` file {str(path)!r} must hold one label per image ({n}), but holds {y.size}")
    if y.size and (y.min() < 1 or y.max() > 10):
        raise DataError(f"`data_dir` file {str(path)!r} must hold labels in 1..10, but got [{y.min()}, {y.max()}]")
    return y - 1


def _plan_stl10(data_dir: Path, size: int) -> _Plan:
    root = _locate(data_dir, "stl10_binary", "train_X.bin")
    files = ["train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin"]
    paths = [_require(root / f, name="stl10", what=f"stl10_binary/{f}") for f in files]
    unlabeled = root / "unlabeled_X.bin"
    notes: tuple[str, ...] = ()
    if unlabeled.exists():
        paths.append(unlabeled)
    else:
        notes = (f"stl10: {str(unlabeled)!r} not found; `train` holds only the labelled training images",)

    def source(stem: str) -> _ArraySource:
        x = _read_stl_images(root / f"{stem}_X.bin")
        return _ArraySource(x, _read_stl_labels(root / f"{stem}_y.bin", len(x)), size=size, transpose=True)

    def build() -> _Raw:
        extra = None
        if unlabeled.exists():
            x = _read_stl_images(unlabeled)
            extra = _ArraySource(x, np.full(len(x), -1, dtype=np.int64), size=size, transpose=True)
        return _Raw(10, source("train"), source("test"), extra)

    return _Plan(root, [_stat(p, root) for p in paths], build, notes)


# -- TinyImageNet ------------------------------------------------------------------------------------------------------
def _plan_tinyimagenet(data_dir: Path, size: int) -> _Plan:
    root = _locate(data_dir, "tiny-imagenet-200", "wnids.txt")
    wnids_file = _require(root / "wnids.txt", name="tinyimagenet", what="tiny-imagenet-200/wnids.txt")
    ann_file = _require(root / "val" / "val_annotations.txt", name="tinyimagenet",
                        what="tiny-imagenet-200/val/val_annotations.txt")
    wnids = sorted({w.strip() for w in wnids_file.read_text().split() if w.strip()})
    if not wnids:
        raise DataError(f"`data_dir` file {str(wnids_file)!r} must list the class ids, but is empty")
    index = {w: i for i, w in enumerate(wnids)}
    train_paths: list[str] = []
    train_labels: list[int] = []
    dirs: list[str | Path] = [root / "train", root / "val" / "images"]
    for w in wnids:
        d = _require(root / "train" / w / "images", name="tinyimagenet", what=f"tiny-imagenet-200/train/{w}/images/")
        files, walked = _image_files(d)
        if not files:
            raise DataError(f"`data_dir` class folder {str(d)!r} must hold images, but is empty")
        train_paths += files
        train_labels += [index[w]] * len(files)
        dirs += walked
    val_dir = _require(root / "val" / "images", name="tinyimagenet", what="tiny-imagenet-200/val/images/")
    test_paths: list[str] = []
    test_labels: list[int] = []
    for lineno, line in enumerate(ann_file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) < 2 or parts[1] not in index:
            raise DataError(f"`data_dir` file {str(ann_file)!r} line {lineno} must read '<image> <wnid> ...' with a "
                            f"wnid from wnids.txt, but got {line.strip()!r}")
        test_paths.append(str(_require(val_dir / parts[0], name="tinyimagenet",
                                       what=f"tiny-imagenet-200/val/images/{parts[0]}")))
        test_labels.append(index[parts[1]])
    if not test_paths:
        raise DataError(f"`data_dir` file {str(ann_file)!r} must list the validation images, but is empty")
    fingerprint = [_stat(wnids_file, root), _stat(ann_file, root), _tree_fingerprint(train_paths + test_paths, dirs,
                                                                                      root)]

    def build() -> _Raw:
        return _Raw(len(wnids), _FileSource(train_paths, np.asarray(train_labels), size=size),
                    _FileSource(test_paths, np.asarray(test_labels), size=size))

    return _Plan(root, fingerprint, build)


# -- ImageFolder trees (imagenet, imagenet100, folder) -----------------------------------------------------------------
def _scan_tree(tree: Path, classes: list[str] | None = None) -> tuple[list[str], list[str], list[int], list[str]]:
    """Classes (sorted sub-folders, or the given ones), image paths, labels and the directories walked."""
    found = sorted(d.name for d in tree.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not found:
        raise DataError(f"`data_dir` folder {str(tree)!r} must hold one sub-folder per class, but has none")
    if classes is None:
        classes = found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise DataError(f"`data_dir` folder {str(tree)!r} must hold only the training classes, but also has "
                        f"{unknown[:5]}{' ...' if len(unknown) > 5 else ''}")
    index = {c: i for i, c in enumerate(classes)}
    paths: list[str] = []
    labels: list[int] = []
    dirs = [str(tree)]
    for c in found:
        files, walked = _image_files(tree / c)
        if not files:
            raise DataError(f"`data_dir` class folder {str(tree / c)!r} must hold at least one image "
                            f"({', '.join(_IMG_EXTENSIONS)}), but has none")
        paths += files
        labels += [index[c]] * len(files)
        dirs += walked
    return classes, paths, labels, dirs


def _plan_folder(name: str, data_dir: Path, size: int) -> _Plan:
    train_dir, val_dir = data_dir / "train", data_dir / "val"
    if name != "folder":
        _require(train_dir, name=name, what="train/<class>/<image>")
        _require(val_dir, name=name, what="val/<class>/<image>")
    tree = train_dir if train_dir.is_dir() else data_dir  # `folder` also accepts a single root/<class>/<image> tree
    classes, paths, labels, dirs = _scan_tree(tree)
    test_paths: list[str] = []
    test_labels: list[int] = []
    if tree is train_dir and val_dir.is_dir():
        _, test_paths, test_labels, val_dirs = _scan_tree(val_dir, classes)
        dirs += val_dirs
    fingerprint = [_tree_fingerprint(paths + test_paths, dirs, data_dir)]

    def build() -> _Raw:
        test = _FileSource(test_paths, np.asarray(test_labels), size=size) if test_paths else None
        return _Raw(len(classes), _FileSource(paths, np.asarray(labels), size=size), test)

    return _Plan(data_dir, fingerprint, build)


# -- argument checks ---------------------------------------------------------------------------------------------------
def _check_name(name: Any) -> str:
    if name not in DATASETS:
        raise DataError(f"`dataset` must be one of {', '.join(DATASETS)}; got dataset={name!r}")
    return name


def _check_size(name: str, size: Any) -> int:
    if size is None:
        size = _SPECS[name].size
        if size is None:
            raise DataError(f"`size` is required for dataset {name!r} (the side its images are resized and "
                            f"centre-cropped to), but got size=None")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 8:
        raise DataError(f"`size >= 8` must hold (an integer), but got size={size!r}")
    return int(size)


def _check_stats(field: str, value: Any) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        values = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise DataError(f"`{field}` must be {_CHANNELS} numbers (one per channel), but got {field}={value!r}") from None
    if len(values) != _CHANNELS or not all(math.isfinite(v) for v in values):
        raise DataError(f"`{field}` must be {_CHANNELS} finite numbers (one per channel), but got {field}={value!r}")
    if field == "std" and min(values) <= 0:
        raise DataError(f"`std > 0` must hold for every channel, but got std={value!r}")
    return values


def _check_data_dir(name: str, data_dir: Any, download: bool) -> Path | None:
    if name == "digits":
        return None  # embedded in scikit-learn; data_dir and download are ignored
    if data_dir is None:
        raise DataError(f"`data_dir` is required for dataset {name!r} (only 'digits' is embedded), but got "
                        f"data_dir=None")
    path = Path(data_dir).expanduser().resolve()
    if download and name in _DOWNLOADABLE:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataError(f"`data_dir` must be creatable for download=True, but got data_dir={str(data_dir)!r}: "
                            f"{_oneline(exc)}") from exc
    if not path.is_dir():
        raise DataError(f"`data_dir` must be an existing directory, but got data_dir={str(data_dir)!r}")
    return path


def _download(name: str, data_dir: Path) -> None:
    """Fetch an archive with torchvision (which verifies its checksum) into ``data_dir``."""
    try:
        import torchvision.datasets as tvd

        if name == "stl10":
            tvd.STL10(str(data_dir), split="test", download=True)  # the archive holds every split
        else:
            (tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100)(str(data_dir), train=False, download=True)
    except Exception as exc:
        raise DataError(f"`download=True` failed for dataset {name!r} into data_dir={str(data_dir)!r}: "
                        f"{_oneline(exc)}") from exc


def _plan(name: str, root: Path | None, size: int, download: bool) -> _Plan:
    def locate() -> _Plan:
        if name == "digits":
            return _plan_digits(size)
        assert root is not None
        if name in _CIFAR:
            return _plan_cifar(name, root, size)
        if name == "stl10":
            return _plan_stl10(root, size)
        if name == "tinyimagenet":
            return _plan_tinyimagenet(root, size)
        return _plan_folder(name, root, size)

    try:
        return locate()
    except DataError as exc:
        if not download:
            raise
        if name not in _DOWNLOADABLE:
            raise DataError(f"{exc} (download=True fetches only {', '.join(_DOWNLOADABLE)})") from exc
    assert root is not None
    _download(name, root)
    return locate()


# -- cache -------------------------------------------------------------------------------------------------------------
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


def _write_split(entry: Path, split: str, parts: list[tuple[_ArraySource | _FileSource, np.ndarray]],
                 size: int) -> None:
    n = sum(len(idx) for _, idx in parts)
    with _atomic(entry / f"{split}_images.npy") as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, _CHANNELS, size, size))
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


def _channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
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


def _build_entry(entry: Path, plan: _Plan, name: str, size: int) -> None:
    try:
        _write_entry(entry, plan, name, size)
    except BaseException:
        for partial in entry.glob("*.npy"):  # a failed ImageNet decode may have written tens of GB
            partial.unlink(missing_ok=True)
        raise


def _write_entry(entry: Path, plan: _Plan, name: str, size: int) -> None:
    raw = plan.build()
    n = len(raw.pool)
    n_test = 0 if raw.test is not None else (raw.n_test if raw.n_test is not None else _holdout(n))
    n_val = raw.n_val if raw.n_val is not None else _holdout(n - n_test)
    train_idx, val_idx, test_idx = _split_indices(n, n_test, n_val)
    _write_split(entry, "train_labeled", [(raw.pool, train_idx)], size)
    _write_split(entry, "val", [(raw.pool, val_idx)], size)
    _write_split(entry, "test", [(raw.test, np.arange(len(raw.test)))] if raw.test is not None
                 else [(raw.pool, test_idx)], size)
    train_file = "train_labeled"
    if raw.unlabeled is not None:
        _write_split(entry, "train", [(raw.pool, train_idx), (raw.unlabeled, np.arange(len(raw.unlabeled)))], size)
        train_file = "train"
    meta: dict[str, Any] = {"version": _CACHE_VERSION, "name": name, "num_classes": raw.num_classes,
                            "channels": _CHANNELS, "image_size": size, "train_file": train_file,
                            "mean": None, "std": None}
    if _SPECS[name].mean is None:  # digits, folder: statistics of the training images
        meta["mean"], meta["std"] = _channel_stats(np.load(entry / "train_labeled_images.npy", mmap_mode="r"))
    with _atomic(entry / "meta.json") as tmp:  # written last: its presence marks a complete entry
        tmp.write_text(json.dumps(meta, indent=1))


def _open_split(entry: Path, stem: str) -> Split:
    images_path = entry / f"{stem}_images.npy"
    images = np.load(images_path, mmap_mode="r")
    if images.size == 0:  # a zero-length file cannot be memory-mapped
        images = np.load(images_path)
    labels = np.load(entry / f"{stem}_labels.npy")
    labels.setflags(write=False)
    return Split(images, labels)


# -- public API --------------------------------------------------------------------------------------------------------
def load_dataset(name: str, *, data_dir: str | os.PathLike[str] | None = None, size: int | None = None,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None, download: bool = False,
                 cache_dir: str | os.PathLike[str] | None = None) -> ImageData:
    """Load dataset ``name`` (one of :data:`DATASETS`) through the node cache.

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

    Raises:
        DataError: an argument or file is invalid; the one-line message names the field and echoes the value.
    """
    name = _check_name(name)
    size = _check_size(name, size)
    user_mean, user_std = _check_stats("mean", mean), _check_stats("std", std)
    root = _check_data_dir(name, data_dir, download)
    plan = _plan(name, root, size, download)
    for note in plan.warnings:
        warnings.warn(note, UserWarning, stacklevel=2)
    key = json.dumps([_CACHE_VERSION, name, str(plan.root) if plan.root else None, size, plan.fingerprint])
    entry = _cache_root(cache_dir) / f"{name}-{size}px-{hashlib.sha256(key.encode()).hexdigest()[:20]}"
    if not (entry / "meta.json").exists():
        try:
            entry.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise DataError(f"`cache_dir` must be writable, but creating {str(entry)!r} failed: {_oneline(exc)}") \
                from exc
        with _locked(entry / ".lock"):
            if not (entry / "meta.json").exists():  # another process may have finished it while we waited
                _build_entry(entry, plan, name, size)
    meta = json.loads((entry / "meta.json").read_text())
    spec = _SPECS[name]
    splits = {s: _open_split(entry, s) for s in ("train_labeled", "val", "test")}
    train = splits["train_labeled"] if meta["train_file"] == "train_labeled" else _open_split(entry, "train")
    return ImageData(
        name=name, num_classes=int(meta["num_classes"]), channels=int(meta["channels"]), image_size=size,
        mean=user_mean or spec.mean or tuple(meta["mean"]), std=user_std or spec.std or tuple(meta["std"]),
        train=train, **splits,
    )


def check_dataset(name: str, *, data_dir: str | os.PathLike[str] | None = None, size: int | None = None,
                  mean: Sequence[float] | None = None, std: Sequence[float] | None = None, download: bool = False,
                  cache_dir: str | os.PathLike[str] | None = None) -> ImageData:
    """Validate a dataset before Ray starts, with :func:`load_dataset`'s arguments and errors.

    Arguments and the file layout are checked before anything is decoded; then the dataset is loaded, which fills
    this node's cache (a no-op when it is already there), so trials on this node start without decoding.
    """
    return load_dataset(name, data_dir=data_dir, size=size, mean=mean, std=std, download=download,
                        cache_dir=cache_dir)
