"""The README's main job: SupCon vs SimCLR vs cross-entropy on the embedded digits, tiny ResNet-18, in minutes on CPU.

Samples the method, its learning rate and (for the contrastive methods) the temperature; everything else is fixed
to values that train a width-0.25 ResNet-18 on 16 px digits in about ten seconds per trial on one CPU core.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from spaces._util import Params

DESCRIPTION = "digits, tiny ResNet-18: method x lr x temperature (the README's main job)"

#: Settings this space fixes for every trial (a user's --set still wins).
FIXED = {"dataset": "digits", "backbone": "resnet18", "width": 0.25, "batch_size": 128, "epochs": 10,
         "probe_epochs": 30, "crop_scale_min": 0.5}

#: Configurations sampled by default: about two minutes on two CPU cores with ASHA.
TRIALS = 12

POINTS_TO_EVALUATE = [{"method": "supcon", "lr": 0.05, "temperature": 0.1}]


#: Settings PBT/PB2 may change mid-run (read afresh each step; weight decay and SGD momentum live in the
#: optimiser's restored state, so they are not listed). See spaces/__init__.py: SpaceModule.perturbable.
PERTURBABLE = ("lr", "temperature")


def space(trial: Any, fixed: Mapping[str, Any]) -> dict[str, Any]:
    p = Params(trial, fixed)
    method = p.choice("method", ["supcon", "simclr", "ce"])
    p.float("lr", 0.01, 0.3, log=True)
    if method != "ce":
        p.float("temperature", 0.05, 0.5, log=True)
    return {}
