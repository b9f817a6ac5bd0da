"""Fused sweeps (search/fusion.py): asking K members per Tune trial, per-member ASHA, members as trials in the study,
the progress table and the Parquet tables, and a whole `csweep run --fuse K` that is killed and resumed."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
from conftest import ROOT, kill_processes_with_env, run_cli

from search.fusion import FUSED, FUSED_IDS, MemberPruner, fused_search_class, member_trials
from search.spec import SweepConfig
from trainables.config import ConfigError

QUICK = ["--set", "epochs=4", "--set", "probe_epochs=10", "--set", "width=0.125"]
State = optuna.trial.TrialState


def _space(trial, fixed):
    """quickstart's shape: a method (fixes the architecture's loss path), an lr and a temperature per member."""
    trial.suggest_categorical("method", ["supcon", "simclr"])
    trial.suggest_float("lr", 0.01, 0.3, log=True)
    trial.suggest_float("temperature", 0.05, 0.5, log=True)
    return {}


def _searcher(tmp_path: Path, *, fuse: int, budget: int, points=None):
    import functools

    fixed = {"dataset": "digits", "epochs": 4}
    return fused_search_class()(
        fuse=fuse, budget=budget, fixed=fixed, experiment_path=str(tmp_path / "fz"),
        space=functools.partial(_space, fixed=fixed), metric="knn_top1", mode="max", study_name="fz",
        points_to_evaluate=points, storage=optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'study.db'}"),
        sampler=optuna.samplers.TPESampler(seed=0, constant_liar=True, multivariate=True))


def _trials(tmp_path: Path) -> dict[str, optuna.trial.FrozenTrial]:
    study = optuna.load_study(study_name="fz", storage=f"sqlite:///{tmp_path / 'study.db'}")
    return {t.user_attrs["tune_trial_id"]: t for t in study.trials if "tune_trial_id" in t.user_attrs}


def test_searcher_asks_fusable_groups_of_k_and_exactly_the_budget(tmp_path):
    """trials=7, fuse=3: groups of 3, 3, 1, then FINISHED. Members of a group share the sampled method (a shape
    setting) and differ in lr and temperature; each is an Optuna trial carrying its id and its group."""
    from ray.tune.search import Searcher

    search = _searcher(tmp_path, fuse=3, budget=7)
    groups = [search.suggest(g) for g in ("g1", "g2", "g3")]
    assert search.suggest("g4") == Searcher.FINISHED
    assert [len(c[FUSED]) for c in groups] == [3, 3, 1]
    assert groups[0][FUSED_IDS] == ["g1-0", "g1-1", "g1-2"]
    for config in groups:
        assert len({m["method"] for m in config[FUSED]}) == 1
    assert len({m["lr"] for c in groups for m in c[FUSED]}) == 7
    trials = _trials(tmp_path)
    assert sorted(trials) == sorted(i for c in groups for i in c[FUSED_IDS])
    assert trials["g2-1"].user_attrs["fused_group"] == "g2"
    assert trials["g2-1"].params == groups[1][FUSED][1]


def test_a_point_that_does_not_fuse_opens_a_later_group_and_none_is_lost(tmp_path):
    """Enqueued points (recipe, warm start) are taken as asked; one whose method differs from its group's first
    member is carried to the next group instead of being dropped or mixed in."""
    points = [{"method": "supcon", "lr": 0.05, "temperature": 0.1}, {"method": "simclr", "lr": 0.1,
                                                                         "temperature": 0.2}]
    search = _searcher(tmp_path, fuse=2, budget=4, points=points)
    first, second = search.suggest("g1"), search.suggest("g2")
    assert first[FUSED][0] == points[0] and first[FUSED][1]["method"] == "supcon"
    assert second[FUSED][0] == points[1] and second[FUSED][1]["method"] == "simclr"
    assert search.suggest("g3") is not None and search.suggest("g4") == "FINISHED"
    assert len(_trials(tmp_path)) == 4


def test_members_are_told_their_own_outcome(tmp_path):
    """Per-epoch rows report each member's intermediate values; a dropped member is PRUNED at once with its last
    value; at the end the finished one is COMPLETE and the errored group's survivors FAIL."""
    search = _searcher(tmp_path, fuse=3, budget=6)
    search.suggest("g1")
    search.suggest("g2")

    def result(epoch, rows):
        return {"epoch": epoch, "knn_top1": 0.0, "members": rows}

    search.on_trial_result("g1", result(1, [{"trial_id": f"g1-{k}", "epoch": 1, "knn_top1": 0.1 * k}
                                            for k in range(3)]))
    search.on_trial_result("g1", result(2, [
        {"trial_id": "g1-0", "epoch": 2, "knn_top1": 0.05, "dropped": True},
        {"trial_id": "g1-1", "epoch": 2, "knn_top1": 0.3}, {"trial_id": "g1-2", "epoch": 2, "knn_top1": 0.4}]))
    assert _trials(tmp_path)["g1-0"].state == State.PRUNED  # told while the group trains on
    last = result(4, [{"trial_id": "g1-0", "epoch": 2, "knn_top1": 0.05, "dropped": True},
                      {"trial_id": "g1-1", "epoch": 4, "knn_top1": 0.6, "finished": True},
                      {"trial_id": "g1-2", "epoch": 3, "knn_top1": 0.5, "dropped": True}])
    search.on_trial_result("g1", last)
    search.on_trial_complete("g1", last)
    search.on_trial_result("g2", result(1, [{"trial_id": f"g2-{k}", "epoch": 1, "knn_top1": 0.2} for k in range(3)]))
    search.on_trial_complete("g2", None, error=True)
    t = _trials(tmp_path)
    assert t["g1-0"].state == State.PRUNED and t["g1-0"].value == 0.05
    assert t["g1-0"].intermediate_values == {1: 0.0, 2: 0.05}
    assert t["g1-1"].state == State.COMPLETE and t["g1-1"].value == 0.6
    assert t["g1-2"].state == State.PRUNED and t["g1-2"].value == 0.5
    assert all(t[f"g2-{k}"].state == State.FAIL for k in range(3))


