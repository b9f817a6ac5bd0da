"""load_dataset on small files in the real formats: shapes, labels, pixel orientation, splits, cache, errors."""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from trainables.data import DATASETS, DataError, ImageData, check_dataset, datasets, load_dataset, readers, stream

RNG = np.random.default_rng(123)


# -- writers for the real formats --------------------------------------------------------------------------------------
def random_images(n: int, size: int) -> np.ndarray:
    return RNG.integers(0, 256, size=(n, 3, size, size), dtype=np.uint8)


def write_cifar(root: Path, name: str = "cifar10", *, per_batch: int = 4, n_test: int = 3,
                first_test: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """CIFAR python pickles (dicts with bytes keys, data uint8 [N, 3072] in R, G, B row-major planes)."""
    if name == "cifar10":
        folder, train_files, test_files, key, classes = "cifar-10-batches-py", [f"data_batch_{i}" for i in
                                                                               range(1, 6)], ["test_batch"], b"labels", 10
    else:
        folder, train_files, test_files, key, classes = "cifar-100-python", ["train"], ["test"], b"fine_labels", 100
    d = root / folder
    d.mkdir(parents=True)
    per_file = per_batch if name == "cifar10" else per_batch * 5
    train_x, train_y = random_images(per_file * len(train_files), 32), RNG.integers(0, classes, per_file * len(
        train_files))
    test_x, test_y = random_images(n_test, 32), RNG.integers(0, classes, n_test)
    if first_test is not None:
        test_x[0] = first_test
    for files, x, y in ((train_files, train_x, train_y), (test_files, test_x, test_y)):
        for i, f in enumerate(files):
            sl = slice(i * (len(x) // len(files)), (i + 1) * (len(x) // len(files)))
            with open(d / f, "wb") as fh:
                pickle.dump({b"batch_label": b"x", b"data": x[sl].reshape(-1, 3072), key: [int(v) for v in y[sl]]},
                            fh)
    with open(d / ("batches.meta" if name == "cifar10" else "meta"), "wb") as fh:
        pickle.dump({b"label_names": [b"c%d" % i for i in range(classes)]}, fh)
    return train_x, train_y, test_x, test_y


def write_stl(root: Path, *, n_train: int = 10, n_test: int = 4, n_unlabeled: int | None = 6,
              first_test: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """STL-10 binaries: images stored column-major (each [3, 96, 96] image transposed), labels 1..10."""
    d = root / "stl10_binary"
    d.mkdir(parents=True)
    train_x, test_x = random_images(n_train, 96), random_images(n_test, 96)
    if first_test is not None:
        test_x[0] = first_test
    train_y, test_y = RNG.integers(0, 10, n_train), RNG.integers(0, 10, n_test)
    for stem, x, y in (("train", train_x, train_y), ("test", test_x, test_y)):
        (d / f"{stem}_X.bin").write_bytes(np.ascontiguousarray(x.transpose(0, 1, 3, 2)).tobytes())
        (d / f"{stem}_y.bin").write_bytes((y + 1).astype(np.uint8).tobytes())
    if n_unlabeled:
        (d / "unlabeled_X.bin").write_bytes(random_images(n_unlabeled, 96).transpose(0, 1, 3, 2).tobytes())
    return train_x, train_y, test_x, test_y


def save_png(path: Path, chw: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(chw.transpose(1, 2, 0))).save(path)


def write_tree(root: Path, classes: dict[str, int], *, size: int = 12) -> None:
    for c, n in classes.items():
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            save_png(root / c / f"img{i}.png", random_images(1, size)[0])


def write_tiny(root: Path) -> None:
    d = root / "tiny-imagenet-200"
    wnids = ["n02", "n01"]  # unsorted on purpose: class indices follow sorted wnids
    (d / "val" / "images").mkdir(parents=True)
    (d / "wnids.txt").write_text("\n".join(wnids) + "\n")
    for w in wnids:
        (d / "train" / w / "images").mkdir(parents=True)
        for i in range(6):
            Image.fromarray(random_images(1, 64)[0].transpose(1, 2, 0)).save(d / "train" / w / "images" /
                                                                              f"{w}_{i}.JPEG")
    lines = []
    for i, w in enumerate(["n01", "n02", "n02"]):
        Image.fromarray(random_images(1, 64)[0].transpose(1, 2, 0)).save(d / "val" / "images" / f"val_{i}.JPEG")
        lines.append(f"val_{i}.JPEG\t{w}\t0\t0\t63\t63")
    (d / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")


def pairs(*splits) -> list[tuple[bytes, int]]:
    """The (image bytes, label) multiset of some splits, for order-free comparison."""
    return sorted((s.images[i].tobytes(), int(s.labels[i])) for s in splits for i in range(len(s)))


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "cache"


# -- digits ------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> ImageData:
    return load_dataset("digits", cache_dir=tmp_path_factory.mktemp("cache"))


def test_digits_shapes_and_split(digits: ImageData) -> None:
    assert (digits.name, digits.num_classes, digits.channels, digits.image_size) == ("digits", 10, 3, 16)
    assert (len(digits.train_labeled), len(digits.val), len(digits.test)) == (1197, 300, 300)
    assert len(digits.train_labeled) + len(digits.val) + len(digits.test) == 1797
    assert digits.train is digits.train_labeled
    for split in (digits.train_labeled, digits.val, digits.test):
        assert split.images.shape[1:] == (3, 16, 16) and split.images.dtype == np.uint8
        assert split.labels.dtype == np.int64 and set(np.unique(split.labels)) == set(range(10))
        assert np.array_equal(split.images[:, 0], split.images[:, 2])  # replicated grayscale
    assert digits.train.images.max() == 255 and digits.train.images.min() == 0
    assert len(digits.mean) == 3 and all(0 < s for s in digits.std)
    x = np.asarray(digits.train.images, dtype=np.float64) / 255
    assert np.allclose(digits.mean, x.mean(axis=(0, 2, 3))) and np.allclose(digits.std, x.std(axis=(0, 2, 3)))


def test_digits_split_is_deterministic_and_disjoint(digits: ImageData, cache: Path) -> None:
    again = load_dataset("digits", cache_dir=cache)
    for split in ("train_labeled", "val", "test"):
        assert np.array_equal(getattr(again, split).images, getattr(digits, split).images)
        assert np.array_equal(getattr(again, split).labels, getattr(digits, split).labels)
    from sklearn.datasets import load_digits

    assert sorted(np.concatenate([digits.train.labels, digits.val.labels, digits.test.labels])) == \
        sorted(load_digits().target)


def test_cache_is_memory_mapped_and_read_only(digits: ImageData) -> None:
    assert isinstance(digits.train.images, np.memmap)
    with pytest.raises(ValueError):
        digits.train.images[0, 0, 0, 0] = 1
    with pytest.raises(ValueError):
        digits.train.labels[0] = 1


def test_default_cache_dir_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CSWEEP_CACHE", str(tmp_path / "env-cache"))
    load_dataset("digits", size=8)
    assert [p.name.startswith("digits-8px-") for p in (tmp_path / "env-cache").iterdir()] == [True]


# -- CIFAR -------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_reads_pickles(tmp_path: Path, cache: Path, name: str) -> None:
    known = random_images(1, 32)[0]
    train_x, train_y, test_x, test_y = write_cifar(tmp_path / "data", name, first_test=known)
    data = load_dataset(name, data_dir=tmp_path / "data", cache_dir=cache)
    assert (data.num_classes, data.channels, data.image_size) == (10 if name == "cifar10" else 100, 3, 32)
    assert np.array_equal(data.test.images[0], known)  # no transpose: CIFAR rows are row-major planes
    assert np.array_equal(data.test.images, test_x) and np.array_equal(data.test.labels, test_y)
    n = len(train_x)
    assert (len(data.val), len(data.train_labeled)) == (round(0.1 * n), n - round(0.1 * n))
    assert data.train is data.train_labeled
    assert pairs(data.train_labeled, data.val) == sorted((x.tobytes(), int(y)) for x, y in zip(train_x, train_y))
    assert data.mean == (0.4914, 0.4822, 0.4465) if name == "cifar10" else data.mean[0] == 0.5071


def test_cifar_accepts_the_batches_folder_itself(tmp_path: Path, cache: Path) -> None:
    write_cifar(tmp_path)
    data = load_dataset("cifar10", data_dir=tmp_path / "cifar-10-batches-py", cache_dir=cache)
    assert len(data.test) == 3


def test_second_load_reads_the_cache_not_the_files(tmp_path: Path, cache: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    write_cifar(tmp_path)
    first = load_dataset("cifar10", data_dir=tmp_path, cache_dir=cache)
    calls = []
    monkeypatch.setattr(readers, "read_cifar_file", lambda *a: calls.append(a))
    # Garbage of the same size and mtime: only a decode would notice.
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    st = batch.stat()
    batch.write_bytes(b"\0" * st.st_size)
    os.utime(batch, ns=(st.st_atime_ns, st.st_mtime_ns))
    second = load_dataset("cifar10", data_dir=tmp_path, cache_dir=cache)
    assert calls == []
    assert np.array_equal(second.train.images, first.train.images)
    assert len(list(cache.iterdir())) == 1
    monkeypatch.undo()
    os.utime(batch, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # a changed source file is decoded again
    with pytest.raises(DataError, match="data_batch_1"):
        load_dataset("cifar10", data_dir=tmp_path, cache_dir=cache)


def test_cifar_size_override_resizes(tmp_path: Path, cache: Path) -> None:
    write_cifar(tmp_path)
    data = load_dataset("cifar10", data_dir=tmp_path, size=16, cache_dir=cache)
    assert data.image_size == 16 and data.test.images.shape[1:] == (3, 16, 16)


@pytest.mark.parametrize("content, match", [
    (b"not a pickle at all", "not a readable CIFAR pickle"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8)}), "lacks"),
    (pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}), r"uint8 \[N, 3072\]"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}), "one label per image"),
    (pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}), r"\[0, 10\)"),
    (pickle.dumps([1, 2]), "must hold a dict"),
    (pickle.dumps(os.getcwd), "not allowed"),  # a global outside numpy: never executed
])
def test_corrupt_cifar_pickle(tmp_path: Path, cache: Path, content: bytes, match: str) -> None:
    write_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(content)
    with pytest.raises(DataError, match=match) as err:
        load_dataset("cifar10", data_dir=tmp_path, cache_dir=cache)
    assert "`data_dir`" in str(err.value) and "data_batch_3" in str(err.value) and "\n" not in str(err.value)


