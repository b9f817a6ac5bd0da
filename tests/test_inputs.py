"""Bad input, every command: one line on stderr naming the field, exit code 2, nothing created, Ray not started.
And the other side: every way a person writes a number is accepted for a numeric field."""

from __future__ import annotations

import pickle
import socket
import threading
import time
from pathlib import Path

import pytest

from search.cli import main
from search.spec import SweepConfig, write_sweep_file
from trainables.config import ConfigError, parse_overrides
from trainables.methods import METHODS
from trainables.trial import TrialSpec, typed_settings

# Placeholders filled per test: {store} the (empty) storage path, {sweep} an existing sweep, {file} an existing
# file, {cifar} a CIFAR-10 directory with corrupt batches, {missing} a path that does not exist, {db} a corrupt
# SQLite file, {silent} the address of a socket that accepts and never answers.
BAD = [
    # csweep train
    (["train", "byol"], f"`method` must be one of {', '.join(sorted(METHODS))}"),
    (["train", "supcon", "--dataset", "mnist"], "`dataset` must be one of"),
    (["train", "supcon", "--set", "tau=0.1"], "unknown setting `tau`"),
    (["train", "ce", "--set", "temperature=0.1"], "`temperature` is not a setting of ce (it is one of "),
    (["train", "supcon", "--epochs", "2", "--set", "epochs=5"], "`epochs` is given twice, as --epochs 2"),
    (["train", "supcon", "--dataset", "digits", "--set", "dataset=cifar10"], "`dataset` is given twice"),
    (["train", "supcon", "--set", "temperature=0"], "temperature"),
    (["train", "supcon", "--set", "lr=abc"], "`lr` must be a number, but got lr='abc'"),
    (["train", "supcon", "--set", "lr=1e-3x"], "`lr` must be a number"),
    (["train", "supcon", "--set", "lr=nan"], "`lr` must be a number"),
    (["train", "supcon", "--set", "lr=inf"], "`lr` must be finite"),
    (["train", "supcon", "--set", "lr=-1e-3"], "`0.0 < lr` must hold, but got lr=-0.001"),
    (["train", "supcon", "--set", "epochs=inf"], "`epochs` must be an integer"),
    (["train", "supcon", "--set", "epochs=2.5"], "`epochs` must be an integer"),
    (["train", "supcon", "--set", "epochs=true"], "`epochs` must be an integer"),
    (["train", "supcon", "--set", "sync_bn=maybe"], "`sync_bn` must be true or false"),
    (["train", "supcon", "--set", "optimizer=rmsprop"], "`optimizer` must be one of sgd, lars, adam"),
    (["train", "supcon", "--set", "mean=[0.1,0.2]"], "`mean` must have 1 or 3 values"),
    (["train", "supcon", "--set", "lr"], "`--set` takes key=value, but got 'lr'"),
    (["train", "supcon", "--set", "selfcon_pos=[true"], "YAML"),
    (["train", "supcon", "--set", "backbone=vit"], "`backbone` must be one of resnet18"),
    (["train", "supcon", "--workers", "3", "--set", "batch_size=4"], "multiple of the number of workers (3)"),
    (["train", "supcon", "--set", "batch_size=5000"], "at most the 1197 training images"),
    (["train", "supcon", "--dataset", "cifar10"], "data_dir"),
    (["train", "supcon", "--dataset", "cifar10", "--data-dir", "{missing}"], "data_dir"),
    (["train", "supcon", "--dataset", "cifar10", "--data-dir", "{cifar}"], "data_batch_1"),
    (["train", "supcon", "--gpus-per-worker", "1"], "no node has that much"),
    (["train", "supcon", "--workers", "64"], "holds only"),
    (["train", "supcon", "--workers", "0"], "`1 <= workers` must hold, but got workers=0"),
    (["train", "supcon", "--cpus-per-worker", "0"], "`0.0 < cpus_per_worker`"),
    (["train", "supcon", "--set", "amp=fp16"], "needs GPUs"),
    (["train", "supcon", "--preset", "nope"], "`preset` must be one of"),
    (["train", "supcon", "--max-failures", "-1"], "`max_failures` must be >= 0"),
    (["train", "supcon", "--memory-per-worker", "4X"], "`memory_per_worker` must be a positive size in MB or with a "
     "unit M or G (1500, 1500M, 4G), but got memory_per_worker='4X'"),
    (["train", "supcon", "--memory-per-worker", "0"], "`memory_per_worker` must be a positive size"),
    (["train", "supcon", "--memory-per-worker", "1000000G"], "no node has that much"),
    (["train", "supcon", "--address", "127.0.0.1:1"], "`address` '127.0.0.1:1' cannot be reached"),
    # csweep run
    (["run", "nope"], "`space` must be one of"),
    (["run", "supcon", "--sampler", "annealing"], "`sampler` must be one of tpe, random, cmaes, gp, nsga2"),
    (["run", "supcon", "--scheduler", "median"], "`scheduler` must be one of asha, hyperband, fifo, pbt, pb2"),
    (["run", "supcon", "--set", "tau=1"], "unknown setting `tau`"),
    (["run", "ce", "--set", "temperature=0.1"], "`temperature` is not a setting of ce"),
    (["run", "supcon", "--set", "method=byol"], "`method` must be one of"),
    (["run", "supcon", "--set", "lr=fast"], "`lr` must be a number"),
    (["run", "supcon", "--epochs", "2", "--set", "epochs=5"], "`epochs` is given twice"),
    (["run", "supcon", "--objective", "accuracy"], "`objective` metric 'accuracy' is not reported"),
    (["run", "supcon", "--objective", "knn_top1:up"], "`objective mode` must be one of max, min"),
    (["run", "supcon", "--objective", ","], "`objective` must name at least one metric"),
    (["run", "supcon", "--study-storage", "notadb://x"], "`study_storage`"),
    (["run", "supcon", "--study-storage", "sqlite:///{db}"], "`study_storage`"),
    (["run", "supcon", "--trials", "0"], "`1 <= trials`"),
    (["run", "supcon", "--repeats", "0"], "`1 <= repeats`"),
    (["run", "supcon", "--fuse", "0"], "`1 <= fuse`"),
    (["run", "supcon", "--fuse", "4", "--workers", "2"], "`fuse=4` trains its members in one process"),
    (["run", "supcon", "--fuse", "4", "--scheduler", "hyperband"], "`scheduler` must be one of asha, fifo"),
    (["run", "supcon", "--fuse", "2", "--repeats", "2"], "`fuse=2` tells each member's Optuna trial one value"),
    (["run", "supcon", "--fuse", "2", "--set", "compile=true"], "`compile` must be false in a fused trial"),
    (["run", "cmc", "--fuse", "2", "--set", "nce_k=64"], "method cmc cannot be fused: its loss draws random numbers"),
    (["run", "supcon", "--concurrency", "0"], "`1 <= concurrency`"),
    (["run", "supcon", "--reduction-factor", "1"], "`1.0 < reduction_factor`"),
    (["run", "supcon", "--grace-period", "0"], "`1 <= grace_period`"),
    (["run", "supcon", "--grace-period", "5", "--epochs", "2"],
     "`grace_period <= epochs` must hold, but got grace_period=5, epochs=2"),
    (["run", "supcon", "--max-failures", "-1"], "`0 <= max_failures`"),
    (["run", "supcon", "--memory-per-worker", "0.0G"], "`memory_per_worker` must be a positive size"),
    (["run", "supcon", "--memory-per-worker", "1000000G"], "no node has that much"),
    (["run", "supcon", "--pending-timeout", "0"], "`0.0 < pending_timeout` must hold"),
    (["run", "supcon", "--name", "a/b"], "`name` must be a non-empty name without '/'"),
    (["run", "supcon", "--executor", "inline", "--workers", "2"], "`executor=inline` runs one worker per trial, but "
     "got executor=inline, workers=2"),
    (["run", "supcon", "--gpus-per-worker", "2"], "no node has that much"),
    (["run", "supcon", "--workers", "3", "--set", "batch_size=128"], "multiple of the number of workers"),
    (["run", "supcon", "--repeats", "2", "--objective", "knn_top1,epoch_time_s"], "`repeats`"),
    (["run", "supcon", "--sampler", "cmaes", "--objective", "knn_top1,epoch_time_s"], "`sampler=cmaes`"),
    (["run", "supcon", "--set", "batch_size=5000"], "at most the 1197 training images"),
    (["run", "supcon", "--address", "127.0.0.1:1"], "`address` '127.0.0.1:1' cannot be reached"),
    (["run", "supcon", "--address", "{silent}"], "`address`"),
    # reading sweeps
    (["resume", "nosuch"], "`name`: no sweep 'nosuch' at"),
    (["status", "nosuch"], "`name`: no sweep 'nosuch' at"),
    (["tables", "nosuch"], "`name`: no sweep 'nosuch' at"),
    (["tables", "{sweep}", "--out", "{file}"], "`out` must be a directory"),
    (["tables", "{sweep}", "--out", "{file}/sub"], "`out` must be a directory"),
    (["ablation", "nosuch", "--rows", "method", "--cols", "dataset"], "`name`: no sweep 'nosuch' at"),
    (["ablation", "{sweep}", "--rows", "method", "--cols", "dataset", "--metric", "backbone"],
     "`metric` must be a numeric column, but got metric='backbone'"),
    (["ablation", "{sweep}", "--rows", "nope", "--cols", "dataset"], "columns ['nope'] are not in the table"),
]


