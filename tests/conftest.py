"""Shared fixtures: a tiny-net configuration for digits, and helpers to run the CLI in a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from trainables.config import yaml_flow

ROOT = Path(__file__).resolve().parents[1]

#: Settings that make every method train a tiny net on digits in seconds on 2 CPU cores.
TINY = {"width": 0.25, "batch_size": 128, "probe_epochs": 30, "eval_batch_size": 512}


@pytest.fixture(autouse=True, scope="session")
def _node_cache(tmp_path_factory):
    """One dataset cache per test session (the node-level cache the workers memory-map)."""
    cache = tmp_path_factory.mktemp("csweep-cache")
    os.environ["CSWEEP_CACHE"] = str(cache)
    yield cache


@pytest.fixture(scope="session")
def sweep(tmp_path_factory) -> Path:
    """A real sweep (shared by the analysis and report tests): 2 configurations x 2 seeds of the quickstart space,
    run to the end (FIFO), named ``abl`` in the returned storage path."""
    storage = tmp_path_factory.mktemp("sweeps")
    proc = run_cli("run", "quickstart", "--trials", "2", "--repeats", "2", "--scheduler", "fifo", "--name", "abl",
                   "--storage-path", str(storage), "--set", "epochs=3", "--set", "probe_epochs=10",
                   "--set", "width=0.125")
    assert proc.returncode == 0, proc.stderr[-4000:]
    return storage


def run_cli(*args: str, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """Run ``csweep ARGS`` in a fresh interpreter (its own Ray, stopped when it exits)."""
    return subprocess.run([sys.executable, "-m", "search.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def set_args(settings: dict) -> list[str]:
    out = []
    for key, value in settings.items():
        out += ["--set", f"{key}={yaml_flow(value)}"]
    return out


def kill_processes_with_env(key: str, value: str) -> int:
    """SIGKILL every process whose environment has ``key=value`` (the Ray processes of one killed test driver,
    found through the unique RAY_TMPDIR it was given; never another Ray on this host). Returns how many."""
    import signal

    needle = f"{key}={value}".encode()
    n = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle in (entry / "environ").read_bytes().split(b"\0"):
                os.kill(int(entry.name), signal.SIGKILL)
                n += 1
        except (OSError, ProcessLookupError):
            continue
    return n
