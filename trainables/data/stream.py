"""Streaming: a dataset's splits read from their source files batch by batch, with memory independent of its size.

The node cache (:mod:`trainables.data.cache`) decodes a whole dataset once into uint8 ``.npy`` files: ideal for
CIFAR-size data, but ImageNet-1k at 224 px would be ~193 GB per node before the first step. A streamed split is a
:class:`StreamedImages`, an array-like ``[N, C, size, size]`` uint8 whose ``images[rows]`` decodes just those rows
from the encoded files (PIL, in a thread pool: decoding releases the GIL) with the very resize and centre crop the
cache applies, so a streamed dataset has the cached one's pixels and splits exactly (:func:`split_layout`). Nothing is
written to the node cache. The training loop already reads a batch ahead in a thread and shards a per-epoch,
seed-determined permutation across DDP workers, so streaming changes nothing else (resume stays exact).

Statistics (``mean``/``std``) of datasets without published ones are computed from a fixed sample of at most
``STATS_SAMPLE`` training images.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from trainables.data.cache import Parts, channel_stats, split_layout
from trainables.data.checks import CHANNELS, Split
from trainables.data.readers import FileSource, Plan

__all__ = ["STATS_SAMPLE", "StreamedImages", "stream_splits"]

#: Training images the statistics of a streamed dataset are computed from (a fixed-seed sample).
STATS_SAMPLE = 2000


class StreamedImages:
    """uint8 ``[N, C, size, size]`` images decoded on access from ``(source, indices)`` parts.

    Supports what the loop and the probes use: ``len``, ``shape``, ``dtype``, ``ndim`` and indexing by a slice, an
    integer or an integer array (rows in any order; the result follows it).
    """

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, parts: Parts, *, size: int, threads: int = 4) -> None:
        self.parts = [(source, np.asarray(idx, dtype=np.int64)) for source, idx in parts]
        self.size = size
        self.threads = threads
        self._offsets = np.cumsum([0] + [len(idx) for _, idx in self.parts])
        self._pool: ThreadPoolExecutor | None = None

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (int(self._offsets[-1]), CHANNELS, self.size, self.size)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        n = len(self)
        if isinstance(key, slice):
            return self._read(np.arange(*key.indices(n)))
        rows = np.asarray(key, dtype=np.int64)  # no [N] index array per batch: ImageNet has 1.28 million rows
        if ((rows < -n) | (rows >= n)).any():
            raise IndexError(f"rows {rows[(rows < -n) | (rows >= n)][:5].tolist()} out of range for {n} images")
        rows = np.where(rows < 0, rows + n, rows)
        return self._read(rows.reshape(1))[0] if rows.ndim == 0 else self._read(rows)

    def _read(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty((len(rows), CHANNELS, self.size, self.size), dtype=np.uint8)
        part = np.searchsorted(self._offsets, rows, side="right") - 1
        for p in np.unique(part):
            mask = part == p
            source, idx = self.parts[p]
            out[mask] = self._decode(source, idx[rows[mask] - self._offsets[p]])
        return out

    def _decode(self, source: Any, index: np.ndarray) -> np.ndarray:
        if not isinstance(source, FileSource):
            return source.read(index)
        if self._pool is None:  # one pool per split for the run, not one per batch
            self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="csweep-decode")
        return np.stack(list(self._pool.map(source.decode, (source.paths[i] for i in index))))

    def __getstate__(self) -> dict[str, Any]:  # picklable (Ray ships datasets to workers): the pool is rebuilt
        return {**self.__dict__, "_pool": None}


def stream_splits(plan: Plan, *, size: int, threads: int = 4) -> tuple[dict[str, Split], int, str, list, list]:
    """The splits of a located dataset, streamed: ``(splits, num_classes, train_split, mean, std)``.

    ``splits`` maps ``train_labeled``, ``val``, ``test`` (and ``train`` with unlabeled images) to a Split whose images
    are :class:`StreamedImages`; ``mean``/``std`` are computed from a fixed sample of the training images.
    """
    raw = plan.build()
    layout, train_split = split_layout(raw)
    splits = {}
    for name, parts in layout.items():
        labels = np.concatenate([source.labels[idx] for source, idx in parts]).astype(np.int64)
        labels.setflags(write=False)
        splits[name] = Split(StreamedImages(parts, size=size, threads=threads), labels)
    images = splits["train_labeled"].images
    sample = np.sort(np.random.default_rng(0).permutation(len(images))[:STATS_SAMPLE])
    mean, std = channel_stats(images[sample])
    return splits, raw.num_classes, train_split, mean, std
