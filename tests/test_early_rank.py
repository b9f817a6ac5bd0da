"""Early-stopping trust (analysis/early_rank.py): rank correlations of the rung metric per epoch against the final
objective, on a constructed set of trials whose correlations are known by hand and against a naive implementation."""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from analysis.columns import write_parquet
from analysis.early_rank import TRUSTED_SPEARMAN, early_rank, grace_advice
from analysis.schema import EARLY_RANK_COLUMNS
from search.printing import early_rank_report

FINAL = [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]  # final objective of the six completed trials t0..t5
#: rung metric per epoch (trial order t0..t5) and its correlations with FINAL, worked out by hand
EPOCHS = {
    1: ([6, 5, 4, 3, 2, 1], -1.0, -1.0),  # reversed order
    2: ([2, 1, 3, 4, 5, 6], 1 - 6 * 2 / (6 * 35), 13 / 15),  # one adjacent swap: sum d^2 = 2, one discordant pair
    3: ([1, 2, 3, 4, 5, 6], 1.0, 1.0),
    4: ([1, 2, 3, 4, 5, 6], 1.0, 1.0),  # the last epoch (often the objective itself)
}


def _trials_and_epochs(*, ties: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
    trials, epochs = [], []
    for i, final in enumerate(FINAL):
        trials.append({"trial_id": f"t{i}", "status": "completed", "linear_top1": final})
        for epoch, (xs, _, _) in EPOCHS.items():
            x = float(xs[i])
            if ties and epoch == 2:
                x = [1, 1, 2, 2, 2, 3][i]
            epochs.append({"trial_id": f"t{i}", "epoch": epoch, "knn_top1": x})
    # a stopped trial (its early value must not count) and a completed one without the objective
    trials += [{"trial_id": "s0", "status": "stopped", "linear_top1": None},
               {"trial_id": "n0", "status": "completed", "linear_top1": None}]
    epochs += [{"trial_id": "s0", "epoch": 1, "knn_top1": 100.0}, {"trial_id": "n0", "epoch": 1, "knn_top1": -100.0}]
    return (pd.DataFrame(trials).astype({"status": "category"}), pd.DataFrame(epochs))


def _naive_ranks(v: list[float]) -> list[float]:
    return [sum(w < x for w in v) + (sum(w == x for w in v) + 1) / 2 for x in v]


def _naive_spearman(x: list[float], y: list[float]) -> float:
    rx, ry = _naive_ranks(x), _naive_ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    return cov / math.sqrt(sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry))


def _naive_kendall_b(x: list[float], y: list[float]) -> float:
    c = d = tx = ty = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        sx, sy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
        if sx and sy:
            c, d = c + (sx == sy), d + (sx != sy)
        elif sx:
            tx += 1  # tied in y only counts toward x's pairs
        elif sy:
            ty += 1
    return (c - d) / math.sqrt((c + d + tx) * (c + d + ty))


def test_hand_known_correlations_per_epoch_over_completed_trials_only():
    trials, epochs = _trials_and_epochs()
    table = early_rank(trials, epochs, rung=("knn_top1", "max"), objective=("linear_top1", "max"))
    assert table["epoch"].tolist() == [1, 2, 3, 4]
    assert table["n_trials"].tolist() == [6] * 4  # s0 (stopped) and n0 (no objective) left out
    for row in table.itertuples():
        _, rho, tau = EPOCHS[row.epoch]
        assert row.spearman == pytest.approx(rho) and row.kendall == pytest.approx(tau), row
    assert [c for c, _, _ in EARLY_RANK_COLUMNS] == list(table.columns)


def test_min_metrics_are_oriented_so_agreement_is_positive():
    trials, epochs = _trials_and_epochs()
    epochs["train_loss"] = -epochs["knn_top1"]  # a loss that orders trials exactly as knn_top1
    trials["error_rate"] = 1 - trials["linear_top1"]
    table = early_rank(trials, epochs, rung=("train_loss", "min"), objective=("error_rate", "min"))
    assert table["spearman"].tolist() == pytest.approx([rho for _, rho, _ in EPOCHS.values()])