def test_restored_searcher_finds_groups_its_snapshot_predates(tmp_path):
    """Killed between asking a group and Tune's next searcher snapshot: on restore the group (which Tune's
    experiment state lists) is found in the study, counted in the budget and told normally."""
    search = _searcher(tmp_path, fuse=2, budget=4)
    search.suggest("g1")
    search.save(str(tmp_path / "searcher.pkl"))
    search.suggest("g2")  # then the driver dies
    (tmp_path / "fz").mkdir()
    (tmp_path / "fz" / "experiment_state-2026.json").write_text(json.dumps({"trial_data": [
        [json.dumps({"trial_id": g, "status": "RUNNING"}), json.dumps({})] for g in ("g1", "g2")]}))
    resumed = _searcher(tmp_path, fuse=2, budget=4)
    resumed.restore(str(tmp_path / "searcher.pkl"))
    assert resumed.suggest("g3") == "FINISHED"  # 4 asked: g1 and g2 hold them all
    resumed.on_trial_complete("g2", {"epoch": 4, "members": [
        {"trial_id": "g2-0", "epoch": 4, "knn_top1": 0.7, "finished": True},
        {"trial_id": "g2-1", "epoch": 4, "knn_top1": 0.8, "finished": True}]})
    t = _trials(tmp_path)
    assert len(t) == 4 and t["g2-1"].state == State.COMPLETE and t["g2-1"].value == 0.8


