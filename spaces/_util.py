"""Helpers for writing define-by-run spaces: skip what the user fixed, keep names equal to setting names."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["Params"]


class Params:
    """Suggest settings for ``trial`` unless the user fixed them (``--set``): a fixed setting is not sampled, so the
    Optuna study records only what was really searched.

    ``p = Params(trial, fixed); p.float("lr", 1e-3, 1.0, log=True)`` returns the suggestion (or the fixed value).
    """

    def __init__(self, trial: Any, fixed: Mapping[str, Any]) -> None:
        self.trial = trial
        self.fixed = fixed

    def float(self, name: str, low: float, high: float, *, log: bool = False) -> float:
        return self.fixed[name] if name in self.fixed else self.trial.suggest_float(name, low, high, log=log)

    def int(self, name: str, low: int, high: int, *, log: bool = False) -> int:
        return self.fixed[name] if name in self.fixed else self.trial.suggest_int(name, low, high, log=log)

    def choice(self, name: str, choices: Sequence[Any]) -> Any:
        return self.fixed[name] if name in self.fixed else self.trial.suggest_categorical(name, list(choices))

    def warmup(self, max_epochs: int = 10) -> int:
        """``warmup_epochs`` in [0, min(max_epochs, epochs // 2)] (never reaching the run's length)."""
        epochs = int(self.fixed.get("epochs", 100))
        return self.int("warmup_epochs", 0, max(0, min(max_epochs, epochs // 2)))