def test_missing_cifar_file_says_where(tmp_path: Path, cache: Path) -> None:
    write_cifar(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(DataError, match="cifar-10-batches-py/test_batch") as err:
        load_dataset("cifar10", data_dir=tmp_path, cache_dir=cache)
    assert str(tmp_path) in str(err.value)


# -- STL-10 ------------------------------------------------------------------------------------------------------------
def test_stl10_reads_column_major_binaries(tmp_path: Path, cache: Path) -> None:
    known = np.zeros((3, 96, 96), np.uint8)
    known[0, :10, :] = 255  # red band along the top rows: a transpose would put it down the left columns
    known[2, :, -5:] = 200
    train_x, train_y, test_x, test_y = write_stl(tmp_path, first_test=known)
    data = load_dataset("stl10", data_dir=tmp_path, cache_dir=cache)
    assert np.array_equal(data.test.images[0], known)
    assert np.array_equal(data.test.images, test_x) and np.array_equal(data.test.labels, test_y)
    assert (len(data.val), len(data.train_labeled), len(data.train)) == (1, 9, 9 + 6)
    assert pairs(data.train_labeled, data.val) == sorted((x.tobytes(), int(y)) for x, y in zip(train_x, train_y))
    assert (data.train.labels[-6:] == -1).all() and (data.train.labels[:9] >= 0).all()
    assert np.array_equal(data.train.images[:9], data.train_labeled.images)
    assert data.image_size == 96 and data.num_classes == 10


def test_stl10_without_unlabeled_warns(tmp_path: Path, cache: Path) -> None:
    write_stl(tmp_path, n_unlabeled=None)
    with pytest.warns(UserWarning, match="unlabeled_X.bin"):
        data = load_dataset("stl10", data_dir=tmp_path, cache_dir=cache)
    assert data.train is data.train_labeled and (data.train.labels >= 0).all()


def test_stl10_truncated_binary(tmp_path: Path, cache: Path) -> None:
    write_stl(tmp_path)
    path = tmp_path / "stl10_binary" / "train_X.bin"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match="27648") as err:
        load_dataset("stl10", data_dir=tmp_path, cache_dir=cache)
    assert "`data_dir`" in str(err.value) and "train_X.bin" in str(err.value)


