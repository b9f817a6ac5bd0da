"""``csweep train``: help, one-line errors with exit code 2 before Ray starts, and a 2-worker DDP run."""

from __future__ import annotations

import json
import pickle

import pytest
from conftest import TINY, run_cli, set_args

from search.cli import main
from trainables.methods import METHODS


def test_help_lists_methods_datasets_and_fields(capsys):
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for text in ("supcon", "simclr", "ce", "digits", "cifar10", "stl10", "temperature", "warmup_epochs",
                 "(default: 0.1)", "recipe: lr=0.5"):
        assert text in out, text


def _bad_cifar(tmp_path):
    root = tmp_path / "cifar-10-batches-py"
    root.mkdir()
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]:
        (root / name).write_bytes(b"not a pickle")
    (root / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"a"] * 10}))
    return tmp_path


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["byol"], f"`method` must be one of {', '.join(sorted(METHODS))}; got method='byol'"),
        (["supcon", "--dataset", "mnist"], "`dataset` must be one of"),
        (["supcon", "--set", "tau=0.1"], "unknown setting `tau`"),
        (["supcon", "--set", "temperature=0"], "temperature"),
        (["supcon", "--set", "backbone=vit"], "`backbone` must be one of resnet18, resnet34, resnet50, resnet101"),
        (["supcon", "--workers", "3", "--set", "batch_size=4"], "multiple of the number of workers (3)"),
        (["supcon", "--set", "batch_size=5000"], "at most the 1197 training images"),
        (["supcon", "--dataset", "cifar10"], "data_dir"),
        (["supcon", "--gpus-per-worker", "1"], "no node has that much"),
        (["supcon", "--workers", "64"], "holds only"),
        (["supcon", "--set", "amp=fp16"], "needs GPUs"),
        (["supcon", "--set", "selfcon_pos=[true"], "YAML"),
        (["supcon", "--address", "127.0.0.1:1"], "`address` '127.0.0.1:1' cannot be reached"),
    ],
)
def test_bad_input_is_one_line_exit_2_before_ray(args, fragment, capsys):
    import ray

    assert main(["train", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err, err
    assert len(err.splitlines()) == 1, err
    assert not ray.is_initialized()


def test_corrupt_cifar_is_rejected(tmp_path, capsys):
    assert main(["train", "supcon", "--dataset", "cifar10", "--data-dir", str(_bad_cifar(tmp_path))]) == 2
    err = capsys.readouterr().err
    assert "data_batch_1" in err and len(err.strip().splitlines()) == 1


@pytest.mark.slow
def test_two_worker_ddp_run_with_sync_bn(tmp_path):
    settings = {**TINY, "width": 0.125, "epochs": 2, "sync_bn": True, "probe_epochs": 10}
    proc = run_cli("train", "simclr", "--workers", "2", "--json", "--storage-path", str(tmp_path), "--name", "ddp",
                   *set_args(settings))
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = json.loads(proc.stdout.strip().splitlines()[-1])
    assert final["world_size"] == 2 and final["per_worker_batch"] == 64 and final["gathered_negatives"] is True
    assert final["epoch"] == 2 and 0 <= final["linear_top1"] <= 1
    assert "epoch 1:" in proc.stderr and "epoch 2:" in proc.stderr
    assert (tmp_path / "ddp" / "checkpoint_epoch_00002").is_dir()
