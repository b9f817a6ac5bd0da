"""Sweeps end to end on a local Ray: quickstart, conditional spaces, multi-objective, bad input, kill and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from conftest import ROOT, TINY, kill_processes_with_env, run_cli

from search.cli import main
from search.spec import Objective, SweepConfig, known_metrics, parse_objective
from search.sweep import validate_sweep
from spaces import load_space
from trainables.config import ConfigError

QUICK = ["--set", "epochs=4", "--set", "probe_epochs=10", "--set", "width=0.125"]


def _study(path: Path, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=f"sqlite:///{path / name / 'study.db'}")


def _tune_trials(exp: Path, *, known_only: bool = False) -> list[dict]:
    """Each Tune trial's params and reported results, read from its directory (``known_only``: only the trials in
    Tune's newest experiment snapshot, leaving out directories a killed driver created after it)."""
    from analysis.tune_files import experiment_state, read_results  # read_results tolerates a torn last line

    known = {v["relative_logdir"] for v in experiment_state(exp).values()} if known_only else None
    out = []
    for d in sorted(p for p in exp.iterdir() if p.is_dir() and p.name.startswith("trial_driver_")):
        if not (d / "params.json").exists() or (known is not None and d.name not in known):
            continue
        results = read_results(d)
        out.append({"dir": d, "config": json.loads((d / "params.json").read_text()), "results": results})
    return out


def test_compare_space_samples_conditional_parameters_only_for_their_method():
    space = load_space("compare")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(60):
        trial = study.ask()
        space.space(trial, {})
        method = trial.params["method"]
        seen.add(method)
        assert ("temperature" in trial.params) == (method in ("supcon", "simclr", "selfcon", "sce")), trial.params
        assert ("label_smoothing" in trial.params) == (method == "ce"), trial.params
        study.tell(trial, 0.0)
    assert {"supcon", "simclr", "ce"} <= seen


