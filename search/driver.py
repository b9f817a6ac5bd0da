"""Ray Train around the shared loop: the per-worker entry point and the trainer factory.

``train_worker`` is what every Train worker runs: it rebuilds the TrialSpec from the flat config, restores the
latest checkpoint Ray Train hands it (a retried or resumed run), and calls :func:`trainables.loop.fit` with a
reporter that turns each epoch into one ``ray.train.report`` (rank 0 attaches the checkpoint).
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

from search.cluster import TrialResources
from trainables.trial import TrialSpec

__all__ = ["RayTrainReporter", "build_trainer", "progress_line", "read_checkpoint", "train_worker"]

STATE_FILE = "state.pt"


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load the state dict stored in a checkpoint directory."""
    return torch.load(Path(path) / STATE_FILE, map_location="cpu", weights_only=False)


def progress_line(metrics: dict[str, Any]) -> str:
    """One concise line per epoch: epoch, loss, kNN accuracy, throughput (and probes at the end)."""
    keys = ("train_loss", "knn_top1", "linear_top1", "logreg_top1", "images_per_s", "epoch_time_s")
    parts = [f"{k}={metrics[k]:.4g}" for k in keys if isinstance(metrics.get(k), float)]
    return f"epoch {metrics['epoch']}: " + " ".join(parts)


class RayTrainReporter:
    """Reporter for :func:`trainables.loop.fit` inside a Ray Train worker."""

    def report(self, metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
        import ray.train

        if state is None:
            ray.train.report(metrics)
            return
        print(progress_line(metrics), file=sys.stderr, flush=True)
        with tempfile.TemporaryDirectory(prefix="csweep-ckpt-") as tmp:
            torch.save(state, Path(tmp) / STATE_FILE)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                             checkpoint_dir_name=f"checkpoint_epoch_{metrics['epoch']:05d}")


def train_worker(config: dict[str, Any]) -> None:
    """Entry point of every Ray Train worker. ``config = {"settings": TrialSpec.flat(), "cpus_per_worker": c}``."""
    import ray.train

    from trainables.loop import fit

    settings = dict(config["settings"])
    spec = TrialSpec.from_settings(settings.pop("method"), settings)
    torch.set_num_threads(spec.train.num_threads or max(1, int(config.get("cpus_per_worker", 1))))
    checkpoint = ray.train.get_checkpoint()
    state = None
    if checkpoint is not None:
        with checkpoint.as_directory() as path:
            state = read_checkpoint(path)
    fit(spec, reporter=RayTrainReporter(), resume_state=state)


def build_trainer(spec: TrialSpec, resources: TrialResources, *, name: str, storage_path: str,
                  max_failures: int = 0, callbacks: list | None = None, num_to_keep: int = 2):
    """A ``TorchTrainer`` for one trial: gloo on CPU, NCCL on GPU, one checkpoint per epoch (keep the last few)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    return TorchTrainer(
        train_worker,
        train_loop_config={"settings": spec.flat(), "cpus_per_worker": resources.cpus_per_worker},
        scaling_config=ScalingConfig(num_workers=resources.workers, use_gpu=resources.gpus_per_worker > 0,
                                     resources_per_worker=resources.worker_bundle),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            # A controller that cannot place its workers must fail, not retry forever (DESIGN.md, leaked PGs).
            failure_config=FailureConfig(max_failures=max_failures, controller_failure_limit=3),
            checkpoint_config=CheckpointConfig(num_to_keep=num_to_keep),
            callbacks=callbacks or [],
        ),
    )