def test_member_pruner_stops_the_bottom_of_each_rung_like_asha():
    """grace 1, rf 3, 9 epochs: rungs at epochs 1 and 3 (not 9, the end). At a rung a member below the 2/3
    quantile of the values recorded there (itself included) stops; between rungs nobody does."""
    p = MemberPruner(scheduler="asha", grace_period=1, reduction_factor=3, max_epochs=9, mode="max")
    assert p.rungs == [1, 3]
    assert p.decide([("a", 1, 0.5)]) == []  # alone: the quantile is its own value
    assert p.decide([("b", 1, 0.2), ("c", 1, 0.9)]) == ["b"]  # 2/3-quantile of {0.5, 0.2, 0.9} = 0.633
    assert p.decide([("a", 2, 0.0)]) == []  # not a rung
    assert p.decide([("d", 1, float("nan")), ("e", 1, None)]) == []  # nothing to rank
    # min mode, records seeded from a resumed sweep's study: stop above the 1/3-quantile of the recorded values
    low = MemberPruner(scheduler="asha", grace_period=2, reduction_factor=3, max_epochs=8, mode="min",
                       seed={2: {"x": 1.0, "y": 3.0}})
    assert low.rungs == [2, 6]
    assert low.decide([("z", 2, 2.8)]) == ["z"]  # 1/3-quantile of {1, 2.8, 3} = 2.2
    assert low.decide([("w", 2, 1.5)]) == []  # 1/3-quantile of {1, 1.5, 2.8, 3} = 1.5
    assert MemberPruner(scheduler="fifo", grace_period=1, reduction_factor=3, max_epochs=9, mode="max").rungs == []


def test_member_trials_expand_a_group_into_its_members():
    config = {FUSED: [{"lr": 0.1}, {"lr": 0.2}], FUSED_IDS: ["g-0", "g-1"]}
    results = [
        {"epoch": 1, "timestamp": 10, "trial_id": "g", "knn_top1": 0.5, "finished": False, "members": [
            {"trial_id": "g-0", "epoch": 1, "knn_top1": 0.4, "finished": False, "dropped": True},
            {"trial_id": "g-1", "epoch": 1, "knn_top1": 0.5, "finished": False}]},
        {"epoch": 2, "timestamp": 20, "trial_id": "g", "knn_top1": 0.6, "finished": True, "members": [
            {"trial_id": "g-0", "epoch": 1, "knn_top1": 0.4, "finished": False, "dropped": True},
            {"trial_id": "g-1", "epoch": 2, "knn_top1": 0.6, "finished": True}]}]
    (a, ca, ra), (b, cb, rb) = member_trials(config, results)
    assert (a, ca, b, cb) == ("g-0", {"lr": 0.1}, "g-1", {"lr": 0.2})
    assert [r["epoch"] for r in ra] == [1] and ra[0]["knn_top1"] == 0.4 and ra[0]["timestamp"] == 10
    assert [r["epoch"] for r in rb] == [1, 2] and rb[-1]["finished"] and rb[0]["finished"] is False


def test_fuse_refuses_what_it_cannot_do():
    base = dict(name="f", space="quickstart", storage_path="/tmp/x", fuse=4)
    for bad, field in [(dict(workers=2), "executor"), (dict(scheduler="hyperband"), "scheduler"),
                       (dict(repeats=2), "repeats"), (dict(fuse=0), "fuse")]:
        with pytest.raises(ConfigError, match=field):
            SweepConfig(**{**base, **bad})
    SweepConfig(**base, scheduler="fifo")