def test_ties_match_a_naive_implementation():
    trials, epochs = _trials_and_epochs(ties=True)
    table = early_rank(trials, epochs, rung=("knn_top1", "max"), objective=("linear_top1", "max")).set_index("epoch")
    x = [1, 1, 2, 2, 2, 3]
    assert table.loc[2, "spearman"] == pytest.approx(_naive_spearman(x, FINAL))
    assert table.loc[2, "kendall"] == pytest.approx(_naive_kendall_b(x, FINAL))
    # a random case with ties on both sides, against the same naive code
    rng = np.random.default_rng(0)
    xs, ys = rng.integers(0, 4, 12).tolist(), rng.integers(0, 5, 12).tolist()
    t = pd.DataFrame({"trial_id": [f"r{i}" for i in range(12)], "status": "completed", "linear_top1": ys})
    e = pd.DataFrame({"trial_id": t["trial_id"], "epoch": 1, "knn_top1": xs})
    row = early_rank(t, e, rung=("knn_top1", "max"), objective=("linear_top1", "max")).iloc[0]
    assert row.spearman == pytest.approx(_naive_spearman(xs, ys))
    assert row.kendall == pytest.approx(_naive_kendall_b(xs, ys))


def test_too_few_or_constant_values_give_null_correlations():
    t = pd.DataFrame({"trial_id": ["a", "b", "c"], "status": "completed", "linear_top1": [0.1, 0.2, 0.3]})
    e = pd.DataFrame({"trial_id": ["a", "b", "a", "b", "c"], "epoch": [1, 1, 2, 2, 2], "knn_top1": [1, 2, 5, 5, 5]})
    table = early_rank(t, e, rung=("knn_top1", "max"), objective=("linear_top1", "max"))
    assert table["n_trials"].tolist() == [2, 3]
    assert table["spearman"].isna().all() and table["kendall"].isna().all()
    empty = early_rank(t.iloc[:0], e.iloc[:0], rung=("knn_top1", "max"), objective=("linear_top1", "max"))
    assert len(empty) == 0 and list(empty.columns) == [c for c, _, _ in EARLY_RANK_COLUMNS]


def test_grace_advice_warns_below_the_safe_grace_period_and_status_prints_it(tmp_path):
    trials, epochs = _trials_and_epochs()
    table = early_rank(trials, epochs, rung=("knn_top1", "max"), objective=("linear_top1", "max"))
    advice = grace_advice(table, 1, last_epoch=4)
    assert advice.spearman == pytest.approx(-1.0) and advice.n_trials == 6
    assert advice.safe_grace_period == 2  # epochs 2 and 3 both rank with Spearman >= TRUSTED_SPEARMAN
    assert EPOCHS[2][1] >= TRUSTED_SPEARMAN > EPOCHS[1][1]
    assert "predict the final one poorly" in advice.warning and "would be 2 epoch(s)" in advice.warning
    assert grace_advice(table, 2, last_epoch=4).warning is None
    assert "too few" in grace_advice(table.assign(n_trials=4), 2, last_epoch=4).warning
    cfg = SimpleNamespace(scheduler="asha", resolved_grace_period=1, epochs=4)
    text = early_rank_report(table, cfg)
    assert "knn_top1 at each epoch vs final linear_top1" in text and "warning: early rankings" in text
    assert text.splitlines()[2].split() == ["1", "6", "-1", "-1"]  # epoch 1's row
    # written as Parquet with the documented types and read back
    write_parquet(table, tmp_path / "early_rank.parquet", EARLY_RANK_COLUMNS)
    back = pd.read_parquet(tmp_path / "early_rank.parquet")
    pd.testing.assert_frame_equal(back, table, check_dtype=False)