def test_fixed_settings_are_not_sampled():
    space = load_space("supcon")
    study = optuna.create_study()
    trial = study.ask()
    space.space(trial, {"lr": 0.1, "epochs": 4})
    assert "lr" not in trial.params and trial.params["warmup_epochs"] <= 2


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["nope"], "`space` must be one of"),
        (["supcon", "--sampler", "annealing"], "`sampler` must be one of tpe, random, cmaes, gp, nsga2"),
        (["supcon", "--scheduler", "median"], "`scheduler` must be one of asha, hyperband, fifo, pbt, pb2"),
        (["supcon", "--set", "tau=1"], "unknown setting `tau`"),
        (["supcon", "--objective", "accuracy"], "`objective` metric 'accuracy' is not reported"),
        (["supcon", "--study-storage", "notadb://x"], "`study_storage`"),
        (["supcon", "--trials", "0"], "`1 <= trials`"),
        (["supcon", "--gpus-per-worker", "2"], "no node has that much"),
        (["supcon", "--workers", "3", "--set", "batch_size=128"], "multiple of the number of workers"),
        (["supcon", "--repeats", "2", "--objective", "knn_top1,epoch_time_s"], "`repeats`"),
    ],
)
def test_bad_sweep_input_is_one_line_exit_2_without_ray(args, fragment, capsys, tmp_path):
    import ray

    assert main(["run", *args, "--storage-path", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and len(err.splitlines()) == 1, err
    assert not ray.is_initialized()
    assert not list(tmp_path.glob("*/sweep.json"))


def _objective_sweep(space: str, objective: str, tmp_path: Path) -> SweepConfig:
    return SweepConfig(name="obj", space=space, storage_path=str(tmp_path), fixed={**TINY, "dataset": "digits"},
                       objective=parse_objective(objective))


@pytest.mark.parametrize(("space", "objective"), [("selfcon", "ensemble_top1:max,exit1_top1:max"),
                                                  ("sigmoid", "gamma:min"), ("ce", "train_top1")])
def test_method_metrics_are_accepted_as_objectives(space, objective, tmp_path):
    """Method extras come from the methods' declarations (trainables.metrics), at parsing and at validation."""
    validate_sweep(_objective_sweep(space, objective, tmp_path), cluster=None)


def test_objective_must_be_reported_by_the_space_method(tmp_path):
    with pytest.raises(ConfigError, match="'exit_top1' is not reported by method=sigmoid in space 'sigmoid'"):
        validate_sweep(_objective_sweep("sigmoid", "exit_top1", tmp_path), cluster=None, dry_run_samples=2)
    with pytest.raises(ConfigError, match="'nope' is not reported by any trial; choose from .*knn_top1"):
        parse_objective("nope")


def test_scheduler_stops_on_the_first_per_epoch_objective():
    assert {"gamma", "ema_beta", "train_top1", "knn_top1"} <= known_metrics(per_epoch=True)
    assert "ensemble_top1" in known_metrics() - known_metrics(per_epoch=True)
    cfg = SweepConfig(name="s", space="sigmoid", storage_path="/tmp", objective=parse_objective("gamma:min"))
    assert cfg.scheduler_objective == Objective("gamma", "min")
    cfg = SweepConfig(name="s", space="selfcon", storage_path="/tmp", objective=parse_objective("ensemble_top1"))
    assert cfg.scheduler_objective == Objective("knn_top1", "max")


@pytest.mark.slow
def test_quickstart_sweep_matches_study_stops_early_and_logs_tensorboard(tmp_path):
    proc = run_cli("run", "quickstart", "--trials", "6", "--grace-period", "1", "--name", "qs",
                   "--storage-path", str(tmp_path), *QUICK)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "leaderboard (knn_top1, max)" in proc.stdout
    trials = _tune_trials(tmp_path / "qs")
    assert len(trials) == 6
    study = _study(tmp_path, "qs")
    assert len(study.trials) == 6
    tune_params = sorted(json.dumps({k: t["config"][k] for k in ("method", "lr") if k in t["config"]},
                                    sort_keys=True) for t in trials)
    study_params = sorted(json.dumps({k: t.params[k] for k in ("method", "lr")}, sort_keys=True)
                          for t in study.trials)
    assert tune_params == study_params
    last_epochs = [t["results"][-1]["epoch"] for t in trials]
    assert min(last_epochs) < 4, f"ASHA stopped no trial early: {last_epochs}"
    assert max(last_epochs) == 4
    # Optuna's record matches Tune's: stopped trials PRUNED with their last value, finished ones COMPLETE
    by_tune_id = {t.user_attrs["tune_trial_id"]: t for t in study.trials}
    for t in trials:
        ot = by_tune_id[t["results"][-1]["trial_id"]]
        assert ot.user_attrs["tune_trial_dir"] == str(t["dir"])
        last = t["results"][-1]
        if last.get("finished"):
            assert ot.state == optuna.trial.TrialState.COMPLETE and ot.value == last["knn_top1"], ot
        else:
            assert ot.state == optuna.trial.TrialState.PRUNED, ot
            assert ot.intermediate_values[last["epoch"]] == last["knn_top1"] == ot.value
    finished = [t for t in trials if t["results"][-1]["epoch"] == 4]
    assert all(0 <= t["results"][-1]["linear_top1"] <= 1 for t in finished)
    assert all(list(t["dir"].glob("events.out.tfevents*")) for t in trials), "TensorBoard files missing"
    status = run_cli("status", "qs", "--storage-path", str(tmp_path))
    assert status.returncode == 0 and status.stdout.count("\n") >= 7, status.stderr
    assert "early stopping trust: knn_top1 at each epoch vs final knn_top1" in status.stdout, status.stdout
    for text in (proc.stdout, status.stdout):  # one status vocabulary (search.spec), as in trials.parquet
        assert " completed " in text and " stopped " in text, text


@pytest.mark.slow
def test_multi_objective_sweep_reports_pareto_front(tmp_path):
    proc = run_cli("run", "supcon", "--trials", "3", "--scheduler", "fifo", "--sampler", "nsga2", "--name", "mo",
                   "--objective", "knn_top1:max,epoch_time_s:min", "--storage-path", str(tmp_path),
                   "--set", "epochs=2", "--set", "probe_epochs=5", "--set", "width=0.125", "--set", "batch_size=128")
    assert proc.returncode == 0, proc.stderr[-4000:]
    study = _study(tmp_path, "mo")
    assert len(study.directions) == 2 and len(study.trials) == 3
    assert study.best_trials
    assert "Pareto front (knn_top1:max, epoch_time_s:min)" in proc.stdout


@pytest.mark.slow
def test_sigkilled_driver_resumes_to_exactly_n_trials(tmp_path):
    args = [sys.executable, "-m", "search.cli", "run", "quickstart", "--trials", "5", "--concurrency", "1",
            "--scheduler", "fifo", "--name", "killme", "--storage-path", str(tmp_path), *QUICK]
    ray_tmp = f"/tmp/csw{os.getpid()}"  # a private Ray temp dir marks every process of this driver's Ray
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env={**os.environ, "RAY_TMPDIR": ray_tmp})
    db = tmp_path / "killme" / "study.db"
    deadline = time.time() + 300
    done_before: list[str] = []
    while time.time() < deadline:
        time.sleep(1.0)
        if db.exists():
            try:
                done = [t for t in _study(tmp_path, "killme").trials if t.state == optuna.trial.TrialState.COMPLETE]
            except Exception:
                continue
            if len(done) >= 2:
                break
        assert proc.poll() is None, "the sweep ended before it could be killed"
    else:
        os.killpg(proc.pid, signal.SIGKILL)
        kill_processes_with_env("RAY_TMPDIR", ray_tmp)
        pytest.fail("two trials did not complete in time")
    trials_before = {t["dir"].name: len(t["results"]) for t in _tune_trials(tmp_path / "killme")
                     if t["results"] and t["results"][-1].get("finished")}
    done_before = list(trials_before)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver ...
    proc.wait(timeout=30)
    kill_processes_with_env("RAY_TMPDIR", ray_tmp)  # ... and every Ray process it started, however detached
    time.sleep(2)
    assert done_before

    # the crashed sweep still yields tables for what it finished
    from analysis import build_tables

    crashed = build_tables(tmp_path / "killme")
    statuses = crashed.trials.set_index("trial_id")["status"].astype(str)
    assert (statuses == "completed").sum() >= len(done_before)
    assert len(crashed.epochs) >= 4 * len(done_before)

    resumed = run_cli("resume", "killme", "--storage-path", str(tmp_path))
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    trials = _tune_trials(tmp_path / "killme", known_only=True)
    assert len(trials) == 5
    assert all(t["results"] and t["results"][-1].get("finished") for t in trials)
    for t in trials:  # every epoch of every trial is on record, those reported before the kill included
        assert {r["epoch"] for r in t["results"] if "epoch" in r} == {1, 2, 3, 4}, t["dir"].name
    for t in trials:  # finished trials were not rerun: no result was appended to them
        if t["dir"].name in trials_before:
            assert len(t["results"]) == trials_before[t["dir"].name], t["dir"].name
    study = _study(tmp_path, "killme")
    counted = [t for t in study.trials if not t.user_attrs.get("csweep_orphaned")]
    assert len(counted) == 5
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in counted)


