"""Ray Train around the shared loop: the per-worker entry point and the trainer factory.

``train_worker`` is what every Train worker runs: it rebuilds the TrialSpec from the flat config, restores the
newest checkpoint (the one Ray Train hands it on a retry or resume, or a newer one ``csweep train`` found on disk,
written by the inline executor), and calls :func:`trainables.loop.fit` with a reporter that turns each epoch into one
``ray.train.report`` (rank 0 attaches the checkpoint). The run's layout on storage is :mod:`search.runs`'.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from ray.train.v2.api.callback import UserCallback

from search.cluster import TrialResources
from search.runs import (
    KEEP_CHECKPOINTS,
    checkpoint_name,
    package_versions,
    progress_line,
    read_checkpoint,
    set_threads,
    write_checkpoint,
)
from trainables.trial import TrialSpec

__all__ = [
    "worker_facts",
    "ProgressCallback",
    "RayTrainReporter",
    "build_trainer",
    "fit_with_progress",
    "train_worker",
]


def worker_facts() -> dict[str, Any]:
    """Where and with what a report was produced: the Ray node id and the package versions of this worker."""
    import ray

    return {"node_id": ray.get_runtime_context().get_node_id(), **package_versions()}


class RayTrainReporter:
    """Reporter for :func:`trainables.loop.fit` inside a Ray Train worker."""

    def report(self, metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
        import ray.train

        metrics = {**metrics, **worker_facts()}
        if state is None:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="csweep-ckpt-") as tmp:
            write_checkpoint(tmp, state, metrics)
            ray.train.report(
                metrics,
                checkpoint=ray.train.Checkpoint.from_directory(tmp),
                checkpoint_dir_name=checkpoint_name(metrics["epoch"]),
            )


def train_worker(config: dict[str, Any]) -> None:
    """Entry point of every Ray Train worker. ``config = {"settings": TrialSpec.flat(), "cpus_per_worker": c,
    "memory_limit_mb": m, "resume_from": path}`` (``m``: the worker's RSS limit, or None; ``path``: the newest
    checkpoint of the run on disk when the run started, or None)."""
    import ray.train

    from trainables.loop import fit

    settings = dict(config["settings"])
    spec = TrialSpec.from_settings(settings.pop("method"), settings)
    set_threads(spec.train.num_threads, config.get("cpus_per_worker", 1))
    state = _resume_state(ray.train.get_checkpoint(), config.get("resume_from"))
    memory = config.get("memory_limit_mb")
    if config.get("schedule"):  # `csweep train --schedule`: settings that change at given epochs (search/replay.py)
        from search.replay import fit_schedule

        schedule = {int(e): s for e, s in config["schedule"].items()}
        fit_schedule(spec, schedule, reporter=RayTrainReporter(), resume_state=state, memory_limit_mb=memory)
        return
    fit(spec, reporter=RayTrainReporter(), resume_state=state, memory_limit_mb=memory)


def _resume_state(checkpoint, resume_from: str | None) -> dict[str, Any] | None:
    """The state of the newer (by epoch) of Ray Train's checkpoint (its own newest report: a retry or a resumed
    Train run) and ``resume_from`` (the newest on disk at the start, possibly written by the inline executor, which
    Ray Train's snapshot does not list)."""
    if checkpoint is not None and (resume_from is None or Path(checkpoint.path).name >= Path(resume_from).name):
        with checkpoint.as_directory() as path:
            return read_checkpoint(path)
    return read_checkpoint(resume_from) if resume_from else None


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
    num_to_keep: int = KEEP_CHECKPOINTS,
    schedule: dict | None = None,
    resume_from: str | None = None,
):
    """A ``TorchTrainer`` for one trial: gloo on CPU, NCCL on GPU, one checkpoint per epoch (keep the last few);
    ``resume_from``: a checkpoint directory to start from when Ray Train has none of its own that is newer."""
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer
    from ray.train.v2.api.config import LoggingConfig

    return TorchTrainer(
        train_worker,
        train_loop_config={"settings": spec.flat(), "cpus_per_worker": resources.cpus_per_worker,
                           "memory_limit_mb": resources.memory_mb, "resume_from": resume_from,
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
