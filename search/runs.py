"""A ``csweep train`` run on storage, Ray-free: its checkpoint layout, progress line and package facts.

Both executors of ``csweep train`` lay a run out the same way, so either resumes the other's run:
``<storage>/<name>/checkpoint_epoch_NNNNN/`` holds ``state.pt`` (the loop's full state) and ``metrics.json`` (that
epoch's report), the newest :data:`KEEP_CHECKPOINTS` of them are kept, and the newest one (by epoch) is where a rerun
of the same name continues. The train executor's Ray Train adds its own ``checkpoint_manager_snapshot.json``.
"""

from __future__ import annotations

import functools
import json
import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

__all__ = [
    "CHECKPOINT_PREFIX",
    "KEEP_CHECKPOINTS",
    "METRICS_FILE",
    "STATE_FILE",
    "checkpoint_name",
    "checkpoints",
    "package_versions",
    "prune_checkpoints",
    "progress_line",
    "read_checkpoint",
    "read_metrics",
    "set_threads",
    "write_checkpoint",
]

STATE_FILE = "state.pt"
METRICS_FILE = "metrics.json"
CHECKPOINT_PREFIX = "checkpoint_epoch_"
#: checkpoints a run keeps (the newest ones): the last for resuming, the one before in case the last is unreadable
KEEP_CHECKPOINTS = 2


def checkpoint_name(epoch: int) -> str:
    """The directory name of the checkpoint written after ``epoch`` (zero-padded: names sort as epochs)."""
    return f"{CHECKPOINT_PREFIX}{epoch:05d}"


def checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """The checkpoint directories of a local run, oldest first (none when the run does not exist)."""
    run_dir = Path(run_dir)
    return sorted(run_dir.glob(f"{CHECKPOINT_PREFIX}*")) if run_dir.is_dir() else []


def prune_checkpoints(run_dir: str | os.PathLike, keep: int = KEEP_CHECKPOINTS) -> None:
    """Remove all but the newest ``keep`` checkpoints of a local run."""
    import shutil

    for old in checkpoints(run_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def write_checkpoint(directory: str | os.PathLike, state: dict[str, Any], metrics: dict[str, Any]) -> None:
    """Write a checkpoint's files into ``directory``: the state and the metrics of the epoch it ends."""
    import torch

    torch.save(state, Path(directory) / STATE_FILE)
    (Path(directory) / METRICS_FILE).write_text(json.dumps(metrics, default=str))


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load the state dict stored in a checkpoint directory."""
    import torch

    return torch.load(Path(path) / STATE_FILE, map_location="cpu", weights_only=False)


def read_metrics(path: str | os.PathLike) -> dict[str, Any]:
    """The metrics stored with a checkpoint (empty for a checkpoint written before they were stored)."""
    file = Path(path) / METRICS_FILE
    return json.loads(file.read_text()) if file.is_file() else {}


def progress_line(metrics: dict[str, Any]) -> str:
    """One concise line per epoch: epoch, loss, kNN accuracy, throughput (and probes at the end)."""
    keys = ("train_loss", "knn_top1", "linear_top1", "logreg_top1", "images_per_s", "epoch_time_s")
    parts = [f"{k}={metrics[k]:.4g}" for k in keys if isinstance(metrics.get(k), float)]
    return f"epoch {metrics['epoch']}: " + " ".join(parts)


@functools.cache
def package_versions() -> dict[str, str | None]:
    """The versions every report carries (read from the installed metadata: imports no Ray)."""
    import torch

    import trainables

    try:
        ray_version = version("ray")
    except PackageNotFoundError:
        ray_version = None
    return {"torch_version": torch.__version__, "ray_version": ray_version, "csweep_version": trainables.__version__}


def set_threads(num_threads: int | None, cpus_per_worker: float) -> None:
    """A worker's torch threads: the ``num_threads`` setting when given, else the CPUs the worker holds."""
    import torch

    torch.set_num_threads(num_threads or max(1, int(cpus_per_worker)))