@pytest.mark.slow
def test_fused_sweep_is_killed_resumed_and_tabulated_member_by_member(tmp_path):
    """`csweep run quickstart --fuse 3 --trials 5`: 2 Tune trials, 5 trials everywhere a user looks. The driver is
    SIGKILLed after the first checkpoint and `csweep resume` finishes exactly the 5."""
    args = [sys.executable, "-m", "search.cli", "run", "quickstart", "--trials", "5", "--fuse", "3",
            "--concurrency", "1", "--grace-period", "2", "--name", "fz", "--storage-path", str(tmp_path), *QUICK]
    ray_tmp = f"/tmp/csf{os.getpid()}"
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True, env={**os.environ, "RAY_TMPDIR": ray_tmp})
    try:
        deadline = time.time() + 300
        while time.time() < deadline and not list((tmp_path / "fz").glob("trial_driver_*/checkpoint_*")):
            assert proc.poll() is None, "the sweep ended before it could be killed"
            time.sleep(0.5)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        kill_processes_with_env("RAY_TMPDIR", ray_tmp)
    time.sleep(2)
    study = optuna.load_study(study_name="fz", storage=f"sqlite:///{tmp_path / 'fz' / 'study.db'}")
    assert sum(t.state in (State.COMPLETE, State.PRUNED) for t in study.trials) < 5  # killed mid-sweep
    resumed = run_cli("resume", "fz", "--storage-path", str(tmp_path))
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    study = optuna.load_study(study_name="fz", storage=f"sqlite:///{tmp_path / 'fz' / 'study.db'}")
    told = [t for t in study.trials if t.state in (State.COMPLETE, State.PRUNED)]
    assert len(told) == 5 and len({t.user_attrs["fused_group"] for t in told}) == 2 and all(
        t.user_attrs["tune_trial_id"].startswith(t.user_attrs["fused_group"] + "-") for t in told)

    from analysis import build_tables

    tables = build_tables(tmp_path / "fz")
    trials = tables.trials
    assert len(trials) == 5 and trials["fused_group"].nunique() == 2
    assert set(trials["status"].astype(str)) <= {"completed", "stopped"}
    assert (trials["status"].astype(str) == "completed").sum() >= 1
    assert set(trials["optuna_trial"]) == {t.number for t in told}
    epochs = tables.epochs
    assert set(epochs["trial_id"]) == set(trials["trial_id"])
    per_trial = epochs.groupby("trial_id")["epoch"].apply(list)
    assert all(v == list(range(1, len(v) + 1)) for v in per_trial)  # one row per epoch trained, resume or not
    assert (trials.set_index("trial_id")["epochs_run"] == per_trial.map(len)).all()

    # each member is charged its share of each epoch of its fused trial: the members' charges add up to the trial's
    # epoch times (charging each member all of it would count them 2 and 3 times)
    from analysis.tune_files import read_results

    cpus = json.loads((tmp_path / "fz" / "sweep.json").read_text())["cpus_per_worker"]
    for group, charged in trials.groupby("fused_group")["device_s"].sum().items():
        rows = read_results(next((tmp_path / "fz").glob(f"trial_driver_{group}_*")))
        per_epoch = {r["epoch"]: r["time_this_iter_s"] for r in rows if "epoch" in r}  # a rerun epoch: the rerun
        assert charged == pytest.approx(sum(per_epoch.values()) * cpus, rel=1e-6)

    status = run_cli("status", "fz", "--storage-path", str(tmp_path))
    assert status.returncode == 0 and "5 of 5 trial(s)" in status.stdout
    for row in trials.itertuples():
        assert re.search(rf"^{row.trial_id}\s+{row.fused_group}\s+{row.status}\s", status.stdout, re.M), row


