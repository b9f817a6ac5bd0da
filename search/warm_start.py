"""Warm starts: seed a new sweep's Optuna study with what earlier sweeps' tables already know.

``csweep run SPACE --warm-start PATH_OR_SWEEP [--top K]``:

- with ``--top K`` the K best distinct configurations of the earlier completed trials (mean over seeds, ranked by
  the new sweep's first objective) are *enqueued*: they are the new sweep's first trials and count against
  ``--trials``;
- without it every earlier completed trial is *added* to the study as a finished trial with its value(s): the
  sampler (TPE, GP, ...) learns from them and no budget is spent re-running them.

Only the parameters the earlier sweeps sampled *and* the new space samples are carried over (``method`` too, when
the new space samples it), and only values inside the new space's ranges; a configuration's other parameters are
sampled as usual. Spaces that share no parameter are refused before anything runs. Ray-free.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from search.spec import COMPLETED
from trainables.config import ConfigError

__all__ = ["WarmPoint", "seed_study", "space_distributions", "warm_start_points"]

#: user attribute of every study trial a warm start created (value: where it came from)
WARM_ATTR = "csweep_warm_start"


@dataclass(frozen=True)
class WarmPoint:
    """One earlier configuration: its shared parameters, its objective value(s) (mean over seeds) and seed count."""

    params: dict[str, Any]
    values: tuple[float, ...]
    n_trials: int


def space_distributions(space, fixed: Mapping[str, Any], *, seed: int = 0, samples: int = 32) -> tuple[dict, set]:
    """The Optuna distributions of every parameter ``space`` samples (conditional ones included, as far as
    ``samples`` random draws reach them) and the methods its trials run."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    distributions: dict[str, Any] = {}
    methods: set[str] = set()
    for _ in range(samples):
        trial = study.ask()
        returned = space.space(trial, fixed) or {}
        distributions.update(trial.distributions)
        method = trial.params.get("method", returned.get("method", fixed.get("method")))
        if method is not None:
            methods.add(str(method))
        study.tell(trial, 0.0)
    return distributions, methods


def _contains(distribution, value: Any) -> bool:
    import optuna.distributions as d

    if isinstance(distribution, d.CategoricalDistribution):
        return any(value == c and type(value) is type(c) for c in distribution.choices)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if isinstance(distribution, d.IntDistribution) and float(value) != int(value):
        return False
    return distribution.low <= value <= distribution.high


def _plain(value: Any) -> Any:
    """A Parquet cell as the Python value a space suggests (numpy scalars unwrapped, NA as None)."""
    if value is None or value is pd.NA or (isinstance(value, float) and value != value):
        return None
    return value.item() if hasattr(value, "item") else value


def warm_start_points(
    earlier: pd.DataFrame,
    *,
    distributions: Mapping[str, Any],
    methods: set[str],
    objective: Sequence[tuple[str, str]],
    source: str,
) -> list[WarmPoint]:
    """The earlier completed trials as configurations of the new space, best first (by the first objective).
    ConfigError naming ``warm_start`` when nothing can be carried over."""
    if earlier.empty or "sampled" not in earlier:
        raise ConfigError(f"`warm_start` {source!r}: no trials table with a `sampled` column there")
    sampled = {c for s in earlier["sampled"].dropna() for c in str(s).split(",") if c}
    shared = sorted((sampled & set(distributions)) - {"method"})
    if not shared:
        raise ConfigError(
            f"`warm_start` {source!r}: the earlier sweeps sampled {', '.join(sorted(sampled)) or 'nothing'} and this "
            f"space samples {', '.join(sorted(distributions)) or 'nothing'}: no parameter in common to start from"
        )
    metrics = [m for m, _ in objective]
    missing = [m for m in metrics if m not in earlier]
    if missing:
        raise ConfigError(f"`warm_start` {source!r}: the earlier trials have no column {missing[0]!r} (this sweep's "
                          f"objective); objectives must be columns of trials.parquet")
    rows = earlier[earlier["status"].astype(str) == COMPLETED].dropna(subset=metrics)
    if "method" in earlier and methods:
        rows = rows[rows["method"].astype(str).isin(methods)]
    keys = (["method"] if "method" in distributions and "method" in rows else []) + shared
    by_config: dict[tuple, list] = {}
    for _, row in rows.iterrows():
        params = {}
        for k in keys:
            value = _plain(row[k])
            if value is not None and _contains(distributions[k], value):
                params[k] = value
        if not set(params) - {"method"}:
            continue  # nothing inside the new space's ranges
        by_config.setdefault(tuple(sorted(params.items(), key=lambda kv: kv[0])), []).append(
            tuple(float(row[m]) for m in metrics))
    if not by_config:
        raise ConfigError(f"`warm_start` {source!r}: no completed trial of method(s) {', '.join(sorted(methods))} "
                          f"with {', '.join(shared)} inside this space's ranges")
    points = [WarmPoint(dict(k), tuple(sum(v[i] for v in vs) / len(vs) for i in range(len(metrics))), len(vs))
              for k, vs in by_config.items()]
    sign = 1.0 if objective[0][1] == "max" else -1.0
    return sorted(points, key=lambda p: -sign * p.values[0])  # stable: ties keep the tables' order


def seed_study(study, points: Sequence[WarmPoint], distributions: Mapping[str, Any], *, top: int | None,
               source: str) -> int:
    """Enqueue the ``top`` best ``points`` (they run first) or, with ``top=None``, add all of them as finished trials
    with their values. Each carries the user attribute ``csweep_warm_start`` = ``source``. Returns how many."""
    import optuna

    if top is not None:
        for p in points[:top]:
            study.enqueue_trial(p.params, user_attrs={WARM_ATTR: source}, skip_if_exists=False)
        return min(top, len(points))
    for p in points:
        study.add_trial(optuna.trial.create_trial(
            params=p.params,
            distributions={k: distributions[k] for k in p.params},
            values=list(p.values),
            user_attrs={WARM_ATTR: source, "csweep_warm_start_trials": p.n_trials},
        ))
    return len(points)
