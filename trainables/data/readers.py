"""Reading each dataset's files: locating them (with a cheap fingerprint for the cache key) and decoding them into
uint8 ``[N, 3, size, size]`` sources on a cache miss. :func:`locate_dataset` is the entry point."""

from __future__ import annotations

import hashlib
import os
import pickle
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from trainables.data.checks import CHANNELS, DOWNLOADABLE, DataError, one_line

__all__ = ["ArraySource", "FileSource", "Plan", "RawData", "locate_dataset", "read_cifar_file"]

_STL_IMAGE_BYTES = 3 * 96 * 96
_IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


# -- image sources: what a cache miss decodes --------------------------------------------------------------------------
class ArraySource:
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


class FileSource:
    """Image files decoded with PIL: RGB, shorter side resized to ``size`` (bilinear, antialiased), centre crop."""

    def __init__(self, paths: Sequence[str], labels: np.ndarray, *, size: int) -> None:
        self.paths, self.labels, self.size = list(paths), labels.astype(np.int64), size

    def __len__(self) -> int:
        return len(self.labels)

    def read(self, index: np.ndarray) -> np.ndarray:
        workers = min(8, os.cpu_count() or 1)  # PIL releases the GIL while decoding and resizing
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return np.stack(list(pool.map(self.decode, (self.paths[i] for i in index))))

    def decode(self, path: str) -> np.ndarray:
        """One image file as uint8 ``[3, size, size]`` (the node cache and the streaming path share it)."""
        from PIL import Image

        try:
            with Image.open(path) as im:
                img = im.convert("RGB")
        except Exception as exc:  # PIL raises many types (UnidentifiedImageError, OSError, SyntaxError, ...)
            raise DataError(f"`data_dir` holds an unreadable image {path!r}: {one_line(exc)}") from exc
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
class RawData:
    """What a dataset's files hold, before the split: labelled training pool, optional test and unlabeled sources."""

    num_classes: int
    pool: ArraySource | FileSource
    test: ArraySource | FileSource | None  # None: hold a test split out of the pool
    unlabeled: ArraySource | None = None
    n_test: int | None = None  # fixed split sizes (digits); None: 10 %, at most 10,000
    n_val: int | None = None


@dataclass
class Plan:
    """A located dataset: a cheap fingerprint of its source files and a function that decodes them."""

    root: Path | None
    fingerprint: list[Any]
    build: Callable[[], RawData]
    warnings: tuple[str, ...] = ()
    num_files: int | None = None  # encoded image files (trees of files only): sizes the decoded cache before decoding


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
def _plan_digits(size: int) -> Plan:
    import sklearn

    def build() -> RawData:
        from sklearn.datasets import load_digits

        d = load_digits()
        x = d.images.astype(np.float32)[:, None] / 16.0  # [N, 1, 8, 8] in [0, 1]
        if size != 8:
            x = _resize_float(x, size)
        x = np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)
        x = np.repeat(x, CHANNELS, axis=1)  # RGB, so colour ops and Lab/YCbCr views run unchanged
        return RawData(10, ArraySource(x, d.target, size=size), None, n_test=300, n_val=300)

    return Plan(None, [["sklearn", sklearn.__version__]], build)


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


def read_cifar_file(path: Path, label_key: str, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    where = f"`data_dir` file {str(path)!r}"
    try:
        with open(path, "rb") as fh:
            entry = _NumpyUnpickler(fh, encoding="latin1").load()  # latin1: the files were pickled by Python 2
    except Exception as exc:
        raise DataError(f"{where} is not a readable CIFAR pickle: {one_line(exc)}") from exc
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
        raise DataError(f"{where}: {label_key!r} must be a list of integers: {one_line(exc)}") from exc
    if labels.shape != (data.shape[0],):
        raise DataError(f"{where}: {label_key!r} must hold one label per image ({data.shape[0]}), but got shape "
                        f"{labels.shape}")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{where}: {label_key!r} must lie in [0, {num_classes}), but got "
                        f"[{labels.min()}, {labels.max()}]")
    return data.reshape(-1, 3, 32, 32), labels  # row-major planes R, G, B: no transpose


def _plan_cifar(name: str, data_dir: Path, size: int) -> Plan:
    folder, train_files, test_files, label_key, classes = _CIFAR[name]
    root = _locate(data_dir, folder, train_files[0])
    paths = [_require(root / f, name=name, what=f"{folder}/{f}") for f in train_files + test_files]

    def read(files: list[str]) -> ArraySource:
        parts = [read_cifar_file(root / f, label_key, classes) for f in files]
        return ArraySource(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), size=size)

    return Plan(root, [_stat(p, root) for p in paths],
                 lambda: RawData(classes, read(train_files), read(test_files)))


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


def _plan_stl10(data_dir: Path, size: int) -> Plan:
    root = _locate(data_dir, "stl10_binary", "train_X.bin")
    files = ["train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin"]
    paths = [_require(root / f, name="stl10", what=f"stl10_binary/{f}") for f in files]
    unlabeled = root / "unlabeled_X.bin"
    notes: tuple[str, ...] = ()
    if unlabeled.exists():
        paths.append(unlabeled)
    else:
        notes = (f"stl10: {str(unlabeled)!r} not found; `train` holds only the labelled training images",)

    def source(stem: str) -> ArraySource:
        x = _read_stl_images(root / f"{stem}_X.bin")
        return ArraySource(x, _read_stl_labels(root / f"{stem}_y.bin", len(x)), size=size, transpose=True)

    def build() -> RawData:
        extra = None
        if unlabeled.exists():
            x = _read_stl_images(unlabeled)
            extra = ArraySource(x, np.full(len(x), -1, dtype=np.int64), size=size, transpose=True)
        return RawData(10, source("train"), source("test"), extra)

    return Plan(root, [_stat(p, root) for p in paths], build, notes)


# -- TinyImageNet ------------------------------------------------------------------------------------------------------
def _plan_tinyimagenet(data_dir: Path, size: int) -> Plan:
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

    def build() -> RawData:
        return RawData(len(wnids), FileSource(train_paths, np.asarray(train_labels), size=size),
                    FileSource(test_paths, np.asarray(test_labels), size=size))

    return Plan(root, fingerprint, build, num_files=len(train_paths) + len(test_paths))


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


def _plan_folder(name: str, data_dir: Path, size: int) -> Plan:
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

    def build() -> RawData:
        test = FileSource(test_paths, np.asarray(test_labels), size=size) if test_paths else None
        return RawData(len(classes), FileSource(paths, np.asarray(labels), size=size), test)

    return Plan(data_dir, fingerprint, build, num_files=len(paths) + len(test_paths))


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
                        f"{one_line(exc)}") from exc


def locate_dataset(name: str, root: Path | None, size: int, download: bool) -> Plan:
    def locate() -> Plan:
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
        if name not in DOWNLOADABLE:
            raise DataError(f"{exc} (download=True fetches only {', '.join(DOWNLOADABLE)})") from exc
    assert root is not None
    _download(name, root)
    return locate()


