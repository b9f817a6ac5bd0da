"""SupCon: temperature, learning rate, weight decay, warm-up and projection size."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from spaces._util import Params

METHOD = "supcon"
DESCRIPTION = "SupCon: temperature, lr, weight decay, warm-up, projection dim"
#: The SupContrast README recipe (CIFAR, ResNet-50): bs 1024, lr 0.5, tau 0.1, cosine, 1000 epochs.
POINTS_TO_EVALUATE = [{"temperature": 0.1, "lr": 0.5, "weight_decay": 1e-4, "warmup_epochs": 0, "feat_dim": 128}]


#: Settings PBT/PB2 may change mid-run (read afresh each step; weight decay and SGD momentum live in the
#: optimiser's restored state, so they are not listed). See spaces/__init__.py: SpaceModule.perturbable.
PERTURBABLE = ("lr", "temperature")


def params(trial: Any, fixed: Mapping[str, Any], *, temperature: tuple[float, float] = (0.05, 0.5)) -> dict[str, Any]:
    """SupCon's own parameters plus the shared optimisation knobs (SimCLR's space reuses them with its own
    temperature range)."""
    p = Params(trial, fixed)
    p.float("temperature", *temperature, log=True)
    p.float("lr", 0.01, 1.0, log=True)
    p.float("weight_decay", 1e-5, 1e-3, log=True)
    p.warmup()
    p.choice("feat_dim", [64, 128, 256])
    return {}


def space(trial: Any, fixed: Mapping[str, Any]) -> dict[str, Any]:
    params(trial, fixed)
    return {"method": METHOD}
