"""Cross-entropy baseline: learning rate, weight decay, warm-up and label smoothing."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from spaces._util import Params

METHOD = "ce"
DESCRIPTION = "Cross-entropy baseline: lr, weight decay, warm-up, label smoothing"
#: The SupContrast README's cross-entropy recipe: bs 1024, lr 0.8, cosine.
POINTS_TO_EVALUATE = [{"lr": 0.8, "weight_decay": 1e-4, "warmup_epochs": 0, "label_smoothing": 0.0}]


#: Settings PBT/PB2 may change mid-run (read afresh each step; weight decay and SGD momentum live in the
#: optimiser's restored state, so they are not listed). See spaces/__init__.py: SpaceModule.perturbable.
PERTURBABLE = ("lr", "label_smoothing")


def params(trial: Any, fixed: Mapping[str, Any]) -> dict[str, Any]:
    p = Params(trial, fixed)
    p.float("lr", 0.01, 1.0, log=True)
    p.float("weight_decay", 1e-5, 1e-3, log=True)
    p.warmup()
    p.float("label_smoothing", 0.0, 0.2)
    return {}


def space(trial: Any, fixed: Mapping[str, Any]) -> dict[str, Any]:
    params(trial, fixed)
    return {"method": METHOD}
