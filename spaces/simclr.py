"""SimCLR: temperature, learning rate, weight decay, warm-up and projection size (SupCon's space, wider tau)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from spaces import supcon

METHOD = "simclr"
DESCRIPTION = "SimCLR: temperature, lr, weight decay, warm-up, projection dim"
#: The SupContrast README's SimCLR recipe: bs 1024, lr 0.5, tau 0.5, cosine.
POINTS_TO_EVALUATE = [{"temperature": 0.5, "lr": 0.5, "weight_decay": 1e-4, "warmup_epochs": 0, "feat_dim": 128}]


#: Settings PBT/PB2 may change mid-run (read afresh each step; weight decay and SGD momentum live in the
#: optimiser's restored state, so they are not listed). See spaces/__init__.py: SpaceModule.perturbable.
PERTURBABLE = ("lr", "temperature")


def params(trial: Any, fixed: Mapping[str, Any]) -> dict[str, Any]:
    return supcon.params(trial, fixed, temperature=(0.05, 1.0))


def space(trial: Any, fixed: Mapping[str, Any]) -> dict[str, Any]:
    params(trial, fixed)
    return {"method": METHOD}
