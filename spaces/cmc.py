"""CMC: NCE negatives, temperature, memory-bank momentum, NCE or softmax loss, lr."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from spaces._util import Params

__all__ = ["DESCRIPTION", "METHOD", "POINTS_TO_EVALUATE", "TRAIN_IMAGES", "params", "space"]

METHOD = "cmc"
DESCRIPTION = "CMC: nce_k, nce_t, nce_m, NCE or softmax loss, lr"
#: The reference's train_CMC.py defaults: 16384 negatives, T 0.07, bank momentum 0.5, NCE, SGD lr 0.03 (its step
#: schedule, batch 128 and weight decay are the method's recipe, so they are not sampled).
#: On digits (1197 training images) this point is refused before launch: fix ``--set nce_k=1024`` there.
POINTS_TO_EVALUATE = [{"nce_k": 16384, "nce_t": 0.07, "nce_m": 0.5, "softmax": False, "lr": 0.03}]
#: Training images of the named datasets whose size is small enough to cap ``nce_k`` (which must stay below it).
TRAIN_IMAGES = {"digits": 1197, "cifar10": 50000, "cifar100": 50000}


#: Settings PBT/PB2 may change mid-run (read afresh each step; weight decay and SGD momentum live in the
#: optimiser's restored state, so they are not listed). See spaces/__init__.py: SpaceModule.perturbable.
PERTURBABLE = ("lr", "nce_m")  # not nce_t: the NCE constant Z, fixed from the first batch, depends on it


def params(trial: Any, fixed: Mapping[str, Any]) -> dict[str, Any]:
    """CMC's own parameters; ``nce_k`` below the training set of the fixed dataset (default digits), up to 16384."""
    p = Params(trial, fixed)
    p.int("nce_k", 256, min(16384, TRAIN_IMAGES.get(str(fixed.get("dataset", "digits")), 16385) - 1), log=True)
    p.float("nce_t", 0.03, 0.3, log=True)
    p.float("nce_m", 0.0, 0.9)
    p.choice("softmax", [False, True])
    p.float("lr", 0.003, 0.3, log=True)
    return {}


def space(trial: Any, fixed: Mapping[str, Any]) -> dict[str, Any]:
    params(trial, fixed)
    return {"method": METHOD}
