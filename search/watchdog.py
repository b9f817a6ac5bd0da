"""Faults that stop a whole sweep, each with one line and its own exit code, instead of a hang or a traceback.

Tune has no bound on how long a trial may wait for resources, and a full or read-only storage path makes every
later trial fail in turn (or the driver crash with a SQLite traceback). :class:`SweepWatchdog`, a Tune callback that
runs at the start of every controller step, turns both into a :class:`SweepFault`:

- **stalled** (exit 75): some trial has been PENDING for ``pending_timeout_s`` while no trial of the sweep ran, so
  nothing of ours will free the resources it waits for (the cluster is busy with other work, or a node type that
  would hold it never came up);
- **storage** (exit 74): a probe file cannot be written and flushed in the experiment directory (every 2 s, local
  storage only), e.g. ENOSPC, EROFS, EDQUOT, EACCES.

Raising from the callback ends ``Tuner.fit`` before Tune's next experiment snapshot, so the last snapshot on storage
stays whole; finished trials and the study are untouched and ``csweep resume NAME`` continues once the cause is
fixed (trials that were running continue from their last checkpoint). :func:`storage_error` also recognises a
storage failure raised from anywhere else in ``fit`` (Tune's own snapshot, the SQLite study).
"""

from __future__ import annotations

import errno
import logging
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from ray.tune import Callback

from search.cluster import amount_text

__all__ = ["EXIT_STALLED", "EXIT_STORAGE", "SweepFault", "SweepWatchdog", "as_sweep_fault", "exception_chain",
           "probe_write", "storage_error", "storage_message"]

#: Exit code of a sweep stopped because its storage could not be written (sysexits EX_IOERR).
EXIT_STORAGE = 74
#: Exit code of a sweep stopped because a trial's resources did not appear in time (sysexits EX_TEMPFAIL).
EXIT_STALLED = 75

#: errno values that mean "this storage cannot take writes now".
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.EFBIG, errno.EIO})
#: SQLite's wording of the same conditions (sqlite3 / SQLAlchemy OperationalError messages).
_SQLITE_STORAGE = ("database or disk is full", "readonly database", "disk i/o error", "unable to open database")


class SweepFault(Exception):
    """A condition that stops the whole sweep; ``exit_code`` is what ``csweep run``/``resume`` return."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def exception_chain(exc: BaseException | None) -> Iterator[BaseException]:
    """``exc``, then what caused it (``__cause__``, else ``__context__``), and so on."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        cause = getattr(exc, "cause", None)  # Ray's RayTaskError keeps the worker's exception there
        exc = exc.__cause__ or exc.__context__ or (cause if isinstance(cause, BaseException) else None)


def storage_error(exc: BaseException | None) -> str | None:
    """The first storage failure in ``exc``'s chain, as ``ErrorName: message``, or None."""
    for e in exception_chain(exc):
        if isinstance(e, OSError) and e.errno in STORAGE_ERRNOS:
            return f"{type(e).__name__}: [Errno {e.errno}] {e.strerror}"
        text = str(e).splitlines()[0] if str(e) else ""
        if "OperationalError" in type(e).__name__ and any(s in text.lower() for s in _SQLITE_STORAGE):
            return f"{type(e).__name__}: {text}"
    return None


def as_sweep_fault(exc: BaseException, *, name: str, where: str) -> SweepFault | None:
    """The :class:`SweepFault` in ``exc``'s chain, or one made from a storage failure in it (exit 74); None when
    ``exc`` is neither (a bug, whose traceback is wanted)."""
    fault = next((e for e in exception_chain(exc) if isinstance(e, SweepFault)), None)
    reason = storage_error(exc)
    if fault is None and reason is not None:
        fault = SweepFault(storage_message(name, where, reason), EXIT_STORAGE)
    return fault


def probe_write(directory: str | os.PathLike) -> None:
    """Write, flush to disk and remove a 4 KiB file in ``directory``; raises the OSError a full or read-only file
    system gives (a new file, so a block must be allocated; ``fsync``, so delayed allocation reports ENOSPC)."""
    fd, path = tempfile.mkstemp(prefix=".csweep-probe-", dir=directory)
    try:
        os.write(fd, b"\0" * 4096)
        os.fsync(fd)
    finally:
        os.close(fd)
        os.unlink(path)


