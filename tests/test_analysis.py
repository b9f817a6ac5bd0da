"""analysis: Parquet tables from a real small sweep on digits, their documented schema, combining sweeps, ablations."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import ROOT, run_cli

import analysis
from analysis.schema import EPOCH_COLUMNS, LEADERBOARD_COLUMNS, TRIAL_COLUMNS, markdown


def _reported(exp: Path) -> dict[str, list[dict]]:
    out = {}
    for d in exp.glob("trial_driver_*"):
        rows = [json.loads(x) for x in (d / "result.json").read_text().splitlines() if x.strip()]
        out[rows[-1]["trial_id"]] = rows
    return out


@pytest.mark.slow
def test_tables_of_a_real_sweep(sweep, tmp_path):
    out = tmp_path / "tables"
    proc = run_cli("tables", "abl", "--storage-path", str(sweep), "--out", str(out), "--plots")
    assert proc.returncode == 0, proc.stderr[-3000:]
    reported = _reported(sweep / "abl")

    trials_file = out / "trials" / "sweep=abl" / "part-0.parquet"
    schema = pq.read_schema(trials_file)
    for name, arrow_type, _ in TRIAL_COLUMNS:  # every documented column, with its documented type
        assert name in schema.names, name
        assert schema.field(name).type == arrow_type, (name, schema.field(name).type, arrow_type)
    # setting columns are typed from the dataclass annotations
    assert str(schema.field("lr").type) == "double" and str(schema.field("batch_size").type) == "int64"
    assert str(schema.field("lr_decay_epochs").type) == "string" and str(schema.field("sync_bn").type) == "bool"
    assert pa.types.is_dictionary(schema.field("optimizer").type)

    tables = analysis.load(out)
    trials, epochs = tables.trials, tables.epochs
    assert len(trials) == len(reported) == 4
    assert set(trials["status"].astype(str)) == {"completed"}
    assert (trials["sweep"].astype(str) == "abl").all()
    for _, row in trials.iterrows():
        last = reported[row["trial_id"]][-1]
        assert row["knn_top1"] == pytest.approx(last["knn_top1"])
        assert row["linear_top1"] == pytest.approx(last["linear_top1"])
        assert row["epochs_run"] == last["epoch"] == 3
        assert row["best_knn_top1"] == pytest.approx(max(r["knn_top1"] for r in reported[row["trial_id"]]))
    assert sorted(trials["seed"].tolist()) == [0, 0, 1, 1]  # --repeats: base seed + repeat index
    assert trials["optuna_trial"].notna().all() and trials["optuna_trial"].nunique() == 2
    assert len(epochs) == sum(len(r) for r in reported.values())

    board = tables.leaderboard
    for name, _, _ in LEADERBOARD_COLUMNS:
        assert name in board.columns, name
    best = board.sort_values("best_value", ascending=False).iloc[0]
    assert best["best_seeds"] == 2
    values = trials.loc[trials["lr"] == json.loads(best["best_config"])["lr"], "knn_top1"].to_numpy()
    assert best["best_value"] == pytest.approx(values.mean())
    assert best["best_std"] == pytest.approx(values.std(ddof=1))
    assert best["best_ci95_low"] <= best["best_value"] <= best["best_ci95_high"]
    assert board["device_hours"].sum() > 0
    assert (out / "plots" / "abl_learning_curves.png").stat().st_size > 1000
    ranks = tables.early_rank  # every completed trial at each of the 3 epochs; the last epoch is the objective itself
    assert ranks["epoch"].tolist() == [1, 2, 3] and ranks["n_trials"].tolist() == [4, 4, 4]
    assert ranks["spearman"].iloc[-1] == pytest.approx(1.0) and ranks["kendall"].iloc[-1] == pytest.approx(1.0)


@pytest.mark.slow
def test_two_sweeps_combine_and_duckdb_reads_them(sweep, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(sweep / "abl", other)
    cfg = json.loads((other / "sweep.json").read_text())
    cfg.update(name="other", storage_path=str(tmp_path))
    (other / "sweep.json").write_text(json.dumps(cfg))
    out = tmp_path / "tables"
    assert run_cli("tables", str(sweep / "abl"), str(other), "--out", str(out)).returncode == 0
    trials = pd.read_parquet(out / "trials")
    assert trials.groupby("sweep", observed=True).size().to_dict() == {"abl": 4, "other": 4}
    duckdb = pytest.importorskip("duckdb")
    n = duckdb.sql(f"select count(*) from read_parquet('{out}/epochs/*/*.parquet', hive_partitioning=1) "
                   "where sweep = 'other'").fetchall()[0][0]
    assert n == len(pd.read_parquet(out / "epochs" / "sweep=other"))


def test_ablation_pivot_on_a_hand_made_frame():
    df = pd.DataFrame({
        "selfcon_pos": ["[false, true, false]"] * 4 + ["[true, true, false]"] * 2,
        "selfcon_size": ["fc", "fc", "same", "same", "fc", "fc"],
        "linear_top1": [0.80, 0.82, 0.90, np.nan, 0.70, 0.74],
        "status": ["completed"] * 5 + ["stopped"],
    })
    pivot = analysis.ablation(df, rows="selfcon_pos", cols="selfcon_size", metric="linear_top1")
    assert pivot[("mean", "fc")]["[false, true, false]"] == pytest.approx(0.81)
    assert pivot[("std", "fc")]["[false, true, false]"] == pytest.approx(np.std([0.80, 0.82], ddof=1))
    assert pivot[("n", "same")]["[false, true, false]"] == 1
    assert pivot[("mean", "fc")]["[true, true, false]"] == pytest.approx(0.70)  # the stopped trial is left out
    text = analysis.format_ablation(pivot)
    assert text.loc["[false, true, false]", "fc"] == "0.8100 ± 0.0141 (2)"
    with pytest.raises(KeyError, match="gamma"):
        analysis.ablation(df, rows="gamma", cols="selfcon_size", metric="linear_top1")


def test_schema_is_documented():
    text = (ROOT / "ARCHITECTURE.md").read_text()
    assert markdown() in text, "regenerate ARCHITECTURE.md's schema with `python -m analysis.schema`"
    assert {c for c, _, _ in EPOCH_COLUMNS} >= {"trial_id", "epoch", "knn_top1", "train_loss"}
