"""A trial's full, validated specification: method name + TrainConfig + the method's Config.

``TrialSpec.from_settings("supcon", {"temperature": 0.2, "lr": 0.1})`` routes each flat key to the dataclass that
owns it (method fields first, then TrainConfig), applies the method's recipe under the user's values, and validates.
``spec.flat()`` is the inverse: the flat dict that Tune configs, checkpoints and Parquet rows carry.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trainables.config import ConfigError, TrainConfig, coerce_dataclass, split_overrides

__all__ = ["TrialSpec"]


@dataclass(frozen=True)
class TrialSpec:
    """Everything one trial needs to train, as validated dataclasses."""

    method: str
    train: TrainConfig
    method_config: Any

    @classmethod
    def from_settings(cls, method: str, settings: Mapping[str, Any] | None = None) -> TrialSpec:
        """Validate ``settings`` (flat ``key -> value``) for ``method``; raises ConfigError naming the field."""
        from trainables.methods import get_method

        method_cls = get_method(method)
        settings = {k: v for k, v in (settings or {}).items() if k != "method"}
        method_values, train_values = split_overrides(settings, method_cls.Config, TrainConfig)
        method_config = coerce_dataclass(method_cls.Config, method_values)
        train = coerce_dataclass(TrainConfig, {**method_cls.recipe, **train_values})
        method_cls.validate(method_config, train)
        return cls(method=method, train=train, method_config=method_config)

    def flat(self) -> dict[str, Any]:
        """``{"method": ..., **train fields, **method fields}`` with tuples as lists (JSON-able)."""
        out: dict[str, Any] = {"method": self.method}
        for obj in (self.train, self.method_config):
            for key, value in dataclasses.asdict(obj).items():
                out[key] = list(value) if isinstance(value, tuple) else value
        return out

    def check_world(self, world_size: int) -> None:
        """Validate the pieces that depend on the number of workers."""
        if self.train.batch_size % world_size:
            raise ConfigError(
                f"`batch_size` must be a multiple of the number of workers ({world_size}) so every worker gets the "
                f"same batch, but got batch_size={self.train.batch_size}")
