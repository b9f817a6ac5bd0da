"""``csweep train``'s inline executor (search/inline.py): one local worker in the CLI process, without Ray, with the
train executor's progress lines, JSON, checkpoints, resumes and retries."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
from conftest import ROOT, TINY, run_cli, set_args

from search.cli import main
from search.commands import train_executor
from search.runs import checkpoints

SETTINGS = {**TINY, "width": 0.125, "probe_epochs": 10, "warmup_epochs": 0}
#: what every `csweep train --json` carries besides the loop's metrics
RUN_KEYS = {"name", "path", "checkpoint", "node_id", "torch_version", "ray_version", "csweep_version"}

#: `main([...])` in a fresh interpreter, then whether it imported Ray, as JSON on the last line
_MAIN = """
import json, sys
from search.cli import main
rc = main({argv!r})
print(json.dumps({{"rc": rc, "ray": sorted(m for m in sys.modules if m == "ray" or m.startswith("ray."))}}))
"""


def _epochs(stderr: str) -> list[int]:
    return [int(line.split()[1].rstrip(":")) for line in stderr.splitlines() if line.startswith("epoch ")]


@pytest.mark.parametrize(("executor", "kw", "expected"), [
    ("auto", {}, "inline"),
    ("auto", {"workers": 2}, "train"),
    ("auto", {"address": "10.0.0.1:6379"}, "train"),
    ("auto", {"storage": "s3://bucket/runs"}, "train"),
    ("train", {}, "train"),
    ("inline", {}, "inline"),
])
def test_auto_is_inline_for_one_local_worker(executor, kw, expected, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert train_executor(executor, **{"workers": 1, "address": None, "storage": "/tmp/runs", **kw}) == expected


def test_auto_is_train_under_ray_address(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")  # a dashboard URL: not joined, but a cluster is meant
    assert train_executor("auto", workers=1, address=None, storage="/tmp/runs") == "train"


@pytest.mark.parametrize(("args", "fragment"), [
    (["--workers", "2"], "`executor=inline` runs one worker in this process on local storage, but got "
                         "executor=inline, workers=2; use --executor train (or auto) for several workers"),
    (["--address", "127.0.0.1:1"], "executor=inline, address='127.0.0.1:1'; use --executor train (or auto)"),
    (["--storage-path", "s3://bucket/runs"], "executor=inline, storage_path='s3://bucket/runs'"),
])
def test_inline_that_cannot_run_here_is_one_line_exit_2(args, fragment, capsys):
    assert main(["train", "supcon", "--executor", "inline", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and len(err.splitlines()) == 1, err
    assert "ray" not in sys.modules or not sys.modules["ray"].is_initialized()


def test_unknown_executor_is_an_argument_error(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "supcon", "--executor", "ray"])
    assert e.value.code == 2
    assert "invalid choice: 'ray'" in capsys.readouterr().err


def test_killed_inline_run_resumes_from_its_checkpoint_without_ray(tmp_path):
    """SIGKILL `csweep train` after its first checkpoint; the same --name continues from the newest checkpoint (not
    from epoch 1), in a process that never imports Ray, and prints the train executor's JSON."""
    argv = ["train", "supcon", "--json", "--storage-path", str(tmp_path), "--name", "k",
            *set_args({**SETTINGS, "epochs": 4})]
    proc = subprocess.Popen([sys.executable, "-m", "search.cli", *argv], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=os.environ.copy())
    for line in proc.stderr:
        if line.startswith("epoch 1:"):  # printed after the epoch's checkpoint is in place
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before its first epoch was reported"
    run = tmp_path / "k"
    done = int(checkpoints(run)[-1].name.rsplit("_", 1)[1])
    assert 1 <= done < 4, done

    resumed = subprocess.run([sys.executable, "-c", _MAIN.format(argv=argv)], cwd=ROOT, capture_output=True,
                             text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    *_, out, status = resumed.stdout.strip().splitlines()
    assert json.loads(status) == {"rc": 0, "ray": []}
    assert "(inline executor)" in resumed.stderr
    assert _epochs(resumed.stderr) == list(range(done + 1, 5)), resumed.stderr
    final = json.loads(out)
    assert RUN_KEYS <= set(final) and final["node_id"] is None
    assert final["epoch"] == 4 and final["finished"] is True and 0 <= final["linear_top1"] <= 1
    assert final["checkpoint"] == str(run / "checkpoint_epoch_00004")
    assert [p.name for p in checkpoints(run)] == ["checkpoint_epoch_00003", "checkpoint_epoch_00004"]
    assert not list(run.glob(".tmp-*"))


def test_max_failures_retries_from_the_last_checkpoint_but_not_out_of_memory(tmp_path, capsys):
    """A diverged run is retried in-process (from its newest checkpoint) --max-failures times, then fails with one
    line and exit 1; a worker over --memory-per-worker is not retried."""
    diverging = set_args({**SETTINGS, "batch_size": 256, "lr": 1e6, "epochs": 3})
    assert main(["train", "supcon", "--storage-path", str(tmp_path), "--name", "nan", "--max-failures", "1",
                 *diverging]) == 1
    err = capsys.readouterr().err
    assert err.count("; retrying from ") == 1 and "(failure 1 of 1)" in err, err
    assert err.strip().splitlines()[-1].startswith("csweep: training failed: FloatingPointError: loss is nan")

    assert main(["train", "supcon", "--storage-path", str(tmp_path), "--name", "oom", "--max-failures", "2",
                 "--memory-per-worker", "1", *set_args({**SETTINGS, "epochs": 1})]) == 1
    err = capsys.readouterr().err
    assert "retrying" not in err, err
    assert err.strip().splitlines()[-1].startswith("csweep: training failed: TrialOutOfMemory: ")


def test_inline_schedule_changes_settings_from_its_epoch(tmp_path, capsys):
    assert main(["train", "supcon", "--json", "--storage-path", str(tmp_path), "--name", "s", "--schedule",
                 "2:lr=0.2", *set_args({**SETTINGS, "batch_size": 256, "epochs": 2, "lr": 0.05})]) == 0
    out, err = capsys.readouterr()
    assert _epochs(err) == [1, 2] and json.loads(out.strip().splitlines()[-1])["lr"] == 0.2
    assert [p.name for p in checkpoints(tmp_path / "s")] == ["checkpoint_epoch_00001", "checkpoint_epoch_00002"]


@pytest.mark.slow
def test_inline_and_train_executors_resume_each_other_with_the_same_json(tmp_path):
    """A run started inline continues under Ray Train (which starts from the inline checkpoint), then inline again
    (from Ray Train's); both print the same JSON keys."""
    def train(epochs: int, *extra: str) -> tuple[dict, list[int]]:
        proc = run_cli("train", "supcon", "--json", "--storage-path", str(tmp_path), "--name", "mixed", *extra,
                       *set_args({**SETTINGS, "epochs": epochs}))
        assert proc.returncode == 0, proc.stderr[-3000:]
        return json.loads(proc.stdout.strip().splitlines()[-1]), _epochs(proc.stderr)

    run = tmp_path / "mixed"
    inline, epochs = train(2)
    assert epochs == [1, 2] and inline["node_id"] is None
    ray_train, epochs = train(3, "--executor", "train")
    assert epochs == [3], "the train executor did not start from the inline checkpoint"
    assert set(ray_train) == set(inline) and isinstance(ray_train["node_id"], str)
    assert (run / "checkpoint_manager_snapshot.json").is_file()
    again, epochs = train(4)
    assert epochs == [4] and set(again) == set(inline)
    assert [p.name for p in checkpoints(run)] == ["checkpoint_epoch_00003", "checkpoint_epoch_00004"]
    assert not (run / "checkpoint_manager_snapshot.json").exists()  # stale once an inline checkpoint is newer
