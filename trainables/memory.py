"""A per-worker memory limit: the trial fails with a named reason instead of being killed by the kernel or Ray.

Ray's ``memory`` resource only keeps the scheduler from packing more trials on a node than their declared memory;
nothing stops a trial that uses more. :class:`MemoryGuard` measures this worker process's resident memory (RSS:
Python, torch, model, optimiser, activations, data pages) every ``interval_s`` in a thread, and the loop calls
:meth:`MemoryGuard.check` after every optimiser step and every evaluation: once the peak seen is over the limit it
raises :class:`TrialOutOfMemory` naming the peak, the limit and what to lower. Tune then retries the trial per
``--max-failures`` (from its last checkpoint) and the sweep goes on.
"""

from __future__ import annotations

import os
import resource
import threading

__all__ = ["MemoryGuard", "TrialOutOfMemory", "rss_mb"]

_PAGE_MB = os.sysconf("SC_PAGE_SIZE") / 2**20 if hasattr(os, "sysconf") else 4096 / 2**20


class TrialOutOfMemory(MemoryError):
    """A worker's resident memory went over its ``memory_per_worker`` limit."""


def rss_mb() -> float:
    """This process's current resident memory in MB (Linux ``/proc/self/statm``; elsewhere the peak RSS so far)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE_MB
    except (OSError, IndexError, ValueError):
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return maxrss / 2**20 if os.uname().sysname == "Darwin" else maxrss / 1024


class MemoryGuard:
    """Sample RSS every ``interval_s`` while inside ``with``; :meth:`check` raises once the peak exceeded ``limit_mb``.

    ``limit_mb=None`` is a no-op guard (no thread). Sampling in a thread catches the transient peak of a forward and
    backward pass (activations are freed before the step returns), which a check after the step alone would miss.
    """

    def __init__(self, limit_mb: float | None, *, interval_s: float = 0.05) -> None:
        self.limit_mb = limit_mb
        self.interval_s = interval_s
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> MemoryGuard:
        if self.limit_mb is not None:
            self.peak_mb = rss_mb()
            self._stop.clear()
            self._thread = threading.Thread(target=self._sample, name="csweep-memory-guard", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _sample(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak_mb = max(self.peak_mb, rss_mb())

    def check(self, where: str) -> None:
        """Raise :class:`TrialOutOfMemory` if the peak RSS seen so far is over the limit (``where``: e.g. the step)."""
        if self.limit_mb is None:
            return
        self.peak_mb = max(self.peak_mb, rss_mb())
        if self.peak_mb > self.limit_mb:
            raise TrialOutOfMemory(
                f"out of memory: this worker's resident memory reached {self.peak_mb:.0f} MB at {where}, over "
                f"memory_per_worker={self.limit_mb:g} MB; lower batch_size, width or eval_batch_size, or raise "
                "--memory-per-worker")
