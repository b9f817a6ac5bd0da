"""Cross-method comparison: ``method`` is a categorical; each method's own parameters are sampled only for it.

The candidates are every registered method; each has its own space ``spaces/<method>.py`` exposing ``METHOD`` and
``params(trial, fixed)``, which this space calls for the sampled method.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

DESCRIPTION = "Method as a categorical; each method's parameters conditional on it"

#: Settings PBT/PB2 may change mid-run: lr, which every method samples (PBT perturbs only settings that every
#: member of the population has; the methods' own ones are conditional on the method).
PERTURBABLE = ("lr",)


def available() -> list[str]:
    """Every registered method, in name order; each has its space ``spaces/<method>.py`` (the tests check it)."""
    from trainables.methods import METHODS

    return sorted(METHODS)


def space(trial: Any, fixed: Mapping[str, Any]) -> dict[str, Any]:
    method = trial.suggest_categorical("method", available())
    return importlib.import_module(f"spaces.{method}").params(trial, fixed) or {}
