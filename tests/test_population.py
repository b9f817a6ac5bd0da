"""Population-based training (`--scheduler pbt|pb2`): input checks, the lineage of a trial's settings, and a tiny
digits PBT sweep that perturbs settings mid-run, records them per epoch and resumes after its driver is killed."""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
from conftest import ROOT, kill_processes_with_env, run_cli

from analysis.population import settings_history
from search.cli import main
from search.spec import SweepConfig
from search.sweep import _clip, initial_population, population_mutations
from spaces import load_space
from trainables.config import ConfigError


def _cfg(**kw) -> SweepConfig:
    fixed = {**load_space("quickstart").fixed, "method": "supcon", "epochs": 4}
    return SweepConfig(name="p", space="quickstart", storage_path="/tmp", scheduler="pbt", trials=4, fixed=fixed, **kw)


def test_population_comes_from_the_space_and_perturbations_stay_in_its_ranges():
    space = load_space("quickstart")
    cfg = _cfg()
    population = initial_population(cfg, space)
    assert len(population) == 4 and population[0] == {"lr": 0.05, "temperature": 0.1}  # the seed recipe first
    assert all(0.01 <= p["lr"] <= 0.3 and 0.05 <= p["temperature"] <= 0.5 for p in population)
    mutations = population_mutations(cfg, space, population)
    assert mutations == {"lr": (0.01, 0.3, True), "temperature": (0.05, 0.5, True)}
    assert _clip({"lr": 0.3 * 1.2, "temperature": 0.05 * 0.8}, bounds=mutations) == {"lr": 0.3, "temperature": 0.05}
    # with the method sampled, ce members have no temperature: only lr is perturbed
    mixed = SweepConfig(name="p", space="quickstart", storage_path="/tmp", scheduler="pbt", trials=8, seed=3,
                        fixed={**space.fixed, "epochs": 4})
    population = initial_population(mixed, space)
    assert {p["method"] for p in population} >= {"ce"}
    assert set(population_mutations(mixed, space, population)) == {"lr"}


@pytest.mark.parametrize(("kw", "fragment"), [
    ({"repeats": 2}, "`scheduler=pbt` trains one population"),
    ({"workers": 2, "executor": "train"}, "runs one-worker inline trials"),
    ({"perturbation_interval": 4}, "`perturbation_interval < epochs`"),
])
def test_population_settings_are_checked(kw, fragment):
    with pytest.raises(ConfigError, match=fragment):
        _cfg(**kw)


