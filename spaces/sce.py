"""SCE: temperatures tau and tau_m, coeff lambda, the key encoder's initial momentum, queue size, lr."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from spaces._util import Params

__all__ = ["DESCRIPTION", "METHOD", "POINTS_TO_EVALUATE", "params", "space"]

METHOD = "sce"
DESCRIPTION = "SCE: temperature, temperature_m, coeff, initial key momentum, queue size, lr"
#: The seed's CIFAR-10 ResNet-18 recipe (eztorch): tau 0.1, tau_m 0.05, lambda 0.5, momentum 0.99 -> 1 (cosine),
#: queue 4096, SGD lr 0.06. Its other TrainConfig values (wd 5e-4, 5 warm-up epochs, batch 256) are the recipe.
POINTS_TO_EVALUATE = [{"temperature": 0.1, "temperature_m": 0.05, "coeff": 0.5, "initial_momentum": 0.99,
                       "queue_size": 4096, "lr": 0.06}]
#: Multiples of every power-of-two batch up to 1024 (and of twice it, the keys a symmetric step enqueues).
QUEUE_SIZES = [2048, 4096, 8192, 16384]


#: Settings PBT/PB2 may change mid-run (read afresh each step; weight decay and SGD momentum live in the
#: optimiser's restored state, so they are not listed). See spaces/__init__.py: SpaceModule.perturbable.
PERTURBABLE = ("lr", "temperature", "temperature_m", "coeff", "initial_momentum")


def params(trial: Any, fixed: Mapping[str, Any]) -> dict[str, Any]:
    """SCE's own parameters (the queue must stay a multiple of the batch and below the dataset size: pass a smaller
    ``--set queue_size`` on small datasets)."""
    p = Params(trial, fixed)
    p.float("temperature", 0.05, 0.3, log=True)
    p.float("temperature_m", 0.02, 0.2, log=True)
    p.float("coeff", 0.0, 1.0)
    p.float("initial_momentum", 0.9, 0.999)
    p.choice("queue_size", QUEUE_SIZES)
    p.float("lr", 0.01, 0.5, log=True)
    return {}


def space(trial: Any, fixed: Mapping[str, Any]) -> dict[str, Any]:
    params(trial, fixed)
    return {"method": METHOD}
