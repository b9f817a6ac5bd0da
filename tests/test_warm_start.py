"""Warm starts (search/warm_start.py, `csweep run --warm-start`): the K best earlier configurations are enqueued, or
every earlier completed trial is added with its value, into a real SQLite Optuna study; spaces that share no
parameter are refused with exit 2 before Ray starts."""

from __future__ import annotations

from pathlib import Path

import optuna
import pandas as pd
import pytest
from conftest import run_cli

from analysis.columns import write_parquet
from search.cli import main
from search.warm_start import WARM_ATTR, seed_study, space_distributions, warm_start_points
from spaces import load_space

QUICKSTART_FIXED = {"dataset": "digits", "epochs": 3}
#: an earlier quickstart-like sweep: (trial, status, method, lr, temperature, repeat, knn_top1)
EARLIER = [
    ("a0", "completed", "supcon", 0.05, 0.1, 0, 0.80),
    ("a1", "completed", "supcon", 0.05, 0.1, 1, 0.70),  # same configuration, second seed: mean 0.75
    ("b0", "completed", "simclr", 0.10, 0.2, 0, 0.78),
    ("c0", "completed", "ce", 0.02, None, 0, 0.74),
    ("d0", "stopped", "supcon", 0.20, 0.3, 0, 0.99),  # stopped early: its value is not a final one
    ("e0", "completed", "simclr", 0.03, 0.4, 0, 0.60),
    ("f0", "completed", "supcon", 5.00, 0.07, 0, 0.77),  # lr outside the new range: only temperature carried
    ("g0", "errored", "ce", 0.05, None, 0, None),
]


def _earlier(tmp_path: Path) -> Path:
    rows = [{"trial_id": t, "status": s, "method": m, "lr": lr, "temperature": temp, "repeat": r, "knn_top1": v,
             "sampled": "lr,method" + ("" if m == "ce" else ",temperature")}
            for t, s, m, lr, temp, r, v in EARLIER]
    df = pd.DataFrame(rows).astype({"status": "category", "method": "category"})
    out = tmp_path / "tables"
    write_parquet(df, out / "trials" / "sweep=old" / "part-0.parquet")
    return out


def _points(tmp_path: Path):
    earlier = pd.read_parquet(_earlier(tmp_path) / "trials")
    distributions, methods = space_distributions(load_space("quickstart"), QUICKSTART_FIXED)
    points = warm_start_points(earlier, distributions=distributions, methods=methods, source="old",
                               objective=[("knn_top1", "max")])
    return points, distributions


def test_top_k_enqueues_exactly_the_k_best_configurations(tmp_path):
    points, distributions = _points(tmp_path)
    # best first: b0 0.78, f0 0.77 (temperature only), a0/a1 mean 0.75, c0 0.74, e0 0.60; d0 (stopped), g0 left out
    assert [p.values[0] for p in points] == pytest.approx([0.78, 0.77, 0.75, 0.74, 0.60])
    assert points[2].n_trials == 2 and points[1].params == {"method": "supcon", "temperature": 0.07}
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}", study_name="new", direction="maximize")
    assert seed_study(study, points, distributions, top=3, source="old") == 3
    waiting = study.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert [t.system_attrs["fixed_params"] for t in waiting] == [
        {"method": "simclr", "lr": 0.10, "temperature": 0.2},
        {"method": "supcon", "temperature": 0.07},
        {"method": "supcon", "lr": 0.05, "temperature": 0.1},
    ]
    assert all(t.user_attrs[WARM_ATTR] == "old" for t in waiting)
    # the space then runs exactly those settings first (the user's space, as the sweep asks it)
    trial = study.ask()
    load_space("quickstart").space(trial, QUICKSTART_FIXED)
    assert trial.params == {"method": "simclr", "lr": 0.10, "temperature": 0.2}


def test_without_top_every_completed_trial_is_added_with_its_value(tmp_path):
    points, distributions = _points(tmp_path)
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'study.db'}", study_name="new", direction="maximize")
    assert seed_study(study, points, distributions, top=None, source="old") == 5
    done = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert sorted(t.value for t in done) == pytest.approx(sorted([0.78, 0.77, 0.75, 0.74, 0.60]))
    assert study.best_trial.params == {"method": "simclr", "lr": 0.10, "temperature": 0.2}
    # min objectives rank the other way
    earlier = pd.read_parquet(tmp_path / "tables" / "trials")
    points = warm_start_points(earlier, distributions=distributions, methods={"supcon", "simclr", "ce"}, source="old",
                               objective=[("knn_top1", "min")])
    assert points[0].values[0] == pytest.approx(0.60)


def test_spaces_sharing_no_parameter_are_refused_with_exit_2_before_ray(tmp_path, capsys):
    import ray

    tables = _earlier(tmp_path)
    # the sigmoid space samples none of lr/temperature/method under these fixed settings
    code = main(["run", "sigmoid", "--warm-start", str(tables), "--storage-path", str(tmp_path),
                 "--set", "lr=0.1", "--set", "epochs=2"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "`warm_start`" in err and "no parameter in common" in err and len(err.splitlines()) == 1, err
    assert not ray.is_initialized() and not list(tmp_path.glob("*/sweep.json"))
    assert main(["run", "quickstart", "--top", "2", "--storage-path", str(tmp_path)]) == 2
    assert "`top` needs --warm-start" in capsys.readouterr().err


@pytest.mark.slow
def test_warm_started_sweep_runs_the_earlier_best_configuration_first(sweep, tmp_path):
    from analysis.tables import build_tables

    earlier = build_tables(sweep / "abl").trials
    done = earlier[earlier["status"].astype(str) == "completed"]
    best = done.groupby(["method", "lr", "temperature"], dropna=False, observed=True)["knn_top1"].mean().idxmax()
    proc = run_cli("run", "quickstart", "--warm-start", "abl", "--top", "1", "--trials", "1", "--scheduler", "fifo",
                   "--name", "warm", "--storage-path", str(sweep), "--set", "epochs=1", "--set", "probe_epochs=2",
                   "--set", "width=0.125")
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "warm start from abl: the 1 best configuration(s) enqueued" in proc.stderr
    study = optuna.load_study(study_name="warm", storage=f"sqlite:///{sweep / 'warm' / 'study.db'}")
    first = min(study.trials, key=lambda t: t.number)
    assert first.user_attrs[WARM_ATTR] == "abl" and first.state == optuna.trial.TrialState.COMPLETE
    params = first.params
    assert (params["method"], params["lr"], params.get("temperature")) == pytest.approx(best, nan_ok=True)
    # the one trial run; the space's seed recipe, enqueued after the warm point, is left waiting (--trials 1)
    assert [t.state for t in study.trials] == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.WAITING]