def test_stl10_label_count_mismatch(tmp_path: Path, cache: Path) -> None:
    write_stl(tmp_path)
    (tmp_path / "stl10_binary" / "test_y.bin").write_bytes(b"\x01\x02")
    with pytest.raises(DataError, match="one label per image"):
        load_dataset("stl10", data_dir=tmp_path, cache_dir=cache)


# -- TinyImageNet ------------------------------------------------------------------------------------------------------
def test_tinyimagenet_tree(tmp_path: Path, cache: Path) -> None:
    write_tiny(tmp_path)
    data = load_dataset("tinyimagenet", data_dir=tmp_path, cache_dir=cache)
    assert (data.num_classes, data.image_size) == (2, 64)
    assert data.test.images.shape == (3, 3, 64, 64)
    assert data.test.labels.tolist() == [0, 1, 1]  # n01 -> 0, n02 -> 1 (sorted wnids)
    assert (len(data.train_labeled), len(data.val)) == (11, 1)
    assert sorted(np.concatenate([data.train_labeled.labels, data.val.labels])) == [0] * 6 + [1] * 6


def test_tinyimagenet_bad_annotation(tmp_path: Path, cache: Path) -> None:
    write_tiny(tmp_path)
    (tmp_path / "tiny-imagenet-200" / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn99\t0\t0\t1\t1\n")
    with pytest.raises(DataError, match="line 1"):
        load_dataset("tinyimagenet", data_dir=tmp_path, cache_dir=cache)


# -- ImageFolder trees -------------------------------------------------------------------------------------------------
def test_folder_train_val_tree_orientation_and_resize(tmp_path: Path, cache: Path) -> None:
    write_tree(tmp_path / "train", {"cat": 5, "dog": 5})
    known = random_images(1, 8)[0]
    save_png(tmp_path / "val" / "dog" / "a.png", known)  # already 8x8: stored exactly
    wide = np.zeros((3, 12, 24), np.uint8)
    wide[0, :, :12] = 255  # left half red, right half blue
    wide[2, :, 12:] = 255
    save_png(tmp_path / "val" / "dog" / "b.png", wide)
    data = load_dataset("folder", data_dir=tmp_path, size=8, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                        cache_dir=cache)
    assert (data.num_classes, data.image_size, data.mean, data.std) == (2, 8, (0.5,) * 3, (0.25,) * 3)
    assert np.array_equal(data.test.images[0], known) and data.test.labels.tolist() == [1, 1]
    b = data.test.images[1]  # 12x24 -> 8x16 -> centre 8x8 crop: columns 4..11 of the resized image
    assert b[0, :, 0].min() > 200 and b[2, :, -1].min() > 200 and b[1].max() == 0
    assert (len(data.train_labeled), len(data.val)) == (9, 1)


def test_folder_single_tree_holds_out_test_and_computes_stats(tmp_path: Path, cache: Path) -> None:
    write_tree(tmp_path, {"a": 10, "b": 7, "c": 3}, size=8)
    data = load_dataset("folder", data_dir=tmp_path, size=8, cache_dir=cache)
    assert (len(data.test), len(data.val), len(data.train_labeled)) == (2, 2, 16)
    x = np.asarray(data.train.images, dtype=np.float64) / 255
    assert np.allclose(data.mean, x.mean(axis=(0, 2, 3))) and np.allclose(data.std, x.std(axis=(0, 2, 3)))
    assert set(np.concatenate([data.train.labels, data.val.labels, data.test.labels])) == {0, 1, 2}


def test_folder_second_load_does_not_decode(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_tree(tmp_path / "train", {"a": 4, "b": 4}, size=8)
    write_tree(tmp_path / "val", {"a": 1, "b": 1}, size=8)
    first = load_dataset("imagenet", data_dir=tmp_path, size=8, cache_dir=cache)
    monkeypatch.setattr(readers.FileSource, "decode", lambda *a: pytest.fail("decoded again"))
    second = load_dataset("imagenet", data_dir=tmp_path, size=8, cache_dir=cache)
    assert np.array_equal(first.train.images, second.train.images)
    assert second.mean == (0.485, 0.456, 0.406)
    save_png(tmp_path / "train" / "a" / "new.png", random_images(1, 8)[0])  # a new image is a new cache entry
    monkeypatch.undo()
    assert len(load_dataset("imagenet", data_dir=tmp_path, size=8, cache_dir=cache).train_labeled) == 8


def test_folder_errors(tmp_path: Path, cache: Path) -> None:
    write_tree(tmp_path / "train", {"a": 3, "b": 3}, size=8)
    (tmp_path / "train" / "empty").mkdir()
    with pytest.raises(DataError, match="class folder .*empty.* must hold at least one image"):
        load_dataset("folder", data_dir=tmp_path, size=8, cache_dir=cache)
    (tmp_path / "train" / "empty").rmdir()
    (tmp_path / "train" / "a" / "broken.png").write_bytes(b"definitely not a png")
    with pytest.raises(DataError, match="unreadable image .*broken.png"):
        load_dataset("folder", data_dir=tmp_path, size=8, cache_dir=cache)
    assert not list(cache.rglob("*.npy"))  # a failed decode leaves no partial arrays behind
    nothing = tmp_path / "nothing"
    nothing.mkdir()
    with pytest.raises(DataError, match="one sub-folder per class"):
        load_dataset("folder", data_dir=nothing, size=8, cache_dir=cache)
    with pytest.raises(DataError, match=r"`data_dir` must contain val/<class>/<image>"):
        load_dataset("imagenet100", data_dir=tmp_path, cache_dir=cache)
    write_tree(tmp_path / "val", {"zebra": 1}, size=8)
    with pytest.raises(DataError, match="only the training classes"):
        load_dataset("imagenet", data_dir=tmp_path, size=8, cache_dir=cache)


# -- argument errors ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    (dict(name="mnist"), "`dataset` must be one of digits, cifar10"),
    (dict(name="cifar10"), "`data_dir` is required"),
    (dict(name="cifar10", data_dir="/no/such/dir"), "`data_dir` must be an existing directory"),
    (dict(name="folder", data_dir="."), "`size` is required"),
    (dict(name="digits", size=4), r"`size >= 8` must hold .* size=4"),
    (dict(name="digits", size=16.0), "size=16.0"),
    (dict(name="digits", mean=(0.5, 0.5)), r"`mean` must be 3 .* mean=\(0.5, 0.5\)"),
    (dict(name="digits", std=(0.2, 0.0, 0.2)), r"`std > 0` must hold .* std=\(0.2, 0.0, 0.2\)"),
    (dict(name="digits", std="abc"), "`std` must be 3"),
    (dict(name="digits", mean=(0.5, float("nan"), 0.5)), "finite"),
])
def test_argument_errors(cache: Path, kwargs: dict, match: str) -> None:
    name = kwargs.pop("name")
    for fn in (load_dataset, check_dataset):
        with pytest.raises(DataError, match=match) as err:
            fn(name, cache_dir=cache, **kwargs)
        assert isinstance(err.value, ValueError) and "\n" not in str(err.value)