def test_progress_table_and_leaderboard_show_members_as_trials():
    """The live table gets a row per member (a dropped one stays `stopped`; the others follow the Tune trial); the
    leaderboard of a finished fused trial has a row per member with its own status."""
    import io

    from search.printing import result_rows
    from search.progress import ProgressTable

    config = {FUSED: [{"lr": 0.1}, {"lr": 0.2}], FUSED_IDS: ["g-0", "g-1"]}
    trial = SimpleNamespace(trial_id="g", config=config, status="RUNNING", last_result=None)
    table = ProgressTable(stream=io.StringIO(), fixed_method="supcon", total=2)
    table.on_trial_start(0, [], trial)
    assert {r["trial"]: r["status"] for r in table._rows.values()} == {"g-0": "running", "g-1": "running"}
    epoch2 = {"epoch": 2, "trial_id": "g", "knn_top1": 0.6, "members": [
        {"trial_id": "g-0", "epoch": 2, "knn_top1": 0.3, "dropped": True},
        {"trial_id": "g-1", "epoch": 2, "knn_top1": 0.6}]}
    table.on_trial_result(0, [], trial, epoch2)
    assert table._rows["g-0"]["status"] == "stopped" and table._rows["g-1"]["status"] == "running"
    last = {"epoch": 4, "trial_id": "g", "knn_top1": 0.7, "finished": True, "members": [
        {"trial_id": "g-0", "epoch": 2, "knn_top1": 0.3, "dropped": True},
        {"trial_id": "g-1", "epoch": 4, "knn_top1": 0.7, "finished": True}]}
    trial.last_result = last
    table.on_trial_result(0, [], trial, last)
    table.on_trial_complete(0, [], trial)
    rows = table._rows
    assert (rows["g-0"]["status"], rows["g-0"]["epoch"]) == ("stopped", 2)
    assert (rows["g-1"]["status"], rows["g-1"]["knn_top1"], rows["g-1"]["lr"]) == ("completed", 0.7, 0.2)
    assert "2/2 trials done" in table.headline() and "(trial g-1)" in table.headline()
    assert rows["g-0"]["fused_group"] == "g" and "fused_group" in table.stream.getvalue().splitlines()[1]

    board = result_rows(SimpleNamespace(config=config, metrics=last, error=None))
    assert [(r["trial"], r["status"], r["fused_group"], r["lr"]) for r in board] == [
        ("g-0", "stopped", "g", 0.1), ("g-1", "completed", "g", 0.2)]
    errored = result_rows(SimpleNamespace(config=config, metrics=epoch2, error=RuntimeError("x")))
    assert [r["status"] for r in errored] == ["stopped", "errored"]


def _experiment_state(tmp_path: Path, statuses: dict[str, str]) -> None:
    (tmp_path / "fz").mkdir(exist_ok=True)
    (tmp_path / "fz" / "experiment_state-2026.json").write_text(json.dumps({"trial_data": [
        [json.dumps({"trial_id": t, "status": s}), json.dumps({})] for t, s in statuses.items()]}))


def test_concurrency_is_limited_by_the_searcher_so_restored_groups_are_told(tmp_path):
    """Tune wraps the searcher in a ConcurrencyLimiter, whose list of live trials comes back from an old snapshot
    and which then drops the end of a trial missing from it. The searcher limits concurrency itself, so the
    limiter forwards every call; on restore its live set is the experiment state's unfinished trials."""
    from ray.tune.search import ConcurrencyLimiter

    first = ConcurrencyLimiter(_searcher(tmp_path, fuse=2, budget=6), max_concurrent=1)
    assert first.suggest("g1") is not None and first.suggest("g2") is None  # one at a time
    first.searcher.save(str(tmp_path / "searcher.pkl"))  # Tune's snapshot, then g1 ends and g2 starts
    first.on_trial_complete("g1", {"epoch": 4, "members": [
        {"trial_id": f"g1-{k}", "epoch": 4, "knn_top1": 0.5, "finished": True} for k in range(2)]})
    assert first.suggest("g2") is not None
    _experiment_state(tmp_path, {"g1": "TERMINATED", "g2": "RUNNING"})
    resumed = ConcurrencyLimiter(_searcher(tmp_path, fuse=2, budget=6), max_concurrent=1)
    resumed.restore(str(tmp_path / "searcher.pkl"))
    assert resumed.suggest("g3") is None  # g2 runs (the experiment state says so, the snapshot does not)
    resumed.on_trial_complete("g2", {"epoch": 4, "members": [
        {"trial_id": f"g2-{k}", "epoch": 4, "knn_top1": 0.6, "finished": True} for k in range(2)]})
    t = _trials(tmp_path)
    assert t["g2-0"].state == State.COMPLETE and t["g2-1"].value == 0.6
    assert resumed.suggest("g3") is not None and resumed.suggest("g4") is None