@pytest.mark.parametrize(("args", "fragment"), [
    (["--scheduler", "pbt", "--set", "lr=0.1", "--set", "temperature=0.1"], "is sampled by every trial"),
    (["--scheduler", "pbt", "--warm-start", "x"], "`warm_start` seeds the Optuna study"),
    pytest.param(["--scheduler", "pb2"], "`scheduler=pb2` needs GPy", marks=pytest.mark.skipif(
        importlib.util.find_spec("GPy") is not None, reason="GPy is installed")),
])
def test_bad_population_input_is_exit_2_before_ray(args, fragment, capsys, tmp_path):
    import ray

    code = main(["run", "quickstart", "--set", "method=supcon", "--set", "epochs=3", *args,
                 "--storage-path", str(tmp_path)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and fragment in err and len(err.splitlines()) == 1, err
    assert not ray.is_initialized() and not list(tmp_path.glob("*/sweep.json"))


def test_settings_history_follows_the_clone_lineage():
    rows = [("a", 1, 0.1, None), ("a", 2, 0.1, None), ("a", 3, 0.1, None), ("a", 4, 0.1, None),
            ("b", 1, 0.5, None), ("b", 2, 0.5, None),  # b's own start, then it takes a's epoch-2 checkpoint
            ("b", 3, 0.12, "a"), ("b", 4, 0.12, None),
            ("c", 1, 0.9, None), ("c", 4, 0.144, "b")]  # c takes b's epoch-3 checkpoint
    epochs = pd.DataFrame(rows, columns=["trial_id", "epoch", "lr", "cloned_from"])
    history = settings_history(epochs, "c", ["lr"])
    assert history["epoch"].tolist() == [1, 2, 3, 4]
    assert history["lr"].tolist() == [0.1, 0.1, 0.12, 0.144]
    assert history["trial"].tolist() == ["a", "a", "b", "c"]
    assert settings_history(epochs, "a", ["lr"])["trial"].tolist() == ["a"] * 4
    # the lineage the last epoch reports wins over rows that a resume may have lost
    lineage = '[{"epoch": 1, "trial": "a", "lr": 0.1}, {"epoch": 2, "trial": "c", "lr": 0.3}]'
    epochs["lineage"] = [None] * 9 + [lineage]
    assert settings_history(epochs, "c", ["lr"]).to_dict("list") == {"epoch": [1, 2], "lr": [0.1, 0.3],
                                                                     "trial": ["a", "c"]}


@pytest.mark.slow
def test_pbt_sweep_perturbs_settings_records_them_per_epoch_and_resumes_after_a_driver_kill(tmp_path):
    args = [sys.executable, "-m", "search.cli", "run", "quickstart", "--scheduler", "pbt", "--trials", "4",
            "--perturbation-interval", "1", "--name", "pbt", "--storage-path", str(tmp_path),
            "--set", "method=supcon", "--set", "epochs=4", "--set", "probe_epochs=5", "--set", "width=0.125"]
    ray_tmp = f"/tmp/csp{os.getpid()}"
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env={**os.environ, "RAY_TMPDIR": ray_tmp})
    policy = tmp_path / "pbt" / "pbt_global.txt"
    deadline = time.time() + 300
    while time.time() < deadline:
        time.sleep(0.5)
        if policy.exists() and policy.read_text().strip():
            break
        assert proc.poll() is None, "the sweep ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver, once PBT has exploited at least once ...
    proc.wait(timeout=30)
    kill_processes_with_env("RAY_TMPDIR", ray_tmp)  # ... and its Ray
    time.sleep(2)
    assert policy.exists(), "PBT perturbed nothing within 300 s"

    resumed = run_cli("resume", "pbt", "--storage-path", str(tmp_path))
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    from analysis import build_tables

    tables = build_tables(tmp_path / "pbt")
    assert len(tables.trials) == 4 and (tables.trials["status"].astype(str) == "completed").all()
    epochs = tables.epochs
    assert {"lr", "temperature", "cloned_from", "lineage"} <= set(epochs.columns)
    assert epochs["cloned_from"].notna().any()
    changed = 0
    for tid in tables.trials["trial_id"]:
        history = settings_history(epochs, tid, ["lr", "temperature"])
        assert history["epoch"].tolist() == [1, 2, 3, 4], (tid, history)
        assert history[["lr", "temperature"]].notna().all().all()
        rows = epochs[epochs["trial_id"] == tid].set_index("epoch")  # the rows it reported agree with its lineage
        for r in history[history["trial"] == tid].itertuples():
            if r.epoch in rows.index:
                assert rows.loc[[r.epoch], "lr"].iloc[-1] == pytest.approx(r.lr)
        changed += history[["lr", "temperature"]].nunique().max() > 1
    assert changed, "no trial's weights were trained with settings that changed mid-run"
    last = tables.trials.set_index("trial_id")
    assert all(last.loc[t, "lr"] == pytest.approx(settings_history(epochs, t, ["lr"])["lr"].iloc[-1])
               for t in last.index if pd.notna(last.loc[t, "lr"]))


def test_schedule_arguments_are_parsed_and_checked():
    from search.replay import parse_schedule, segments
    from trainables.trial import TrialSpec

    assert parse_schedule(["3:lr=0.08,temperature=0.2", "2:lr=1e-2"]) == {2: {"lr": 0.01},
                                                                          3: {"lr": 0.08, "temperature": 0.2}}
    for bad in ("lr=0.1", "x:lr=0.1", "3:"):
        with pytest.raises(ConfigError, match="`schedule` entries look like"):
            parse_schedule([bad])
    spec = TrialSpec.from_settings("supcon", {"epochs": 4, "lr": 0.1})
    stretches = segments(spec, {3: {"lr": 0.2}})
    assert [(a, b, s.train.lr) for a, b, s in stretches] == [(1, 2, 0.1), (3, 4, 0.2)]
    with pytest.raises(ConfigError, match=r"`schedule` epochs must lie in 2..epochs=4"):
        segments(spec, {5: {"lr": 0.2}})
    with pytest.raises(ConfigError, match="temperature"):
        segments(spec, {2: {"temperature": -1.0}})


def test_replay_args_from_a_lineage():
    from analysis.population import replay_args

    rows = [("a", 1, 0.1, 0.2, None), ("a", 2, 0.1, 0.2, None), ("b", 1, 0.5, 0.2, None),
            ("b", 3, 0.12, 0.2, "a"), ("b", 4, 0.144, 0.16, None)]
    epochs = pd.DataFrame(rows, columns=["trial_id", "epoch", "lr", "temperature", "cloned_from"])
    assert replay_args(epochs, "b", ["lr", "temperature"]) == [
        "--set", "lr=0.1", "--set", "temperature=0.2", "--schedule", "3:lr=0.12",
        "--schedule", "4:lr=0.144,temperature=0.16"]


@pytest.mark.slow
def test_replayed_schedule_matches_the_plain_run_before_its_change_and_applies_it_after():
    from conftest import TINY

    from search.replay import fit_schedule
    from trainables.data import load_dataset
    from trainables.loop import RecordingReporter, fit
    from trainables.trial import TrialSpec

    data = load_dataset("digits")
    settings = {**TINY, "width": 0.125, "epochs": 3, "deterministic": True, "num_threads": 1, "probe_epochs": 5,
                "lr": 0.05}
    spec = TrialSpec.from_settings("supcon", settings)
    plain, replayed = RecordingReporter(), RecordingReporter()
    fit(spec, reporter=plain, data=data)
    final = fit_schedule(spec, {3: {"lr": 0.2, "temperature": 0.3}}, reporter=replayed, data=data)
    assert [m["epoch"] for m in replayed.metrics] == [1, 2, 3] and "linear_top1" in final
    for ours, theirs in zip(replayed.metrics[:2], plain.metrics[:2]):  # stopping and continuing changes nothing
        assert ours["train_loss"] == theirs["train_loss"] and ours["knn_top1"] == theirs["knn_top1"]
        assert ours["lr"] == 0.05 and ours["temperature"] == 0.1
    third = replayed.metrics[2]
    assert third["lr"] == 0.2 and third["temperature"] == 0.3
    assert third["current_lr"] != plain.metrics[2]["current_lr"]
    assert replayed.state["spec"]["lr"] == 0.2 and replayed.state["spec"]["temperature"] == 0.3