_TUNE_CONTROLLER_LOGGER = "ray.tune.execution.tune_controller"


class _StorageFailureFilter(logging.Filter):
    """Drops Tune's "Trial task failed" record (a Ray traceback) when the trial failed on the storage, keeping the
    reason: the watchdog then stops the sweep with one line instead."""

    def __init__(self) -> None:
        super().__init__()
        self.reason: str | None = None

    def filter(self, record: logging.LogRecord) -> bool:
        reason = storage_error(record.exc_info[1] if record.exc_info else None)
        if reason is None:
            return True
        self.reason = self.reason or reason
        return False


class SweepWatchdog(Callback):
    """Stop the sweep with a :class:`SweepFault` when a trial waits too long or the storage refuses writes.

    ``experiment_dir``: the local experiment directory to probe (None for s3:// and other remote storage, whose
    failures surface through :func:`storage_error`).
    """

    def __init__(self, *, name: str, pending_timeout_s: float, experiment_dir: str | None,
                 probe_every_s: float = 2.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.pending_timeout_s = pending_timeout_s
        self.experiment_dir = experiment_dir
        self.probe_every_s = probe_every_s
        self.clock = clock
        self._idle_since: float | None = None
        self._last_probe = float("-inf")
        self._trial_failures = _StorageFailureFilter()

    def setup(self, **info) -> None:
        logging.getLogger(_TUNE_CONTROLLER_LOGGER).addFilter(self._trial_failures)

    def on_experiment_end(self, trials: list, **info) -> None:
        logging.getLogger(_TUNE_CONTROLLER_LOGGER).removeFilter(self._trial_failures)

    def on_trial_error(self, iteration: int, trials: list, trial, **info) -> None:
        """A trial that failed writing to the storage stops the sweep (its traceback was filtered out)."""
        if self._trial_failures.reason is not None:
            where = self.experiment_dir or "the storage path"
            raise SweepFault(storage_message(self.name, where, self._trial_failures.reason), EXIT_STORAGE)

    def on_step_begin(self, iteration: int, trials: list, **info) -> None:
        now = self.clock()
        self._check_storage(now)
        self._check_pending(now, trials)

    def _check_storage(self, now: float) -> None:
        if self.experiment_dir is None or now - self._last_probe < self.probe_every_s:
            return
        self._last_probe = now
        if not Path(self.experiment_dir).is_dir():  # Tune has not created it yet
            return
        try:
            probe_write(self.experiment_dir)
        except OSError as e:
            reason = storage_error(e) or f"{type(e).__name__}: {e}"
            raise SweepFault(storage_message(self.name, self.experiment_dir, reason), EXIT_STORAGE) from e

    def _check_pending(self, now: float, trials: list) -> None:
        pending = [t for t in trials if t.status == "PENDING"]
        if not pending or any(t.status == "RUNNING" for t in trials):
            self._idle_since = None
            return
        if self._idle_since is None:
            self._idle_since = now
            return
        waited = now - self._idle_since
        if waited < self.pending_timeout_s:
            return
        trial = pending[0]
        bundles = getattr(trial.placement_group_factory, "bundles", None) or []
        asked = " + ".join("{" + ", ".join(amount_text(k, v) for k, v in b.items() if v) + "}" for b in bundles)
        raise SweepFault(
            f"`pending_timeout`: trial {trial.trial_id} waited {waited:.0f} s for {asked or 'its resources'} "
            f"(pending_timeout={self.pending_timeout_s:g} s) and no trial of the sweep ran meanwhile "
            f"(free now: {_free_resources()}); the sweep stopped: free those resources or add nodes, then "
            f"`csweep resume {self.name}` (or raise --pending-timeout)", EXIT_STALLED)


def storage_message(name: str, where: str, reason: str) -> str:
    """The one line of a sweep stopped by its storage."""
    return (f"`storage_path`: cannot write to {where} ({reason}); the sweep stopped, its finished trials, checkpoints "
            f"and study are kept: free space or fix permissions there, then `csweep resume {name}`")


def _free_resources() -> str:
    try:
        import ray

        free = ray.available_resources()
    except Exception:  # no Ray connection: leave it out of the message
        return "unknown"
    return ", ".join(amount_text(k, v) for k, v in sorted(free.items()) if k in ("CPU", "GPU", "memory")) or "nothing"
