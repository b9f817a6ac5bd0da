"""Cross-method comparison: ``method`` is a categorical; each method's own parameters are sampled only for it.

The candidate methods are every bundled method space (``spaces/<method>.py`` exposing ``METHOD`` and ``params``).
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

DESCRIPTION = "Method as a categorical; each method's parameters conditional on it"

#: Method spaces in a stable order; a new method adds its name here and its own spaces/<method>.py.
CANDIDATES = ("supcon", "simclr", "ce", "selfcon", "sigmoid")


def available() -> list[str]:
    """The candidate methods whose space module exists."""
    out = []
    for name in CANDIDATES:
        try:
            module = importlib.import_module(f"spaces.{name}")
        except ImportError:
            continue
        if hasattr(module, "params"):
            out.append(name)
    return out


def space(trial: Any, fixed: Mapping[str, Any]) -> dict[str, Any]:
    method = trial.suggest_categorical("method", available())
    return importlib.import_module(f"spaces.{method}").params(trial, fixed) or {}