def test_a_carried_configuration_orphaned_by_an_interrupt_goes_on_as_a_copy(tmp_path):
    """Ctrl-C marks every RUNNING Optuna trial FAIL, the carried one too (asked, not yet placed); the resumed
    searcher places a RUNNING copy of it instead of failing on the finished record."""
    from search.sweep import fail_orphaned_study_trials

    points = [{"method": "supcon", "lr": 0.05, "temperature": 0.1}, {"method": "simclr", "lr": 0.1,
                                                                         "temperature": 0.2}]
    search = _searcher(tmp_path, fuse=2, budget=4, points=points)
    search.suggest("g1")  # the simclr point is carried
    search.save(str(tmp_path / "searcher.pkl"))
    cfg = SweepConfig(name="fz", space="quickstart", storage_path=str(tmp_path),
                      study_storage=f"sqlite:///{tmp_path / 'study.db'}")
    assert fail_orphaned_study_trials(cfg) == 3
    resumed = _searcher(tmp_path, fuse=2, budget=4)  # Tune unpickles it: the points are not enqueued again
    resumed.restore(str(tmp_path / "searcher.pkl"))
    g2 = resumed.suggest("g2")
    assert g2[FUSED][0] == points[1]
    copy = _trials(tmp_path)["g2-0"]
    assert copy.state == State.RUNNING and "csweep_resumed_from" in copy.user_attrs


def test_member_pruner_judges_a_member_once_per_rung_and_resumes_from_the_study(tmp_path):
    """A member reaching a rung again (its trial resumed from an older checkpoint) gets its first decision, not a
    new one against values recorded since; a pruner started on a resumed sweep knows the study's decisions."""
    p = MemberPruner(scheduler="asha", grace_period=2, reduction_factor=2, max_epochs=8, mode="max")
    assert p.decide([("a", 2, 0.9), ("b", 2, 0.5)]) == ["b"]
    assert p.decide([("c", 2, 0.1), ("d", 2, 0.2), ("e", 2, 0.15)]) == ["c", "d", "e"]
    assert p.decide([("a", 2, 0.9), ("b", 2, 0.5)]) == ["b"]  # as before, though b now beats the median
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="fz", storage=url, direction="maximize")
    dist = {"lr": optuna.distributions.FloatDistribution(0.01, 1.0)}
    for mid, values, state in [("g-0", {1: 0.5, 2: 0.4}, State.PRUNED), ("g-1", {1: 0.6, 2: 0.7, 3: 0.8}, State.RUNNING)]:
        study.add_trial(optuna.trial.create_trial(
            state=state, params={"lr": 0.1}, distributions=dist, intermediate_values=values,
            value=values[max(values)] if state != State.RUNNING else None,
            user_attrs={"tune_trial_id": mid, "fused_group": "g"}))
    seeded = MemberPruner(scheduler="asha", grace_period=2, reduction_factor=2, max_epochs=8, mode="max",
                          study=("fz", url))
    assert seeded.recorded[2] == {"g-0": 0.4, "g-1": 0.7}
    assert seeded.decide([("g-0", 2, 0.99), ("g-1", 2, 0.0)]) == ["g-0"]  # the study's decisions stand


def test_a_rerun_epoch_replaces_the_abandoned_history():
    config = {FUSED: [{"lr": 0.1}], FUSED_IDS: ["g-0"]}
    results = [{"epoch": e, "members": [{"trial_id": "g-0", "epoch": e, "knn_top1": v}]}
               for e, v in [(1, 0.1), (2, 0.2), (3, 0.3), (2, 0.25), (3, 0.35), (4, 0.4)]]
    ((_, _, rows),) = member_trials(config, results)
    assert [(r["epoch"], r["knn_top1"]) for r in rows] == [(1, 0.1), (2, 0.25), (3, 0.35), (4, 0.4)]