def test_study_record_marks_stopped_trials_pruned_and_errors_failed_with_their_reason(tmp_path):
    """The searcher's side of Optuna's record, driven by hand (no Ray): stopped -> PRUNED with its last value,
    errored -> FAIL with the error line, finished -> COMPLETE; each carries its Tune trial id and directory."""
    from search.sweep import _study_search_class

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'study.db'}")
    search = _study_search_class()(
        experiment_path=str(tmp_path), space=_lr_space, metric="knn_top1", mode="max", study_name="rec",
        storage=storage, sampler=optuna.samplers.RandomSampler(seed=0))
    for tid in ("stop", "boom", "done"):
        search.suggest(tid)
        (tmp_path / f"trial_driver_{tid}_00000").mkdir()
        search.on_trial_result(tid, {"epoch": 1, "training_iteration": 1, "knn_top1": 0.25})
    search.on_trial_result("stop", {"epoch": 2, "training_iteration": 2, "knn_top1": 0.5})
    search.on_trial_complete("stop", {"epoch": 2, "knn_top1": 0.5, "finished": False})
    (tmp_path / "trial_driver_boom_00000" / "error.txt").write_text(
        "Failure # 1\nTraceback (most recent call last):\n  File x\nFloatingPointError: loss is nan at epoch 1, "
        "step 4: the trial diverged (lower lr or temperature, or turn AMP off)\n")
    search.on_trial_complete("boom", None, error=True)
    search.on_trial_complete("done", {"epoch": 3, "knn_top1": 0.75, "finished": True})
    trials = {t.user_attrs["tune_trial_id"]: t for t in optuna.load_study(study_name="rec", storage=storage).trials}
    State = optuna.trial.TrialState
    assert trials["stop"].state == State.PRUNED and trials["stop"].value == 0.5
    assert trials["stop"].intermediate_values == {1: 0.25, 2: 0.5}
    assert trials["boom"].state == State.FAIL
    assert trials["boom"].user_attrs["csweep_error"].startswith("FloatingPointError: loss is nan at epoch 1, step 4")
    assert trials["done"].state == State.COMPLETE and trials["done"].value == 0.75
    assert all(t.user_attrs["tune_trial_dir"] == str(tmp_path / f"trial_driver_{k}_00000") for k, t in trials.items())


