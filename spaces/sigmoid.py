"""Sigmoid contrastive on ReLIC: confidence penalty gamma and its schedule, KL weight alpha, EMA beta, lr, local views."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from spaces._util import Params

__all__ = ["DESCRIPTION", "METHOD", "POINTS_TO_EVALUATE", "params", "space"]

METHOD = "sigmoid"
DESCRIPTION = "Sigmoid-ReLIC: gamma, gamma schedule (on/off, steps, shape), alpha, EMA beta, lr, local views"
#: The seed's STL-10 recipe (ResNet-50, 100 epochs, 86.06 % logistic regression): gamma 1.0 decayed to 0 by a cosine
#: over 20000 steps, beta 0.99, alpha 1.0 (its default), Adam lr 3e-4, 4 local views. Adam, weight decay 1e-5, no lr
#: schedule and 2 global views are the method's recipe and defaults, so they are not sampled.
POINTS_TO_EVALUATE = [{"gamma": 1.0, "use_gamma_scaling": True, "gamma_scaling_steps": 20000,
                       "gamma_schedule": "cosine", "alpha": 1.0, "beta": 0.99, "lr": 3e-4, "num_local_views": 4}]


#: Settings PBT/PB2 may change mid-run (read afresh each step; weight decay and SGD momentum live in the
#: optimiser's restored state, so they are not listed). See spaces/__init__.py: SpaceModule.perturbable.
PERTURBABLE = ("lr", "gamma", "alpha", "beta")


def params(trial: Any, fixed: Mapping[str, Any]) -> dict[str, Any]:
    """The sigmoid method's own parameters; the schedule's length and shape only when the schedule is on."""
    p = Params(trial, fixed)
    p.float("gamma", 0.0, 3.0)
    if p.choice("use_gamma_scaling", [False, True]):
        p.int("gamma_scaling_steps", 500, 50000, log=True)
        p.choice("gamma_schedule", ["cosine", "linear", "constant"])
    p.float("alpha", 0.0, 2.0)
    p.float("beta", 0.9, 0.999)
    p.float("lr", 1e-4, 3e-3, log=True)
    # A target global view needs an online view of another index: no local views only with >= 2 global views.
    p.int("num_local_views", 0 if int(fixed.get("num_global_views", 2)) >= 2 else 1, 6)
    return {}


def space(trial: Any, fixed: Mapping[str, Any]) -> dict[str, Any]:
    params(trial, fixed)
    return {"method": METHOD}
