"""Faults that stop a trial or the sweep: a worker over its memory limit, trials whose resources never appear, a
storage path that fills up mid-sweep. Each ends in one line and a stated exit code, and the sweep can be resumed."""

from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import optuna
import pytest
from conftest import ROOT, kill_processes_with_env, run_cli

from search.watchdog import EXIT_STALLED, EXIT_STORAGE, SweepFault, SweepWatchdog, as_sweep_fault, storage_error
from trainables.memory import MemoryGuard, TrialOutOfMemory, rss_mb

# -- the memory guard ------------------------------------------------------------------------------------------------


def test_memory_guard_names_the_peak_and_the_limit():
    base = rss_mb()
    with MemoryGuard(base + 100, interval_s=0.01) as guard:
        guard.check("the start")  # under the limit: nothing
        block = np.ones(300 * 2**20 // 8)  # 300 MB, touched
        time.sleep(0.05)
        del block  # freed before the check: the sampler thread saw the peak anyway
        with pytest.raises(TrialOutOfMemory, match=r"reached \d+ MB at epoch 1, step 3, over memory_per_worker="):
            guard.check("epoch 1, step 3")
    assert guard.peak_mb > base + 250
    with MemoryGuard(None) as off:  # no limit: no thread, never raises
        off.check("anywhere")
    assert off._thread is None


# -- the watchdog, driven by hand -------------------------------------------------------------------------------------


def _trial(trial_id: str, status: str):
    return SimpleNamespace(trial_id=trial_id, status=status,
                           placement_group_factory=SimpleNamespace(bundles=[{"CPU": 2.0, "memory": 2**30}]))


def test_a_trial_pending_while_none_runs_stops_the_sweep_after_the_timeout():
    now = [0.0]
    dog = SweepWatchdog(name="sw", pending_timeout_s=30, experiment_dir=None, clock=lambda: now[0])
    running, waiting = _trial("a", "RUNNING"), _trial("b", "PENDING")
    for t in range(0, 100, 10):  # waiting behind a running trial of the sweep is normal, however long
        now[0] = t
        dog.on_step_begin(iteration=t, trials=[running, waiting])
    running.status = "TERMINATED"
    for t in (100, 110, 129):
        now[0] = t
        dog.on_step_begin(iteration=t, trials=[running, waiting])
    now[0] = 131
    with pytest.raises(SweepFault) as info:
        dog.on_step_begin(iteration=131, trials=[running, waiting])
    assert info.value.exit_code == EXIT_STALLED == 75
    text = str(info.value)
    assert "`pending_timeout`: trial b waited 31 s for {2 CPU, 1024 MB memory}" in text, text
    assert "csweep resume sw" in text


def test_storage_errors_are_recognised_through_the_exception_chain():
    def raised(outer, inner):
        try:
            try:
                raise inner
            except BaseException as e:
                raise outer from e
        except BaseException as e:
            return e

    full = raised(RuntimeError("Trial controller checkpointing failed"), OSError(errno.ENOSPC, "No space left"))
    assert storage_error(full) == "OSError: [Errno 28] No space left"
    sqlite = sqlite3.OperationalError("database or disk is full")
    assert storage_error(raised(ValueError("x"), sqlite)) == "OperationalError: database or disk is full"
    assert storage_error(raised(ValueError("x"), OSError(errno.ENOENT, "missing"))) is None
    assert storage_error(ValueError("unrelated")) is None
    fault = as_sweep_fault(full, name="sw", where="/data/sw")
    assert fault.exit_code == EXIT_STORAGE and str(fault).startswith(
        "`storage_path`: cannot write to /data/sw (OSError: [Errno 28] No space left);")
    assert as_sweep_fault(ValueError("a bug"), name="sw", where="/data/sw") is None


def test_storage_probe_turns_a_write_failure_into_one_line(tmp_path):
    blocked = tmp_path / "exp"
    blocked.mkdir()
    dog = SweepWatchdog(name="sw", pending_timeout_s=600, experiment_dir=str(blocked))
    dog.on_step_begin(iteration=0, trials=[])  # writable: the probe file is written, flushed and removed
    assert not list(blocked.iterdir())
    dog.experiment_dir = "/proc/sys"  # a file system that refuses new files, even to root
    dog._last_probe = float("-inf")
    with pytest.raises(SweepFault) as info:
        dog.on_step_begin(iteration=1, trials=[])
    assert info.value.exit_code == EXIT_STORAGE == 74
    assert "`storage_path`: cannot write to /proc/sys (" in str(info.value)
    assert "csweep resume sw" in str(info.value)


# -- end to end (Ray) ------------------------------------------------------------------------------------------------

MEMORY_SPACE = '''
FIXED = {"method": "supcon", "epochs": 1, "probe_epochs": 2, "temperature": 0.1}
POINTS_TO_EVALUATE = [{"width": 0.125, "batch_size": 128}, {"width": 0.5, "batch_size": 512}]
TRIALS = 2


def space(trial, fixed):
    trial.suggest_categorical("width", [0.125, 0.5])
    trial.suggest_categorical("batch_size", [128, 512])
'''
#: Measured peak RSS of one worker (2 cores, torch 2.x, digits, one epoch): width 0.125 / batch 128 ~0.92 GB alone and
#: ~1.0-1.1 GB in a Tune actor; width 0.5 / batch 512 ~1.8 GB alone. 1400 MB sits ~300 MB from both.
MEMORY_LIMIT = "1400M"


@pytest.mark.slow
def test_a_worker_over_its_memory_limit_errors_with_the_reason_is_retried_and_the_sweep_goes_on(tmp_path):
    (tmp_path / "mem.py").write_text(MEMORY_SPACE)
    proc = run_cli("run", str(tmp_path / "mem.py"), "--name", "mem", "--scheduler", "fifo", "--sampler", "random",
                   "--concurrency", "1", "--max-failures", "1", "--memory-per-worker", MEMORY_LIMIT,
                   "--storage-path", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    study = optuna.load_study(study_name="mem", storage=f"sqlite:///{tmp_path / 'out' / 'mem' / 'study.db'}")
    by_width = {t.params["width"]: t for t in study.trials}
    assert by_width[0.125].state == optuna.trial.TrialState.COMPLETE
    big = by_width[0.5]
    assert big.state == optuna.trial.TrialState.FAIL
    assert "TrialOutOfMemory: out of memory" in big.user_attrs["csweep_error"]
    assert "over memory_per_worker=1400 MB" in big.user_attrs["csweep_error"]
    error_txt = (Path(big.user_attrs["tune_trial_dir"]) / "error.txt").read_text()
    assert error_txt.count("Failure #") == 2, error_txt[-2000:]  # tried once, retried once (--max-failures 1)
    assert error_txt.count("TrialOutOfMemory: out of memory") >= 2, error_txt[-2000:]
    from analysis import build_tables

    trials = build_tables(tmp_path / "out" / "mem").trials.set_index("width")
    assert trials.loc[0.5, "status"] == "errored" and "out of memory" in trials.loc[0.5, "error"]
    assert trials.loc[0.125, "status"] == "completed"


STALL_SCRIPT = '''
import sys, time
from search.cluster import init_ray
from search.commands import _fit_and_report
from search.spec import SweepConfig, write_sweep_file
from search.sweep import build_tuner

# a trial asks for 2 CPUs of a 1-CPU Ray: it stays PENDING (Tune only warns), and no trial of the sweep runs
cfg = SweepConfig(name="stall", space="quickstart", storage_path=sys.argv[1], trials=1, cpus_per_worker=2.0,
                  pending_timeout_s=3.0, scheduler="fifo", fixed={"epochs": 1, "width": 0.125, "probe_epochs": 2})
init_ray(num_cpus=1, driver_slots=1)
write_sweep_file(cfg)
start = time.monotonic()
code = _fit_and_report(cfg, lambda callbacks: build_tuner(cfg, concurrency=1, callbacks=callbacks))
print(f"exit={code} waited={time.monotonic() - start:.1f}")
'''


@pytest.mark.slow
def test_a_trial_whose_resources_never_appear_stops_the_sweep_within_its_timeout(tmp_path):
    ray_tmp = f"/tmp/cst{os.getpid()}"
    try:
        proc = subprocess.run([sys.executable, "-c", STALL_SCRIPT, str(tmp_path)], cwd=ROOT, capture_output=True,
                              text=True, timeout=180, env={**os.environ, "RAY_TMPDIR": ray_tmp})
    finally:
        kill_processes_with_env("RAY_TMPDIR", ray_tmp)
    assert proc.returncode == 0, proc.stderr[-4000:]
    last = proc.stdout.strip().splitlines()[-1]
    code, waited = (float(x.split("=")[1]) for x in last.split())
    assert code == EXIT_STALLED
    assert 3.0 <= waited < 30.0, last  # the timeout, plus Tune's start-up and one controller step
    lines = [x for x in proc.stderr.splitlines() if x.startswith("csweep: error:")]
    assert len(lines) == 1 and "`pending_timeout`: trial" in lines[0] and "{2 CPU}" in lines[0], proc.stderr[-3000:]
    assert "csweep resume stall" in lines[0] and "Traceback" not in proc.stderr


FULL_DISK_SCRIPT = r'''
set -u
mount -t tmpfs -o size=64m tmpfs "$STORE"
"$PY" -m search.cli run quickstart --trials 2 --concurrency 1 --scheduler fifo --name full --storage-path "$STORE" \
    --set epochs=6 --set probe_epochs=2 --set width=0.125 > "$OUT/run.out" 2> "$OUT/run.err" &
pid=$!
for i in $(seq 1200); do
    grep -qs '"finished": true' "$STORE"/full/trial_driver_*/result.json && break
    sleep 0.25
done
dd if=/dev/zero of="$STORE/filler" bs=1M 2> /dev/null  # the disk is full now: ENOSPC
wait $pid
echo $? > "$OUT/run.rc"
cp -a "$STORE/full" "$OUT/after-fault"
rm "$STORE/filler"  # space is freed
"$PY" -m search.cli resume full --storage-path "$STORE" > "$OUT/resume.out" 2> "$OUT/resume.err"
echo $? > "$OUT/resume.rc"
cp -a "$STORE/full" "$OUT/after-resume"
'''


def _can_mount_tmpfs() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "d=$(mktemp -d) && mount -t tmpfs -o size=1m tmpfs $d"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.mark.slow
@pytest.mark.skipif(not _can_mount_tmpfs(), reason="needs a user namespace that may mount a tmpfs (unshare -rm)")
def test_a_full_disk_mid_sweep_stops_with_one_line_and_resume_finishes(tmp_path):
    """A real ENOSPC: the storage path is a 64 MB tmpfs (in a private mount namespace) filled up after the first
    trial finished. The sweep stops with exit 74 and one line; the finished trial and the study are intact; once
    space is freed, `csweep resume` runs exactly the planned trials."""
    store, out = tmp_path / "store", tmp_path / "out"
    store.mkdir()
    out.mkdir()
    ray_tmp = f"/tmp/csf{os.getpid()}"
    env = {**os.environ, "STORE": str(store), "OUT": str(out), "PY": sys.executable, "RAY_TMPDIR": ray_tmp}
    try:
        subprocess.run(["unshare", "-rm", "bash", "-c", FULL_DISK_SCRIPT], cwd=ROOT, env=env, timeout=900,
                       check=True)
    finally:
        kill_processes_with_env("RAY_TMPDIR", ray_tmp)
    err = (out / "run.err").read_text()
    assert (out / "run.rc").read_text().strip() == str(EXIT_STORAGE), err[-4000:]
    errors = [x for x in err.splitlines() if x.startswith("csweep: error:")]
    assert len(errors) == 1 and "`storage_path`: cannot write to" in errors[0], err[-4000:]
    assert "No space left on device" in errors[0] or "disk is full" in errors[0], errors[0]
    assert "csweep resume full" in errors[0] and "Traceback" not in err

    fault = out / "after-fault"
    results = [d / "result.json" for d in fault.glob("trial_driver_*") if (d / "result.json").exists()]  # the trial
    # that met the full disk may not have written one
    done = [json.loads(x) for r in results for x in r.read_text().splitlines() if x.strip() and json.loads(x).get("finished")]
    assert done, "the trial finished before the disk filled is gone"
    study = optuna.load_study(study_name="full", storage=f"sqlite:///{fault / 'study.db'}")
    assert [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]

    resumed = out / "after-resume"
    assert (out / "resume.rc").read_text().strip() == "0", (out / "resume.err").read_text()[-4000:]
    finished = [d for d in resumed.glob("trial_driver_*") if (d / "result.json").exists()
                and any(json.loads(x).get("finished") for x in (d / "result.json").read_text().splitlines() if x.strip())]
    assert len(finished) == 2
    counted = [t for t in optuna.load_study(study_name="full", storage=f"sqlite:///{resumed / 'study.db'}").trials
               if not t.user_attrs.get("csweep_orphaned")]
    assert len(counted) == 2 and all(t.state == optuna.trial.TrialState.COMPLETE for t in counted), counted