def _lr_space(trial):
    trial.suggest_float("lr", 0.01, 1.0, log=True)


def _lr_sweep(tmp_path: Path, name: str) -> SweepConfig:
    cfg = SweepConfig(name=name, space="quickstart", storage_path=str(tmp_path))
    (tmp_path / name).mkdir()
    return cfg


def _lr_searcher(cfg):
    """The sweep's searcher over :func:`_lr_space`, on ``cfg``'s study (driven by hand, no Ray)."""
    from search.sweep import _study_search_class

    return _study_search_class()(
        experiment_path=cfg.experiment_path, space=_lr_space, metric="knn_top1", mode="max", study_name=cfg.name,
        storage=optuna.storages.RDBStorage(cfg.study_url), sampler=optuna.samplers.RandomSampler(seed=0))


def test_repeated_configuration_is_told_what_its_seeds_did(tmp_path):
    """--repeats: Tune's Repeater told Optuna COMPLETE with the mean whatever the seeds did; the study now gets
    PRUNED when a seed was stopped early (mean of the last values at the smallest epoch), FAIL with the error of a
    seed that errored, COMPLETE with the mean when every seed ran to the end."""
    from search.sweep import _seed_repeater_class, _study_search_class

    storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'study.db'}")
    inner = _study_search_class()(
        experiment_path=str(tmp_path), space=_lr_space, metric="knn_top1", mode="max", study_name="rep",
        storage=storage, sampler=optuna.samplers.RandomSampler(seed=0))
    rep = _seed_repeater_class()(inner, repeat=2, set_index=True)
    for tid in ("a0", "a1", "b0", "b1", "c0", "c1"):
        assert rep.suggest(tid)["__trial_index__"] == int(tid[1])
        (tmp_path / f"trial_driver_{tid}_supcon").mkdir()
    done = {"epoch": 4, "knn_top1": 0.8, "finished": True}
    rep.on_trial_result("a0", done)
    rep.on_trial_complete("a0", done)
    rep.on_trial_result("a1", {"epoch": 2, "knn_top1": 0.4, "finished": False})
    rep.on_trial_complete("a1", {"epoch": 2, "knn_top1": 0.4, "finished": False})  # ASHA stopped this seed
    rep.on_trial_complete("b0", done)
    (tmp_path / "trial_driver_b1_supcon" / "error.txt").write_text(
        "Failure # 1\nFloatingPointError: loss is nan at epoch 1, step 4: the trial diverged\n")
    rep.on_trial_complete("b1", None, error=True)
    rep.on_trial_complete("c0", done)
    rep.on_trial_complete("c1", {**done, "knn_top1": 0.6})
    trials = {t.user_attrs["tune_trial_id"]: t for t in optuna.load_study(study_name="rep", storage=storage).trials}
    State = optuna.trial.TrialState
    assert set(trials) == {"a0", "b0", "c0"}  # one Optuna trial per configuration: its first seed's id
    assert trials["a0"].state == State.PRUNED and trials["a0"].value == pytest.approx(0.6)
    assert trials["a0"].intermediate_values == {2: pytest.approx(0.6)}
    assert trials["b0"].state == State.FAIL
    assert trials["b0"].user_attrs["csweep_error"].startswith("FloatingPointError: loss is nan at epoch 1, step 4")
    assert trials["c0"].state == State.COMPLETE and trials["c0"].value == pytest.approx(0.7)