def test_a_configuration_no_fused_trial_can_run_is_failed_not_spread(tmp_path):
    """A CMC configuration (its loss draws random numbers) cannot be fused: told FAIL with the reason when it would
    open a group, and the group is formed from the next configuration instead (it used to pull the rest of the
    budget into its shape)."""
    import functools

    def space(trial, fixed):
        trial.suggest_categorical("method", ["supcon", "cmc"])
        trial.suggest_float("lr", 0.01, 0.3, log=True)

    fixed = {"dataset": "digits", "epochs": 200}  # CMC's recipe decays its lr at epoch 120
    search = fused_search_class()(
        fuse=2, budget=4, fixed=fixed, experiment_path=str(tmp_path / "fz"),
        space=functools.partial(space, fixed=fixed), metric="knn_top1", mode="max", study_name="fz",
        points_to_evaluate=[{"method": "cmc", "lr": 0.05}, {"method": "supcon", "lr": 0.1}],
        storage=optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'study.db'}"),
        sampler=optuna.samplers.RandomSampler(seed=0))
    group = search.suggest("g1")
    assert [m["method"] for m in group[FUSED]] == ["supcon", "supcon"]
    study = optuna.load_study(study_name="fz", storage=f"sqlite:///{tmp_path / 'study.db'}")
    (failed,) = [t for t in study.trials if t.state == State.FAIL]
    assert failed.params["method"] == "cmc" and "cmc cannot be fused" in failed.user_attrs["csweep_error"]


def test_restore_keeps_the_snapshots_running_set_where_tune_state_is_unreadable(tmp_path):
    """Remote storage: the experiment state cannot be read, so the snapshot's running trials still count. A snapshot
    from before the searcher limited concurrency has none: Tune's limiter, restored with it, keeps limiting."""
    search = _searcher(tmp_path, fuse=2, budget=8)
    search._experiment_path = "s3://bucket/fz"
    assert search.set_max_concurrency(2)
    search.suggest("g1")
    search.suggest("g2")
    search.save(str(tmp_path / "searcher.pkl"))
    resumed = _searcher(tmp_path, fuse=2, budget=8)
    resumed.set_max_concurrency(2)
    resumed.restore(str(tmp_path / "searcher.pkl"))
    assert resumed.suggest("g3") is None  # g1 and g2 still run
    old = resumed.__dict__.copy()
    del old["_running"]
    import pickle

    (tmp_path / "old.pkl").write_bytes(pickle.dumps(old))
    older = _searcher(tmp_path, fuse=2, budget=8)
    older.set_max_concurrency(2)
    older.restore(str(tmp_path / "old.pkl"))
    assert older._max_concurrent == 0 and older.suggest("g4") is not None


def test_member_pruner_of_an_interrupted_sweep_remembers_what_members_passed(tmp_path):
    """Ctrl-C marks the running members FAIL (orphaned); their records still show the rungs they passed, from their
    intermediate values or, with a final-only objective, the epochs the searcher noted (``csweep_epoch``)."""
    url = f"sqlite:///{tmp_path / 'study.db'}"
    study = optuna.create_study(study_name="fz", storage=url, direction="maximize")
    dist = {"lr": optuna.distributions.FloatDistribution(0.01, 1.0)}
    for mid, values, attrs in [("g-0", {1: 0.5, 2: 0.6, 3: 0.6}, {}), ("g-1", {}, {"csweep_epoch": 5})]:
        study.add_trial(optuna.trial.create_trial(
            state=State.FAIL, params={"lr": 0.1}, distributions=dist, intermediate_values=values,
            user_attrs={"tune_trial_id": mid, "fused_group": "g", "csweep_orphaned": True, **attrs}))
    pruner = MemberPruner(scheduler="asha", grace_period=2, reduction_factor=2, max_epochs=8, mode="max",
                          study=("fz", url))
    assert pruner.recorded[2] == {"g-0": 0.6}
    assert pruner.decided == {("g-0", 2): False, ("g-1", 2): False, ("g-1", 4): False}
    assert pruner.decide([("h-0", 2, 0.9), ("g-0", 2, 0.1), ("g-1", 4, 0.0)]) == []
