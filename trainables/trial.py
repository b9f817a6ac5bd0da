"""A trial's full, validated specification: method name + TrainConfig + the method's Config.

``TrialSpec.from_settings("supcon", {"temperature": 0.2, "lr": 0.1})`` routes each flat key to the dataclass that
owns it (method fields first, then TrainConfig), applies the method's recipe under the user's values, and validates.
``spec.flat()`` is the inverse: the flat dict that Tune configs, checkpoints and Parquet rows carry.
:func:`trial_settings` merges a sweep's fixed and sampled settings into one trial's; :func:`prepare_trial` validates
a trial completely (world size, precision, dataset files) before anything starts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trainables.config import (
    ConfigError,
    TrainConfig,
    coerce_dataclass,
    coerce_value,
    config_fields,
    split_overrides,
)

__all__ = ["TrialSpec", "prepare_trial", "trial_settings", "typed_settings"]


@dataclass(frozen=True)
class TrialSpec:
    """Everything one trial needs to train, as validated dataclasses."""

    method: str
    train: TrainConfig
    method_config: Any

    @classmethod
    def from_settings(cls, method: str, settings: Mapping[str, Any] | None = None, *,
                      preset: str | None = None) -> TrialSpec:
        """Validate ``settings`` (flat ``key -> value``) for ``method``; raises ConfigError naming the field.

        Precedence, lowest first: the dataclass defaults, the method's ``recipe``, the named ``preset`` (one of the
        method's ``presets``), then ``settings``. ``warmup_epochs="auto"`` becomes the method's seed rule
        (:meth:`Method.resolve_warmup`), so ``spec.train.warmup_epochs`` is always a number.
        """
        from trainables.methods import get_method

        method_cls = get_method(method)
        base: dict[str, Any] = {}
        if preset is not None:
            if preset not in method_cls.presets:
                raise ConfigError(f"`preset` must be one of {', '.join(sorted(method_cls.presets)) or '(none)'} for "
                                  f"method={method}; got preset={preset!r}")
            base = dict(method_cls.presets[preset])
        settings = {k: v for k, v in {**base, **(settings or {})}.items() if k != "method"}
        for key in settings:
            error = foreign_setting_error(key, method)
            if error is not None:
                raise error
        method_values, train_values = split_overrides(settings, method_cls.Config, TrainConfig)
        method_config = coerce_dataclass(method_cls.Config, method_values)
        train = coerce_dataclass(TrainConfig, {**method_cls.recipe, **train_values})
        train = dataclasses.replace(train, warmup_epochs=method_cls.resolve_warmup(train))
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



def _owners(key: str) -> list[type]:
    from trainables.methods import METHODS

    classes = [TrainConfig, *(cls.Config for _, cls in sorted(METHODS.items()))]
    return [c for c in classes if key in config_fields(c)]


def typed_settings(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` with numbers written as text converted for numeric fields (``lr="1e-3"`` -> ``0.001``), so that
    sweeps, spaces and checks see numbers however they were written. Everything else (strings of str fields, lists,
    values that do not convert, unknown keys) is left for the full validation to judge in context."""
    out = dict(settings)
    for key, value in settings.items():
        if not isinstance(value, str):
            continue
        for owner in _owners(key)[:1]:
            try:
                typed = coerce_value(owner, key, value)
            except ConfigError:
                continue
            if isinstance(typed, (int, float)) and not isinstance(typed, bool):
                out[key] = typed
    return out


def foreign_setting_error(key: str, method: str) -> ConfigError | None:
    """The error for a setting ``key`` that only other methods have (``temperature`` for ``ce``), else None."""
    from trainables.methods import METHODS

    others = sorted(name for name, cls in METHODS.items() if name != method and key in config_fields(cls.Config))
    if not others or key in config_fields(TrainConfig) or key in config_fields(METHODS[method].Config):
        return None
    return ConfigError(f"`{key}` is not a setting of {method} (it is one of {', '.join(others)})")


def trial_settings(fixed: Mapping[str, Any], sampled: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """Merge fixed and sampled settings for one trial; fixed settings that belong only to *other* methods (e.g. a
    ``temperature`` in a ``compare`` sweep, for the ``ce`` trials) are left out. Returns (method, settings)."""
    from trainables.methods import METHODS, get_method

    merged = {**{k: v for k, v in sampled.items() if not k.startswith("__")}, **fixed}
    method = merged.pop("method", None)
    if method is None:
        raise ConfigError("`method` is neither sampled by the space nor fixed with --set method=...")
    own = set(config_fields(TrainConfig)) | set(config_fields(get_method(method).Config))
    foreign = {f for cls in METHODS.values() for f in config_fields(cls.Config)} - own
    settings = {k: v for k, v in merged.items() if k not in foreign}
    if "__trial_index__" in sampled:  # --repeats: the k-th copy of a configuration trains with seed + k
        settings["seed"] = int(settings.get("seed", 0)) + int(sampled["__trial_index__"])
    return method, settings


def prepare_trial(
    method: str, settings: Mapping[str, Any], *, workers: int = 1, gpus_per_worker: float = 0.0, download: bool = False,
    preset: str | None = None,
) -> TrialSpec:
    """Validate a trial fully (config, world size, precision, dataset files, batch vs dataset size) without Ray.

    Loading the dataset here also fills the node cache the workers then memory-map.
    """
    from trainables.loop import check_data, load_data

    spec = TrialSpec.from_settings(method, settings, preset=preset)
    spec.check_world(workers)
    if spec.train.amp == "fp16" and not gpus_per_worker:
        raise ConfigError("`amp=fp16` needs GPUs (--gpus-per-worker > 0); on CPU use amp=bf16 or amp=off")
    data = load_data(spec.train, download=download)
    check_data(spec, data)
    return spec
