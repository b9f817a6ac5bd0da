"""``csweep train``'s inline executor: one local worker trains in the CLI process itself, without Ray.

Ray Train costs ~17 s of fixed start-up on a small machine (Ray, the Train controller, a worker actor and its process
group; BENCHMARKS.md, issue 16), for a run that needs none of it. :func:`train_inline` calls
:func:`trainables.loop.fit` (or :func:`search.replay.fit_schedule`) here and gives the user what the train executor
gives: a progress line per epoch, checkpoints in the run's layout (:mod:`search.runs`, so either executor resumes the
other's run), in-process retries from the newest checkpoint (``--max-failures``), the memory limit and the threads.
Importing this module, and running it, imports no Ray.
"""

from __future__ import annotations

import shutil
import tempfile
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from search.runs import (
    checkpoint_name,
    checkpoints,
    package_versions,
    progress_line,
    prune_checkpoints,
    read_checkpoint,
    read_metrics,
    set_threads,
    write_checkpoint,
)
from trainables.config import ConfigError
from trainables.data import DataError
from trainables.trial import TrialSpec

__all__ = ["InlineReporter", "NOT_RETRIED", "error_line", "train_inline"]

#: errors a retry from the last checkpoint cannot cure: a bad configuration or dataset, a worker over its memory
NOT_RETRIED: tuple[type[BaseException], ...] = (ConfigError, DataError, MemoryError)
#: Ray Train's record of the checkpoints it wrote; an inline checkpoint makes it stale (InlineReporter._save)
RAY_TRAIN_SNAPSHOT = "checkpoint_manager_snapshot.json"
_TMP_PREFIX = ".tmp-"


def error_line(error: BaseException) -> str:
    """``Type: first line of the message``."""
    lines = str(error).splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


class InlineReporter:
    """Reporter for :func:`trainables.loop.fit` in this process: a checkpoint is written into the run directory under
    a temporary name and renamed (a killed run never leaves half a checkpoint), the older ones beyond
    :data:`search.runs.KEEP_CHECKPOINTS` are removed, then the epoch's progress line is printed. Reports carry the
    train executor's facts (``node_id`` is None: no Ray node)."""

    def __init__(self, run_dir: Path, *, printer: Callable[[str], None]) -> None:
        self.run_dir = run_dir
        self.printer = printer
        self.metrics: dict[str, Any] | None = None  # the last report

    def report(self, metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
        metrics = {**metrics, "node_id": None, **package_versions()}
        if state is not None:
            self._save(state, metrics)
        self.metrics = metrics
        self.printer(progress_line(metrics))

    def _save(self, state: dict[str, Any], metrics: dict[str, Any]) -> None:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        final = self.run_dir / checkpoint_name(int(metrics["epoch"]))
        tmp = Path(tempfile.mkdtemp(prefix=f"{_TMP_PREFIX}{final.name}-", dir=self.run_dir))
        write_checkpoint(tmp, state, metrics)
        if final.exists():  # an older run's checkpoint of the same epoch (this run resumed from an earlier one)
            shutil.rmtree(final)
        tmp.rename(final)
        # Ray Train resumes from the newest checkpoint its snapshot lists; once this one is newer, the snapshot is
        # stale and would point at checkpoints pruned below. Without it the train executor starts from the newest
        # checkpoint on disk, which `csweep train` hands it (search.driver.train_worker).
        (self.run_dir / RAY_TRAIN_SNAPSHOT).unlink(missing_ok=True)
        prune_checkpoints(self.run_dir)


def train_inline(
    spec: TrialSpec,
    run_dir: Path,
    *,
    cpus_per_worker: float,
    use_gpu: bool = False,
    memory_limit_mb: float | None = None,
    max_failures: int = 0,
    schedule: Mapping[int, Mapping[str, Any]] | None = None,
    printer: Callable[[str], None] = print,
) -> tuple[dict[str, Any], str | None]:
    """Train ``spec`` here, continuing from the newest checkpoint in ``run_dir`` if any; returns the last epoch's
    metrics and the newest checkpoint's path. An error is retried up to ``max_failures`` times, each time from the
    newest checkpoint, unless retrying cannot help (:data:`NOT_RETRIED`); the last error is raised."""
    import torch

    from search.replay import fit_schedule
    from trainables.loop import fit

    for stale in run_dir.glob(f"{_TMP_PREFIX}*"):  # a killed run's half-written checkpoint
        shutil.rmtree(stale, ignore_errors=True)
    set_threads(spec.train.num_threads, cpus_per_worker)
    device = None if use_gpu else torch.device("cpu")  # fit's default is CUDA when there is one
    reporter = InlineReporter(run_dir, printer=printer)
    failures = 0
    while True:
        saved = checkpoints(run_dir)
        state = read_checkpoint(saved[-1]) if saved else None
        try:
            if schedule:
                fit_schedule(spec, schedule, reporter=reporter, resume_state=state, device=device,
                             memory_limit_mb=memory_limit_mb)
            else:
                fit(spec, reporter=reporter, resume_state=state, device=device, memory_limit_mb=memory_limit_mb)
            break
        except NOT_RETRIED:
            raise
        except Exception as e:
            if not isinstance(e, FloatingPointError):  # a diverged run says all in one line; anything else may be a bug
                printer(traceback.format_exc().rstrip())
            if failures >= max_failures:
                raise
            failures += 1
            saved = checkpoints(run_dir)
            start = f"checkpoint {saved[-1].name}" if saved else "the start"
            printer(f"csweep: {error_line(e)}; retrying from {start} (failure {failures} of {max_failures})")
    saved = checkpoints(run_dir)
    metrics = reporter.metrics if reporter.metrics is not None else read_metrics(saved[-1]) if saved else {}
    return metrics, str(saved[-1]) if saved else None