def test_repeats_of_a_real_sweep_are_one_complete_optuna_trial_per_configuration(sweep):
    """The shared `--repeats 2` FIFO sweep: each configuration is one COMPLETE Optuna trial whose value is the mean
    of its seeds' final kNN accuracy."""
    reported = {}
    for t in _tune_trials(sweep / "abl"):
        reported.setdefault(t["config"]["lr"], []).append(t["results"][-1]["knn_top1"])
    study = _study(sweep, "abl")
    assert len(study.trials) == 2
    for t in study.trials:
        assert t.state == optuna.trial.TrialState.COMPLETE
        assert len(reported[t.params["lr"]]) == 2 and t.value == pytest.approx(sum(reported[t.params["lr"]]) / 2)


@pytest.mark.parametrize(("fixed_method", "config_method", "expected"), [
    ("supcon", None, "s3://bucket/csweep/sw/trial_driver_t1_supcon"),
    (None, "ce", "s3://bucket/csweep/sw/trial_driver_t1_ce"),
])
def test_tune_trial_dir_of_remote_storage_is_the_trial_uri(tmp_path, fixed_method, config_method, expected):
    """s3:// storage (no network here): the Optuna trial's ``tune_trial_dir`` is the trial's URI, named as Tune names
    it (``trial_dirname``), set when the trial is suggested."""
    from search.sweep import _study_search_class

    def space(trial):
        trial.suggest_float("lr", 0.01, 1.0, log=True)
        return {"method": config_method} if config_method else None

    search = _study_search_class()(
        experiment_path="s3://bucket/csweep/sw/", fixed_method=fixed_method, space=space, metric="knn_top1",
        mode="max", study_name="s3", storage=optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'study.db'}"),
        sampler=optuna.samplers.RandomSampler(seed=0))
    search.suggest("t1")
    (trial,) = optuna.load_study(study_name="s3", storage=f"sqlite:///{tmp_path / 'study.db'}").trials
    assert trial.user_attrs["tune_trial_dir"] == expected


DIVERGING_SPACE = '''
FIXED = {"method": "supcon", "epochs": 2, "probe_epochs": 2, "width": 0.125, "batch_size": 128}
POINTS_TO_EVALUATE = [{"lr": 1e12}, {"lr": 0.1}]
TRIALS = 2


def space(trial, fixed):
    trial.suggest_categorical("lr", [1e12, 0.1])
'''


