"""csweep report: a self-contained HTML page from synthetic tables (fast) and from a real sweep (slow), checked for
external references, embedded figures and valid YAML, and rendered by a headless chromium when one is installed."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import run_cli

import analysis
from analysis.report import rank_trials, train_command, write_report
from analysis.tables import SweepTables
from search.cli import main

CHROMIUM = shutil.which("chromium") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
IMG = re.compile(r"<img [^>]*src='data:image/png;base64,([A-Za-z0-9+/=]+)'")


def synthetic_sweep(name: str = "syn", *, trials: int = 24, epochs: int = 6, multi: bool = False,
                    seed: int = 0) -> SweepTables:
    """Tables in the documented schema for a sweep over two methods (lr, temperature sampled; 2 seeds per
    configuration), ASHA-like: a third of the trials stopped at the first epochs, one errored."""
    rng = np.random.default_rng(seed)
    n_cfg = max(1, trials // 2)
    lr = np.exp(rng.uniform(np.log(1e-3), np.log(1.0), n_cfg))
    temp = rng.uniform(0.05, 0.5, n_cfg)
    rows, epoch_rows = [], []
    start = pd.Timestamp("2026-11-01", tz="UTC")
    for i in range(trials):
        c = i // 2
        method = "supcon" if c % 2 else "simclr"
        status = "errored" if i == 3 else ("stopped" if i % 3 == 1 else "completed")
        run = 1 if status == "errored" else (rng.integers(1, max(2, epochs // 2)) if status == "stopped" else epochs)
        quality = 0.9 - 0.1 * abs(np.log10(lr[c]) + 1) - 0.3 * abs(temp[c] - 0.15)
        curve = quality * (1 - np.exp(-np.arange(1, run + 1) / 2)) + rng.normal(0, 0.01, run)
        tid = f"{name[:3]}{i:05d}"
        t0 = start + pd.Timedelta(seconds=30 * i)
        for e in range(run):
            epoch_rows.append({"trial_id": tid, "method": method, "epoch": e + 1, "knn_top1": curve[e],
                               "train_loss": 5 - 3 * curve[e], "epoch_time_s": 1.0 + 0.1 * (c % 3)})
        rows.append({"trial_id": tid, "optuna_trial": c, "status": status, "method": method, "dataset": "digits",
                     "seed": i % 2, "repeat": i % 2, "sampled": "lr,method,temperature", "lr": lr[c],
                     "temperature": temp[c], "epochs_run": run, "knn_top1": curve[-1],
                     "best_knn_top1": curve.max(), "linear_top1": curve[-1] + 0.05 if status == "completed" else None,
                     "mean_epoch_time_s": 1.0 + 0.1 * (c % 3), "wall_s": 2.0 * run, "device_s": 2.0 * run,
                     "start_time": t0, "end_time": t0 + pd.Timedelta(seconds=2 * run)})
    tr = pd.DataFrame(rows).astype({"method": "category", "status": "category"})
    ep = pd.DataFrame(epoch_rows).astype({"method": "category"})
    board = pd.DataFrame([{"dataset": "digits", "method": m, "metric": "knn_top1", "mode": "max",
                           "best_value": g["knn_top1"].max(), "n_trials": len(g),
                           "n_completed": int((g["status"] == "completed").sum()),
                           "device_hours": g["device_s"].sum() / 3600} for m, g in tr.groupby("method", observed=True)])
    imp = pd.DataFrame({"method": ["simclr", "simclr", "supcon", "supcon"], "param": ["lr", "temperature"] * 2,
                        "importance": [0.7, 0.3, 0.4, 0.6]})
    objective = [("knn_top1", "max")]
    pareto = pd.DataFrame({"optuna_trial": pd.Series([], dtype="Int64")})
    if multi:
        objective.append(("epoch_time_s", "min"))
        done = tr[tr["status"] == "completed"]
        pareto = pd.DataFrame({"optuna_trial": done["optuna_trial"].head(3).astype("Int64"),
                               "knn_top1": done["knn_top1"].head(3), "epoch_time_s": [0.9, 1.0, 1.1][:min(3, len(done))]})
    return SweepTables(sweep=name, trials=tr, epochs=ep, leaderboard=board, importances=imp, pareto=pareto,
                       fixed={"dataset": "digits", "epochs": epochs, "width": 0.125}, objective=objective)


def _check_page(out: Path) -> str:
    page = (out / "report.html").read_text()
    assert not re.search(r"https?://", page), "the report must not refer to any URL"
    images = IMG.findall(page)
    assert len(images) == page.count("<img ") and images
    for data in images:
        assert base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n"
    pngs = [p for p in out.glob("*.png") if p.name != "screenshot.png"]
    assert len(pngs) == len(images), (sorted(p.name for p in pngs), len(images))
    best = yaml.safe_load((out / "best_config.yaml").read_text())
    assert best["method"] in {"simclr", "supcon", "ce"} and best["command"].startswith(f"csweep train {best['method']}")
    assert isinstance(best["settings"], dict) and best["settings"]
    return page


@pytest.fixture(scope="module")
def synthetic_report(tmp_path_factory) -> Path:
    """A report of two synthetic sweeps (the second multi-objective), written once for this module."""
    out = tmp_path_factory.mktemp("report")
    assert write_report([synthetic_sweep("alpha"), synthetic_sweep("beta", multi=True, seed=1)], out) == \
        out / "report.html"
    return out


def test_report_from_synthetic_tables(synthetic_report):
    tmp_path = synthetic_report
    page = _check_page(tmp_path)
    for stem in ("learning_curves", "best_so_far", "parallel_coordinates", "importances", "slices", "methods"):
        assert (tmp_path / f"alpha_{stem}.png").is_file() and f"alpha_{stem}" in page
    assert (tmp_path / "beta_pareto.png").is_file() and not (tmp_path / "alpha_pareto.png").exists()
    assert list(tmp_path.glob("alpha_ablation_*.png")) and (tmp_path / "sweeps_methods.png").is_file()
    assert "Sweeps side by side" in page and "csweep train simclr --set dataset=digits" in page
    for name in ("alpha", "beta"):
        yaml.safe_load((tmp_path / f"best_config_{name}.yaml").read_text())


def test_ties_rank_completed_first_and_commands_rerun_a_trial():
    t = synthetic_sweep(trials=4)
    tr = t.trials.copy()
    tr["knn_top1"] = 0.5
    tr["status"] = pd.Categorical(["stopped", "completed", "stopped", "completed"])
    ranked = rank_trials(tr, metric="knn_top1")
    assert list(ranked["status"].astype(str)[:2]) == ["completed", "completed"]
    cmd = train_command(tr.iloc[1], {"dataset": "digits", "data_dir": "/x", "method": "supcon"})
    assert cmd.startswith("csweep train ") and "--set lr=" in cmd and "data_dir" not in cmd and "seed=1" in cmd


def test_ablation_bins_floats_with_readable_labels():
    t = synthetic_sweep(trials=40)
    binned = analysis.bin_setting(t.trials["lr"], bins=4)
    assert len(binned.cat.categories) <= 4 and binned.notna().all()
    assert all(re.fullmatch(r"[0-9.e+-]+-[0-9.e+-]+", c) for c in binned.cat.categories)
    pivot = analysis.ablation(t.trials, rows="temperature", cols="lr", metric="knn_top1", bins=3, statuses=None)
    assert pivot["mean"].shape[1] <= 3 and pivot["mean"].shape[0] <= 3
    assert pivot["n"].fillna(0).to_numpy().sum() == t.trials["knn_top1"].notna().sum()


def test_unknown_sweep_lists_the_sweeps_found(tmp_path, capsys):
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "sweep.json").write_text("{}")
    assert main(["report", "nope", "--storage-path", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "`name`" in err and "'nope'" in err and "one" in err and err.count("\n") == 1
    assert main(["ls", "--storage-path", str(tmp_path)]) == 0
    assert "one" in capsys.readouterr().out


def _screenshot(page: Path, out: Path, tmp: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp / 'profile'}",
         f"--screenshot={out}", "--window-size=1400,4000", page.as_uri()],
        capture_output=True, text=True, timeout=120)


def _non_white(png: Path) -> float:
    """Fraction of non-white pixels down to the last non-white row (the page may be shorter than the window)."""
    from PIL import Image

    ink = np.asarray(Image.open(png).convert("L")) < 245
    rows = np.flatnonzero(ink.any(axis=1))
    return float(ink[: rows[-1] + 1].mean()) if len(rows) else 0.0


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium) ")
def test_report_renders_in_headless_chromium(synthetic_report, tmp_path):
    out = synthetic_report
    shot = tmp_path / "screenshot.png"
    proc = _screenshot(out / "report.html", shot, tmp_path)
    assert shot.is_file(), proc.stderr[-2000:]
    assert _non_white(shot) > 0.06  # figures and tables, not a blank page or broken-image icons
    dom = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                          f"--user-data-dir={tmp_path / 'profile2'}", "--dump-dom", (out / "report.html").as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    assert dom.count("<img") == (out / "report.html").read_text().count("<img ")


@pytest.mark.slow
def test_report_of_a_real_sweep(sweep, tmp_path):
    out = tmp_path / "report"
    proc = run_cli("report", "abl", "--storage-path", str(sweep), "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-3000:]
    page = _check_page(out)
    assert "abl_learning_curves" in page and "csweep train" in page
    if CHROMIUM:
        shot = out / "screenshot.png"
        _screenshot(out / "report.html", shot, tmp_path)
        assert _non_white(shot) > 0.04


class _Trial:
    def __init__(self, trial_id, config, status="RUNNING", last_result=None):
        self.trial_id, self.config, self.status, self.last_result = trial_id, config, status, last_result or {}


def test_progress_line_counts_trials_eta_and_best():
    import io

    from search.progress import ProgressTable

    now = [0.0]
    stream = io.StringIO()
    table = ProgressTable(stream=stream, total=4, metric="knn_top1", clock=lambda: now[0])
    a, b = _Trial("aaaa", {"method": "supcon", "lr": 0.1}), _Trial("bbbb", {"method": "simclr", "lr": 0.2})
    table.on_trial_start(0, [], a)
    table.on_trial_result(0, [], a, {"epoch": 1, "knn_top1": 0.5})
    table.on_trial_result(0, [], b, {"epoch": 1, "knn_top1": 0.7})
    now[0] = 120.0
    a.last_result = {"epoch": 4, "knn_top1": 0.6, "finished": True}
    table.on_trial_complete(0, [], a)
    line = table.headline()
    assert "elapsed 2m00s" in line and "1/4 trials done (1 running)" in line and "ETA 6m00s" in line
    assert "best knn_top1 (max) 0.7 (trial bbbb)" in line and line in stream.getvalue()


def test_next_steps_name_the_experiment_directory(tmp_path):
    from search.printing import leaderboard_rows, next_steps
    from search.spec import SweepConfig

    cfg = SweepConfig(name="qs", space="quickstart", storage_path=str(tmp_path), fixed={}, trials=2)
    text = next_steps(cfg)
    assert f"csweep report qs --storage-path {tmp_path}" in text and "csweep tables qs" in text
    assert f"tensorboard --logdir {tmp_path}/qs" in text and "/tmp/ray/session" not in text
    rows = leaderboard_rows([{"trial": "s", "status": "stopped", "knn_top1": 0.5, "epoch": 1},
                             {"trial": "c", "status": "completed", "knn_top1": 0.5, "epoch": 4}], "knn_top1", "max")
    assert [r["trial"] for r in rows] == ["c", "s"]
