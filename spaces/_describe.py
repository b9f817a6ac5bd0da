"""Describe a define-by-run space by sampling it: each parameter's distribution and the methods it appears under."""

from __future__ import annotations

from typing import Any

__all__ = ["describe_space"]


def _dist(d: Any) -> str:
    import optuna.distributions as od

    if isinstance(d, od.CategoricalDistribution):
        return "categorical [" + ", ".join(map(str, d.choices)) + "]"
    kind = "int" if isinstance(d, od.IntDistribution) else "float"
    return f"{kind} [{d.low:g}, {d.high:g}]" + (" log" if d.log else "")


def describe_space(space, *, samples: int = 200) -> list[str]:
    """Lines ``name  distribution  (method in ...)`` for every parameter, then the space's fixed settings."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    fixed = space.fixed
    seen: dict[str, tuple[Any, set]] = {}
    methods_all: set = set()
    for _ in range(samples):
        trial = study.ask()
        ret = space.space(trial, fixed) or {}
        method = trial.params.get("method", ret.get("method", fixed.get("method")))
        methods_all.add(method)
        for name, dist in trial.distributions.items():
            seen.setdefault(name, (dist, set()))[1].add(method)
        study.tell(trial, 0.0)
    width = max([len(n) for n in seen] or [0])
    lines = []
    for name, (dist, methods) in seen.items():
        cond = "" if methods == methods_all or name == "method" else f"  (method in {', '.join(sorted(methods))})"
        lines.append(f"{name:<{width}}  {_dist(dist)}{cond}")
    if fixed:
        lines.append("fixed: " + ", ".join(f"{k}={v}" for k, v in fixed.items()))
    if space.points_to_evaluate:
        lines.append(f"first point: {space.points_to_evaluate[0]}")
    return lines