def _bad_cifar(root: Path) -> Path:
    batches = root / "cifar-10-batches-py"
    batches.mkdir(parents=True)
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]:
        (batches / name).write_bytes(b"not a pickle")
    (batches / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"a"] * 10}))
    return root


@pytest.fixture
def silent_address():
    """``127.0.0.1:PORT`` of a socket that accepts connections and never says a word."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(timeout=2)
    for s in held:
        s.close()
    server.close()


@pytest.mark.parametrize(("args", "fragment"), BAD, ids=[" ".join(a)[:60] for a, _ in BAD])
def test_bad_input_is_one_line_exit_2_and_creates_nothing(args, fragment, tmp_path, monkeypatch, capsys, request):
    import ray

    fixtures = tmp_path / "fixtures"
    fixtures.mkdir()
    (fixtures / "file").write_text("x")
    (fixtures / "corrupt.db").write_bytes(b"this is not a database" * 100)
    write_sweep_file(SweepConfig(name="fake", space="quickstart", storage_path=str(fixtures / "sweeps")))
    values = {"store": str(tmp_path / "store"), "sweep": str(fixtures / "sweeps" / "fake"),
              "file": str(fixtures / "file"), "cifar": str(_bad_cifar(fixtures / "cifar")),
              "missing": str(tmp_path / "missing"), "db": str(fixtures / "corrupt.db"),
              "silent": request.getfixturevalue("silent_address") if "{silent}" in args else ""}
    argv = [a.format(**values) for a in args]
    if argv[0] in ("train", "run", "resume"):
        argv += ["--storage-path", values["store"]]
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    before = sorted(p.relative_to(fixtures) for p in fixtures.rglob("*"))

    start = time.monotonic()
    assert main(argv) == 2
    assert time.monotonic() - start < 10
    err = capsys.readouterr().err.strip()
    assert fragment.format(**values) in err, err
    assert len(err.splitlines()) == 1, err
    assert "trial_driver" not in err and "Traceback" not in err, err
    assert not ray.is_initialized()
    assert not (tmp_path / "store").exists() and not list(cwd.iterdir()) and not (tmp_path / "missing").exists()
    assert sorted(p.relative_to(fixtures) for p in fixtures.rglob("*")) == before


def test_existing_sweep_name_is_refused_and_left_alone(tmp_path, capsys):
    write_sweep_file(SweepConfig(name="taken", space="supcon", storage_path=str(tmp_path)))
    before = (tmp_path / "taken" / "sweep.json").read_text()
    assert main(["run", "supcon", "--name", "taken", "--storage-path", str(tmp_path)]) == 2
    assert "a sweep named 'taken' already exists" in capsys.readouterr().err
    assert sorted(p.name for p in (tmp_path / "taken").iterdir()) == ["sweep.json"]
    assert (tmp_path / "taken" / "sweep.json").read_text() == before


@pytest.mark.parametrize("text", ['{"name": "x", "version": 9}', "not json", '{"name": "x", "objective": 3}'])
def test_sweep_file_of_another_version_is_one_line_and_kept(text, tmp_path, capsys):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "sweep.json").write_text(text)
    for command in ("resume", "status"):
        assert main([command, "old", "--storage-path", str(tmp_path)]) == 2
        err = capsys.readouterr().err.strip()
        assert "`name`:" in err and "sweep.json" in err and len(err.splitlines()) == 1, err
    assert (tmp_path / "old" / "sweep.json").read_text() == text
    assert [p.name for p in (tmp_path / "old").iterdir()] == ["sweep.json"]


# -- numbers, however a person writes them -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "value"),
    [("1e-3", 1e-3), ("1E-3", 1e-3), ("3E-4", 3e-4), ("5e-4", 5e-4), (".5", 0.5), ("5.", 5.0), ("0.1", 0.1),
     ('"0.1"', 0.1), ("'1e-3'", 1e-3), ("1_000", 1000.0), ("2", 2.0), ("+1.5e+1", 15.0), ("1.0e-3", 1e-3)],
)
def test_every_number_spelling_is_a_float(raw, value):
    settings = parse_overrides([f"lr={raw}", f"weight_decay={raw}"])
    spec = TrialSpec.from_settings("supcon", settings)
    assert spec.train.lr == pytest.approx(value) and isinstance(spec.train.lr, float)
    assert spec.train.weight_decay == pytest.approx(value)
    assert typed_settings(settings)["lr"] == pytest.approx(value)


@pytest.mark.parametrize(("raw", "value"), [("10", 10), ('"10"', 10), ("1e1", 10), ("1_0", 10), ("10.0", 10)])
def test_integer_fields_take_whole_numbers_however_written(raw, value):
    spec = TrialSpec.from_settings("supcon", parse_overrides([f"epochs={raw}"]))
    assert spec.train.epochs == value and isinstance(spec.train.epochs, int)


def test_numbers_inside_lists_and_strings_stay_strings():
    spec = TrialSpec.from_settings("supcon", parse_overrides(["mean=[.5,5e-1,'0.5']", "std=[1E-1]"]))
    assert spec.train.mean == (0.5, 0.5, 0.5) and spec.train.std == (0.1,)
    assert typed_settings({"data_dir": "1e-3", "dataset": "digits"}) == {"data_dir": "1e-3", "dataset": "digits"}
    assert TrialSpec.from_settings("supcon", {"data_dir": "1e-3"}).train.data_dir == "1e-3"


def test_inf_only_where_it_makes_sense():
    with pytest.raises(ConfigError, match="`epochs` must be an integer"):
        TrialSpec.from_settings("supcon", parse_overrides(["epochs=inf"]))
    with pytest.raises(ConfigError, match="`lr` must be finite"):
        TrialSpec.from_settings("supcon", parse_overrides(["lr=inf"]))


def test_space_fixed_and_points_take_numbers_as_text(tmp_path):
    from spaces import load_space

    path = tmp_path / "myspace.py"
    path.write_text("FIXED = {'method': 'supcon', 'lr': '1e-3', 'epochs': '4'}\n"
                    "POINTS_TO_EVALUATE = [{'temperature': '5E-2'}]\n"
                    "def space(trial, fixed):\n    trial.suggest_float('temperature', 0.05, 0.5)\n")
    space = load_space(str(path))
    assert space.fixed == {"method": "supcon", "lr": 1e-3, "epochs": 4}
    assert space.points_to_evaluate == [{"temperature": 0.05}]


def test_truncated_checkpoint_is_one_line_and_left_alone(tmp_path, capsys):
    import ray

    ckpt = tmp_path / "run1" / "checkpoint_epoch_00001"
    ckpt.mkdir(parents=True)
    (ckpt / "state.pt").write_bytes(b"PK\x03\x04 truncated")
    assert main(["train", "supcon", "--name", "run1", "--storage-path", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert "`name`: run 'run1' has a checkpoint that cannot be read" in err and len(err.splitlines()) == 1, err
    assert (ckpt / "state.pt").read_bytes() == b"PK\x03\x04 truncated"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["checkpoint_epoch_00001", "run1", "state.pt"]
    assert not ray.is_initialized()


def test_locked_study_storage_is_one_line(tmp_path, capsys):
    import sqlite3

    db = tmp_path / "locked.db"
    holder = sqlite3.connect(db, timeout=0.1)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN EXCLUSIVE")
    try:
        start = time.monotonic()
        code = main(["run", "supcon", "--study-storage", f"sqlite:///{db}", "--storage-path", str(tmp_path / "s")])
        assert time.monotonic() - start < 30
    finally:
        holder.rollback()
        holder.close()
    err = capsys.readouterr().err.strip()
    assert code == 2 and "`study_storage`" in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "s").exists()