def test_check_dataset_fills_the_cache(tmp_path: Path, cache: Path) -> None:
    write_cifar(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data = check_dataset("cifar10", data_dir=tmp_path, cache_dir=cache)
    assert len(data.test) == 3 and len(list(cache.iterdir())) == 1


def test_download_only_when_files_are_missing(tmp_path: Path, cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torchvision.datasets

    calls = []

    def fake_cifar10(root: str, *, train: bool, download: bool) -> None:
        calls.append((root, download))
        write_cifar(Path(root))

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", fake_cifar10)
    target = tmp_path / "new"
    assert len(load_dataset("cifar10", data_dir=target, download=True, cache_dir=cache).test) == 3
    assert calls == [(str(target), True)]
    load_dataset("cifar10", data_dir=target, download=True, cache_dir=cache)
    assert len(calls) == 1


def test_download_is_never_attempted_for_other_datasets(tmp_path: Path, cache: Path) -> None:
    with pytest.raises(DataError, match=r"one sub-folder per class.*\(download=True fetches only cifar10, cifar100, "
                                        r"stl10\)"):
        load_dataset("folder", data_dir=tmp_path, size=8, download=True, cache_dir=cache)
    assert len(load_dataset("digits", download=True, cache_dir=cache).test) == 300


def test_dataset_names() -> None:
    assert DATASETS == ("digits", "cifar10", "cifar100", "stl10", "tinyimagenet", "imagenet", "imagenet100", "folder")


# -- streaming ---------------------------------------------------------------------------------------------------------
def write_jpeg_tree(root: Path, classes: dict[str, int], *, size: tuple[int, int] = (20, 14)) -> None:
    """Real JPEG files of varied aspect, as ImageNet's are."""
    for c, n in classes.items():
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            w, h = size if i % 2 else size[::-1]
            Image.fromarray(RNG.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / c / f"{i}.jpg", quality=90)


def test_streamed_folder_equals_the_cached_one_and_writes_nothing(tmp_path: Path, cache: Path) -> None:
    write_jpeg_tree(tmp_path / "imgs" / "train", {"a": 7, "b": 6})
    write_jpeg_tree(tmp_path / "imgs" / "val", {"a": 2, "b": 3})
    cached = load_dataset("folder", data_dir=tmp_path / "imgs", size=12, cache_dir=cache, loading="cache")
    streamed = load_dataset("folder", data_dir=tmp_path / "imgs", size=12, cache_dir=tmp_path / "unused",
                            loading="stream")
    assert not (tmp_path / "unused").exists()  # stream writes nothing to the node cache
    for split in ("train", "train_labeled", "val", "test"):
        a, b = getattr(cached, split), getattr(streamed, split)
        assert isinstance(b.images, stream.StreamedImages) and b.images.shape == a.images.shape
        assert np.array_equal(b.images[:], a.images) and np.array_equal(b.labels, a.labels), split
    rows = np.array([4, 0, 7, 3])  # any order, as the loop's shuffled batches ask
    assert np.array_equal(streamed.train.images[rows], cached.train.images[rows])
    assert np.array_equal(streamed.train.images[5], cached.train.images[5])
    assert np.array_equal(streamed.train.images[-1], cached.train.images[-1])
    assert np.array_equal(streamed.train.images[2:9:3], cached.train.images[2:9:3])
    with pytest.raises(IndexError, match="out of range"):
        streamed.train.images[[0, len(cached.train)]]
    assert np.allclose(streamed.mean, cached.mean) and np.allclose(streamed.std, cached.std)  # all < STATS_SAMPLE


def test_streamed_images_hold_no_pixels_and_pickle(tmp_path: Path) -> None:
    import pickle as pkl

    write_jpeg_tree(tmp_path / "train", {"a": 3, "b": 3})
    data = load_dataset("folder", data_dir=tmp_path, size=8, loading="stream")
    images = data.train.images
    assert not any(isinstance(v, np.ndarray) and v.size >= images.shape[0] * 3 * 8 * 8
                   for v in vars(images).values())  # memory independent of the dataset's size
    copy = pkl.loads(pkl.dumps(images))
    assert np.array_equal(copy[:], images[:])


def test_auto_loading_streams_only_large_file_trees(monkeypatch: pytest.MonkeyPatch) -> None:
    plan = readers.Plan(None, [], lambda: None, num_files=1_281_167)  # ImageNet-1k's training images
    assert datasets.resolve_loading(plan, 224, "auto") == "stream"
    assert datasets.resolve_loading(plan, 32, "auto") == "cache"  # 3.9 GB decoded
    assert datasets.resolve_loading(readers.Plan(None, [], lambda: None), 224, "auto") == "cache"  # arrays
    assert datasets.resolve_loading(plan, 224, "cache") == "cache"
    with pytest.raises(DataError, match="`data_loading` must be one of auto, cache, stream"):
        datasets.resolve_loading(plan, 224, "lazy")


def test_a_streamed_dataset_trains_and_resumes_exactly(tmp_path: Path) -> None:
    import torch
    from method_contract import straight_and_resumed

    from trainables.trial import TrialSpec

    write_jpeg_tree(tmp_path / "train", {"a": 20, "b": 20})
    settings = {"dataset": "folder", "data_dir": str(tmp_path), "image_size": 8, "data_loading": "stream",
                "width": 0.125, "batch_size": 8, "epochs": 2, "probe_epochs": 2, "knn_k": 5, "deterministic": True,
                "num_threads": 1}
    spec = TrialSpec.from_settings("simclr", settings)
    straight, first, second = straight_and_resumed(spec)
    assert [m["train_loss"] for m in first.metrics + second.metrics] == [m["train_loss"] for m in straight.metrics]
    for name, tensor in straight.state["model"].items():
        assert torch.equal(tensor, second.state["model"][name]), name
