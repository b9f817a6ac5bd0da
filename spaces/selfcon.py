"""SelfCon: temperature, learning rate, exit positions, exit size and alpha.

``selfcon_pos`` is a categorical over every non-empty set of exits the chosen backbone (``fixed["backbone"]``, default
resnet18) supports, each choice a YAML list string such as ``"[false,true,false]"`` (Optuna categoricals hold
scalars); the sweep parses YAML strings given for list-typed settings, as ``--set`` does. ``selfcon_arch`` is not
sampled: the space returns the backbone's family.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from typing import Any

from spaces._util import Params
from trainables.config import yaml_flow
from trainables.nets import EXIT_SIZES, backbone_info

METHOD = "selfcon"
DESCRIPTION = "SelfCon: temperature, lr, exit positions (every valid set for the backbone), exit size, alpha"
#: Weights of the exit-anchored term; 0 is plain SelfCon.
#: The reference README's recipe (CIFAR-100, ResNet-18: bs 1024, lr 0.5, tau 0.1, cosine, exit after layer2, fc).
#: Only sampled settings appear here; cosine is the method's recipe and the batch size the user's ``--set``.
POINTS_TO_EVALUATE = [
    {"temperature": 0.1, "lr": 0.5, "selfcon_pos": "[false,true,false]", "selfcon_size": "fc", "alpha": 0.0}
]


#: Settings PBT/PB2 may change mid-run (read afresh each step; weight decay and SGD momentum live in the
#: optimiser's restored state, so they are not listed). See spaces/__init__.py: SpaceModule.perturbable.
PERTURBABLE = ("lr", "temperature", "alpha")


def position_choices(backbone: str) -> list[str]:
    """Every non-empty exit set of ``backbone`` as a YAML list string, fewest exits first.

    ``position_choices("wrn16_8") == ["[true,false]", "[false,true]", "[true,true]"]``.
    """
    n = len(backbone_info(backbone).attach_points)
    flags = [f for f in itertools.product((False, True), repeat=n) if any(f)]
    flags.sort(key=lambda f: (sum(f), [not x for x in f]))
    return [yaml_flow(f) for f in flags]


def params(trial: Any, fixed: Mapping[str, Any]) -> dict[str, Any]:
    """SelfCon's own parameters plus the learning rate; returns ``selfcon_arch`` unless the user fixed it."""
    backbone = fixed.get("backbone", "resnet18")
    p = Params(trial, fixed)
    p.float("temperature", 0.05, 0.5, log=True)
    p.float("lr", 0.01, 1.0, log=True)
    p.choice("selfcon_pos", position_choices(backbone))
    p.choice("selfcon_size", EXIT_SIZES)
    p.float("alpha", 0.0, 1.0)  # a float, as in the sigmoid space: `compare` shares one distribution kind per name
    return {} if "selfcon_arch" in fixed else {"selfcon_arch": backbone_info(backbone).family}


def space(trial: Any, fixed: Mapping[str, Any]) -> dict[str, Any]:
    return {"method": METHOD, **params(trial, fixed)}
