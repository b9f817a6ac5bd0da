"""Ray Train around the shared loop: the per-worker entry point and the trainer factory.

``train_worker`` is what every Train worker runs: it rebuilds the TrialSpec from the flat config, restores the
latest checkpoint Ray Train hands it (a retried or resumed run), and calls :func:`trainables.loop.fit` with a
reporter that turns each epoch into one ``ray.train.report`` (rank 0 attaches the checkpoint).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from ray.train.v2.api.callback import UserCallback

from search.cluster import TrialResources
from trainables.trial import TrialSpec

__all__ = [
    "worker_facts",
    "ProgressCallback",
    "RayTrainReporter",
    "build_trainer",
    "fit_with_progress",
    "progress_line",
    "read_checkpoint",
    "train_worker",
]

STATE_FILE = "state.pt"


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Load the state dict stored in a checkpoint directory."""
    return torch.load(Path(path) / STATE_FILE, map_location="cpu", weights_only=False)


def progress_line(metrics: dict[str, Any]) -> str:
    """One concise line per epoch: epoch, loss, kNN accuracy, throughput (and probes at the end)."""
    keys = ("train_loss", "knn_top1", "linear_top1", "logreg_top1", "images_per_s", "epoch_time_s")
    parts = [f"{k}={metrics[k]:.4g}" for k in keys if isinstance(metrics.get(k), float)]
    return f"epoch {metrics['epoch']}: " + " ".join(parts)


def worker_facts() -> dict[str, Any]:
    """Where and with what a report was produced: the Ray node id and the package versions of this worker."""
    import ray

    import trainables

    return {
        "node_id": ray.get_runtime_context().get_node_id(),
        "torch_version": torch.__version__,
        "ray_version": ray.__version__,
        "csweep_version": trainables.__version__,
    }


class RayTrainReporter:
    """Reporter for :func:`trainables.loop.fit` inside a Ray Train worker."""

    def report(self, metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
        import ray.train

        metrics = {**metrics, **worker_facts()}
        if state is None:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="csweep-ckpt-") as tmp:
            torch.save(state, Path(tmp) / STATE_FILE)
            ray.train.report(
                metrics,
                checkpoint=ray.train.Checkpoint.from_directory(tmp),
                checkpoint_dir_name=f"checkpoint_epoch_{metrics['epoch']:05d}",
            )


def train_worker(config: dict[str, Any]) -> None:
    """Entry point of every Ray Train worker. ``config = {"settings": TrialSpec.flat(), "cpus_per_worker": c,
    "memory_limit_mb": m}`` (``m``: the worker's RSS limit, or None)."""
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
    if config.get("schedule"):  # `csweep train --schedule`: settings that change at given epochs (search/replay.py)
        from search.replay import fit_schedule

        schedule = {int(e): s for e, s in config["schedule"].items()}
        fit_schedule(spec, schedule, reporter=RayTrainReporter(), resume_state=state)
        return
    fit(spec, reporter=RayTrainReporter(), resume_state=state, memory_limit_mb=config.get("memory_limit_mb"))


class ProgressCallback(UserCallback):
    """Runs in the Train controller: forwards rank 0's metrics of every report to a Ray queue, so the process that
    called ``fit()`` prints one clean line per epoch instead of forwarding every worker's logs."""

    def __init__(self, queue) -> None:
        self.queue = queue

    def after_report(self, run_context, metrics, checkpoint) -> None:
        self.queue.put(dict(metrics[0]))


def fit_with_progress(trainer_factory, *, printer=print):
    """Run ``trainer_factory(callbacks).fit()`` in a thread and print a progress line for every report."""
    import threading

    from ray.util.queue import Empty, Queue

    queue = Queue()
    trainer = trainer_factory([ProgressCallback(queue)])
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as e:  # re-raised in the caller's thread
            outcome["error"] = e

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    while thread.is_alive() or not queue.empty():
        try:
            printer(progress_line(queue.get(timeout=0.5)))
        except Empty:
            continue
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def build_trainer(
    spec: TrialSpec,
    resources: TrialResources,
    *,
    name: str,
    storage_path: str,
    max_failures: int = 0,
    callbacks: list | None = None,
    num_to_keep: int = 2,
    schedule: dict | None = None,
):
    """A ``TorchTrainer`` for one trial: gloo on CPU, NCCL on GPU, one checkpoint per epoch (keep the last few)."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.train.v2.api.config import LoggingConfig

    return TorchTrainer(
        train_worker,
        train_loop_config={"settings": spec.flat(), "cpus_per_worker": resources.cpus_per_worker,
                           "memory_limit_mb": resources.memory_mb,
                           **({"schedule": schedule} if schedule else {})},
        scaling_config=ScalingConfig(
            num_workers=resources.workers,
            use_gpu=resources.gpus_per_worker > 0,
            resources_per_worker=resources.worker_bundle,
        ),
        run_config=RunConfig(
            name=name,
            storage_path=storage_path,
            # A controller that cannot place its workers must fail, not retry forever (DESIGN.md, leaked PGs).
            failure_config=FailureConfig(max_failures=max_failures, controller_failure_limit=3),
            checkpoint_config=CheckpointConfig(num_to_keep=num_to_keep),
            callbacks=callbacks or [],
            logging_config=LoggingConfig(log_level="WARNING"),
        ),
    )