@pytest.mark.slow
def test_diverging_trial_fails_with_its_step_and_the_sweep_goes_on(tmp_path):
    (tmp_path / "diverge.py").write_text(DIVERGING_SPACE)
    proc = run_cli("run", str(tmp_path / "diverge.py"), "--name", "dv", "--scheduler", "fifo", "--sampler", "random",
                   "--max-failures", "0", "--storage-path", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    study = _study(tmp_path / "out", "dv")
    by_lr = {t.params["lr"]: t for t in study.trials}
    assert by_lr[1e12].state == optuna.trial.TrialState.FAIL
    assert "diverged" in by_lr[1e12].user_attrs["csweep_error"] and "step" in by_lr[1e12].user_attrs["csweep_error"]
    assert by_lr[0.1].state == optuna.trial.TrialState.COMPLETE
    from analysis import build_tables

    trials = build_tables(tmp_path / "out" / "dv").trials
    row = trials[trials["lr"] == 1e12].iloc[0]
    assert row["status"] == "diverged" and "step" in row["error"], row.to_dict()
    assert (trials["status"].astype(str) == "completed").sum() == 1


def test_trial_marked_failed_by_an_interrupt_is_continued_as_a_copy_on_resume(tmp_path):
    """Ctrl-C marks the running Optuna trials FAIL (orphaned); when the resumed sweep finishes one, its record
    continues as a RUNNING copy that is then told normally, so the study counts exactly the planned trials."""
    from search.spec import SweepConfig
    from search.sweep import _study_search_class, fail_orphaned_study_trials

    cfg = SweepConfig(name="int", space="quickstart", storage_path=str(tmp_path))
    (tmp_path / "int").mkdir()
    search = _study_search_class()(
        experiment_path=cfg.experiment_path, space=_lr_space, metric="knn_top1", mode="max", study_name="int",
        storage=optuna.storages.RDBStorage(cfg.study_url), sampler=optuna.samplers.RandomSampler(seed=0))
    search.suggest("t1")
    search.on_trial_result("t1", {"epoch": 1, "knn_top1": 0.25})
    assert fail_orphaned_study_trials(cfg) == 1  # what `csweep run` does after Tune returns on SIGINT
    search.on_trial_result("t1", {"epoch": 2, "knn_top1": 0.5})
    search.on_trial_complete("t1", {"epoch": 3, "knn_top1": 0.75, "finished": True})
    old, new = _study(tmp_path, "int").trials
    assert old.state == optuna.trial.TrialState.FAIL and old.user_attrs["csweep_orphaned"]
    assert new.state == optuna.trial.TrialState.COMPLETE and new.value == 0.75 and new.params == old.params
    assert new.intermediate_values == {1: 0.25, 2: 0.5} and new.user_attrs["csweep_resumed_from"] == old.number
    assert new.user_attrs["tune_trial_id"] == "t1" and "csweep_orphaned" not in new.user_attrs


def test_trial_told_after_the_last_snapshot_is_not_counted_twice_on_resume(tmp_path):
    """A driver killed after telling Optuna a trial's end but before Tune's next snapshot: the resumed sweep replays
    that trial's end, and the study keeps its one record (a copy would count the configuration twice)."""
    from search.sweep import fail_orphaned_study_trials

    cfg = _lr_sweep(tmp_path, "snap")
    first = _lr_searcher(cfg)
    first.suggest("t1")
    first.on_trial_result("t1", {"epoch": 1, "knn_top1": 0.25})
    first.save(str(tmp_path / "searcher.pkl"))  # Tune's last snapshot
    first.on_trial_complete("t1", {"epoch": 2, "knn_top1": 0.5, "finished": True})  # then the driver dies
    resumed = _lr_searcher(cfg)
    resumed.restore(str(tmp_path / "searcher.pkl"))
    resumed.on_trial_result("t1", {"epoch": 2, "knn_top1": 0.5, "finished": True})
    resumed.on_trial_complete("t1", {"epoch": 2, "knn_top1": 0.5, "finished": True})
    assert fail_orphaned_study_trials(cfg) == 0
    (only,) = _study(tmp_path, "snap").trials
    assert only.state == optuna.trial.TrialState.COMPLETE and only.value == 0.5


def test_trial_asked_after_the_last_snapshot_is_found_and_told_on_resume(tmp_path):
    """A driver killed after Optuna asked for a trial but before Tune's next searcher snapshot: Tune restores the
    trial, the restored searcher has no map entry for it, and finds its Optuna trial by ``tune_trial_id`` (it raised
    KeyError inside Tune and failed the resume before). A trial no study knows is skipped, not raised on."""
    from search.sweep import fail_orphaned_study_trials

    cfg = _lr_sweep(tmp_path, "late")
    first = _lr_searcher(cfg)
    first.suggest("t1")
    first.save(str(tmp_path / "searcher.pkl"))  # Tune's last snapshot
    first.suggest("t2")  # asked, then the driver dies with t2 RUNNING in the study
    first.on_trial_result("t2", {"epoch": 1, "knn_top1": 0.25})
    resumed = _lr_searcher(cfg)
    resumed.restore(str(tmp_path / "searcher.pkl"))
    resumed.on_trial_result("t2", {"epoch": 2, "knn_top1": 0.5})
    resumed.on_trial_complete("t2", {"epoch": 3, "knn_top1": 0.75, "finished": True})
    resumed.on_trial_complete("t1", {"epoch": 3, "knn_top1": 0.5, "finished": True})
    resumed.on_trial_result("ghost", {"epoch": 1, "knn_top1": 0.1})
    resumed.on_trial_complete("ghost", {"epoch": 1, "knn_top1": 0.1, "finished": True})
    assert fail_orphaned_study_trials(cfg) == 0
    trials = {t.user_attrs["tune_trial_id"]: t for t in _study(tmp_path, "late").trials}
    assert sorted(trials) == ["t1", "t2"]
    assert trials["t2"].state == optuna.trial.TrialState.COMPLETE and trials["t2"].value == 0.75
    assert trials["t2"].intermediate_values == {1: 0.25, 2: 0.5}
    assert trials["t1"].state == optuna.trial.TrialState.COMPLETE and trials["t1"].value == 0.5


@pytest.mark.slow
def test_ctrl_c_stops_the_sweep_and_resume_finishes_exactly_n_trials(tmp_path):
    args = [sys.executable, "-m", "search.cli", "run", "quickstart", "--trials", "4", "--concurrency", "1",
            "--scheduler", "fifo", "--name", "intr", "--storage-path", str(tmp_path), *QUICK]
    ray_tmp = f"/tmp/csi{os.getpid()}"
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ, "RAY_TMPDIR": ray_tmp})
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            time.sleep(1.0)
            assert proc.poll() is None, "the sweep ended before it could be interrupted"
            try:
                states = [t.state for t in _study(tmp_path, "intr").trials]
            except Exception:
                continue
            if states.count(optuna.trial.TrialState.COMPLETE) >= 1:
                break
        else:
            pytest.fail("no trial completed in time")
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        sent = time.time()
        _, err = proc.communicate(timeout=60)
        assert time.time() - sent < 60
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        kill_processes_with_env("RAY_TMPDIR", ray_tmp)
    assert proc.returncode == 130, err[-3000:]
    assert "interrupted" in err and "csweep resume intr" in err
    study = _study(tmp_path, "intr")
    assert not [t for t in study.trials if t.state == optuna.trial.TrialState.RUNNING]

    resumed = run_cli("resume", "intr", "--storage-path", str(tmp_path))
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    trials = _tune_trials(tmp_path / "intr", known_only=True)
    assert len(trials) == 4 and all(t["results"][-1].get("finished") for t in trials)
    counted = [t for t in _study(tmp_path, "intr").trials if not t.user_attrs.get("csweep_orphaned")]
    assert len(counted) == 4 and all(t.state == optuna.trial.TrialState.COMPLETE for t in counted)
    assert sorted(t.user_attrs["tune_trial_id"] for t in counted) == sorted(t["results"][-1]["trial_id"]
                                                                             for t in trials)
