"""The training loop: exact resume from a checkpoint, and a killed Ray Train worker resuming from its checkpoint."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY, set_args
from method_contract import straight_and_resumed

from trainables.data import load_dataset
from trainables.loop import RecordingReporter, fit
from trainables.trial import TrialSpec

RESUME = {**TINY, "width": 0.125, "epochs": 3, "deterministic": True, "num_threads": 1, "probe_epochs": 10}
COMPARED = ("train_loss", "knn_top1", "linear_top1", "linear_val_top1", "step", "current_lr")


@pytest.mark.parametrize("method", ["supcon", "ce"])
def test_resume_from_epoch_checkpoint_equals_uninterrupted_run(method):
    data = load_dataset("digits")
    spec = TrialSpec.from_settings(method, RESUME)
    straight, first, second = straight_and_resumed(spec, data)
    assert [m["epoch"] for m in first.metrics] == [1]

    assert [m["epoch"] for m in second.metrics] == [2, 3]
    for ours, theirs in zip(first.metrics + second.metrics, straight.metrics):
        for key in COMPARED:
            assert ours.get(key) == theirs.get(key), (key, ours.get(key), theirs.get(key))
    for name, tensor in straight.state["model"].items():
        assert torch.equal(tensor, second.state["model"][name]), name


class _SavingReporter(RecordingReporter):
    """Keeps every checkpoint as written to disk (a ``torch.save`` round trip, so later epochs cannot alter it)."""

    def __init__(self) -> None:
        super().__init__()
        self.saved: dict[int, dict] = {}

    def report(self, metrics, state):
        super().report(metrics, state)
        if state is not None:
            buffer = io.BytesIO()
            torch.save(state, buffer)
            buffer.seek(0)
            self.saved[metrics["epoch"]] = torch.load(buffer, weights_only=False)


def test_checkpoint_every_keeps_the_due_epochs_and_resumes_exactly_from_the_last_kept():
    """checkpoint_every=2 over 3 epochs writes epochs 2 and 3 (the last always), an early stop writes its epoch,
    and a run resumed from epoch 2's checkpoint (under another checkpoint_every) replays epoch 3 exactly."""
    data = load_dataset("digits")
    spec = TrialSpec.from_settings("supcon", {**RESUME, "checkpoint_every": 2})
    straight = _SavingReporter()
    fit(spec, reporter=straight, data=data)
    assert straight.checkpoint_epochs == [2, 3]
    assert [m["epoch"] for m in straight.metrics] == [1, 2, 3]  # every epoch still reports its metrics

    stopped = RecordingReporter()
    fit(spec, reporter=stopped, data=data, stop_after_epoch=1)
    assert stopped.checkpoint_epochs == [1]

    resumed = RecordingReporter()
    every_epoch = TrialSpec.from_settings("supcon", {**RESUME, "checkpoint_every": 1})
    fit(every_epoch, reporter=resumed, data=data, resume_state=straight.saved[2])
    assert [m["epoch"] for m in resumed.metrics] == [3] and resumed.checkpoint_epochs == [3]
    for key in COMPARED:
        assert resumed.metrics[0].get(key) == straight.metrics[-1].get(key), key
    for name, tensor in straight.saved[3]["model"].items():
        assert torch.equal(tensor, resumed.state["model"][name]), name


def test_checkpoint_every_is_validated():
    from trainables.config import ConfigError

    with pytest.raises(ConfigError, match="checkpoint_every"):
        TrialSpec.from_settings("supcon", {**RESUME, "checkpoint_every": 0})


def test_resume_refuses_a_checkpoint_of_another_configuration():
    data = load_dataset("digits")
    spec = TrialSpec.from_settings("supcon", {**RESUME, "epochs": 1})
    rec = RecordingReporter()
    fit(spec, reporter=rec, data=data)
    other = TrialSpec.from_settings("supcon", {**RESUME, "temperature": 0.3})
    with pytest.raises(ValueError, match="temperature"):
        fit(other, data=data, resume_state=rec.state)


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (walks /proc; no psutil needed)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, stack = [], [pid]
    while stack:
        for child in children.get(stack.pop(), []):
            out.append(child)
            stack.append(child)
    return out


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


@pytest.mark.slow
def test_killed_ray_train_worker_resumes_from_its_checkpoint(tmp_path):
    """SIGKILL the Train worker after epoch 1; Ray Train restarts it from the epoch-1 checkpoint and the run ends with
    exactly the metrics of an uninterrupted run."""
    settings = {**RESUME, "epochs": 3}
    proc = subprocess.Popen(
        [sys.executable, "-m", "search.cli", "train", "supcon", "--executor", "train", "--json", "--max-failures", "1",
         "--storage-path", str(tmp_path), "--name", "killed", *set_args(settings)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    killed = None
    deadline = time.time() + 300
    for line in proc.stderr:  # progress lines arrive as the epochs end
        if line.startswith("epoch 1:") and killed is None:
            workers = [p for p in _descendants(proc.pid) if "RayTrainWorker" in _cmdline(p)]
            assert workers, "no Ray Train worker found below the csweep process"
            for pid in workers:
                os.kill(pid, signal.SIGKILL)
            killed = workers
        if time.time() > deadline:
            proc.kill()
            pytest.fail("csweep train did not finish in time")
    out = proc.stdout.read()
    assert proc.wait(timeout=120) == 0, out
    assert killed, "the run ended before the first epoch was reported"
    final = json.loads(out.strip().splitlines()[-1])

    expected = fit(TrialSpec.from_settings("supcon", settings), data=load_dataset("digits"))
    for key in ("epoch", "train_loss", "knn_top1", "linear_top1"):
        assert final[key] == pytest.approx(expected[key], abs=1e-6), key
    checkpoints = sorted(p.name for p in (tmp_path / "killed").glob("checkpoint_epoch_*"))
    assert checkpoints[-1] == "checkpoint_epoch_00003"

    # the same name with another configuration is refused before Ray starts, and the run is left as it was
    from search.cli import main

    assert main(["train", "supcon", "--storage-path", str(tmp_path), "--name", "killed",
                 *set_args({**settings, "temperature": 0.3})]) == 2
    assert sorted(p.name for p in (tmp_path / "killed").glob("checkpoint_epoch_*")) == checkpoints
