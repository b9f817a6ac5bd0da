"""Typed, validated configuration shared by every method, and the ``--set key=value`` parser.

A trial's configuration is two dataclasses: :class:`TrainConfig` (data, backbone, optimiser, schedule, precision,
evaluation: what every method shares) and the method's own ``Config`` (temperature, heads, schedules, ...). Both are
validated on construction; a bad value raises :class:`ConfigError` naming the field, the condition and the value.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import types
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal

import yaml

__all__ = [
    "ConfigError",
    "TrainConfig",
    "check_choice",
    "check_literals",
    "check_range",
    "coerce_dataclass",
    "coerce_value",
    "config_fields",
    "describe_fields",
    "parse_overrides",
    "split_overrides",
    "yaml_flow",
]


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and the allowed values."""


def check_range(name: str, value: float, *, low: float | None = None, high: float | None = None,
                low_inclusive: bool = True, high_inclusive: bool = True) -> None:
    """Raise :class:`ConfigError` unless ``low <= value <= high`` (bounds optional, inclusivity selectable)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"`{name}` must be finite, but got {name}={value!r}")
    bad_low = low is not None and (value < low if low_inclusive else value <= low)
    bad_high = high is not None and (value > high if high_inclusive else value >= high)
    if bad_low or bad_high:
        lo = "" if low is None else f"{low} {'<=' if low_inclusive else '<'} "
        hi = "" if high is None else f" {'<=' if high_inclusive else '<'} {high}"
        raise ConfigError(f"`{lo}{name}{hi}` must hold, but got {name}={value!r}")


def check_choice(name: str, value: Any, choices: Iterable[Any]) -> None:
    """Raise :class:`ConfigError` unless ``value`` is one of ``choices``."""
    choices = tuple(choices)
    if value not in choices:
        raise ConfigError(f"`{name}` must be one of {', '.join(map(str, choices))}; got {name}={value!r}")


@functools.cache
def _literal_fields(cls: type) -> dict[str, tuple[tuple[Any, ...], bool]]:
    """field -> (allowed values, Optional?) for every field of dataclass ``cls`` annotated ``Literal[...]`` or
    ``Literal[...] | None``."""
    out = {}
    for name, annotation in typing.get_type_hints(cls).items():
        optional = False
        if typing.get_origin(annotation) in (typing.Union, types.UnionType):
            args = typing.get_args(annotation)
            literals = [a for a in args if typing.get_origin(a) is Literal]
            if len(literals) != 1 or len(args) != 2 or type(None) not in args:
                continue
            annotation, optional = literals[0], True
        if typing.get_origin(annotation) is Literal:
            out[name] = (typing.get_args(annotation), optional)
    return out


def check_literals(obj: Any) -> None:
    """Check every ``Literal[...]`` field of dataclass instance ``obj`` against its annotation (``None`` passes where
    the annotation allows it); raises :class:`ConfigError` naming the field and the allowed values."""
    for name, (choices, optional) in _literal_fields(type(obj)).items():
        value = getattr(obj, name)
        if not (optional and value is None):
            check_choice(name, value, choices)


@dataclass(frozen=True)
class TrainConfig:
    """Options every method shares. Field names are the ``--set`` keys and the Parquet column names."""

    # data
    dataset: str = "digits"  # digits | cifar10 | cifar100 | stl10 | tinyimagenet | imagenet | imagenet100 | folder
    data_dir: str | None = None  # root of the on-disk dataset (not needed for digits)
    image_size: int | None = None  # resize/crop size for folder datasets; None = the dataset's native size
    mean: tuple[float, ...] | None = None  # per-channel mean for folder datasets; None = dataset default
    std: tuple[float, ...] | None = None  # per-channel std for folder datasets; None = dataset default
    data_loading: Literal["auto", "cache", "stream"] = "auto"  # node cache, decode per batch, or by size (>16 GiB)
    # model
    backbone: str = "resnet18"  # resnet18/34/50/101, vgg13(_bn), vgg16(_bn), wrn16_8, effnet_small
    width: float = 1.0  # channel-width multiplier of the backbone (tiny nets for tests: 0.125)
    stem: Literal["auto", "cifar", "imagenet"] = "auto"  # auto: CIFAR stem for images <= 64 px
    sync_bn: bool = False  # synchronise BatchNorm statistics across workers (DDP, world size > 1)
    # optimisation
    epochs: int = 100
    batch_size: int = 256  # global batch over all workers
    optimizer: Literal["sgd", "lars", "adam"] = "sgd"
    lr: float = 0.5  # base learning rate (scaled by batch_size / 256 when lr_scaling = linear)
    lr_scaling: Literal["none", "linear"] = "none"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: Literal["cosine", "step", "constant"] = "cosine"
    lr_decay_epochs: tuple[int, ...] = ()  # epochs at which the step schedule multiplies lr by lr_decay_rate
    lr_decay_rate: float = 0.1
    #: linear warm-up from warmup_from to the scheduled lr; "auto": the method's seed rule (``Method.auto_warmup``:
    #: SupCon/SimCLR/CE 10 epochs when batch_size > 256, SelfCon when >= 1024, others none), resolved by TrialSpec
    warmup_epochs: float | Literal["auto"] = "auto"
    warmup_from: float = 0.01
    amp: Literal["auto", "off", "bf16", "fp16"] = "auto"  # autocast dtype; auto: bf16 on CUDA, off on CPU; fp16: GPU
    memory_format: Literal["auto", "channels_last", "contiguous"] = "auto"  # auto: channels_last (measured)
    compile: bool = False  # torch.compile the model (its warm-up steps are left out of epoch_time_s / images_per_s)
    grad_clip: float = 0.0  # max global gradient norm; 0 = off
    # reproducibility
    seed: int = 0
    deterministic: bool = False  # torch.use_deterministic_algorithms for bit-exact resumes
    # evaluation
    knn_k: int = 200
    knn_temperature: float = 0.1
    eval_batch_size: int = 512
    probe_epochs: int = 100  # linear probe epochs on frozen, precomputed features
    probe_lr: float = 0.1
    probe_weight_decay: float = 0.0
    logreg_probe: bool = False  # also fit scikit-learn logistic regression on L2-normalised features
    #: final probe protocol: "fast" (linear probe on precomputed features, above); "seed" adds the seed's own,
    #: reported as seed_linear_top1 (SupContrast main_linear.py: crop+flip through the frozen encoder, SGD with step
    #: decay, the method's seed lr) or, for the sigmoid method, seed_logreg_top1 (calibrated logistic regression)
    probe: Literal["fast", "seed"] = "fast"
    seed_probe_epochs: int = 100  # epochs of the seed probe (the seed's 100; decays at 60/75/90 % of them)
    seed_probe_batch_size: int = 512  # the seed's README batch (> 256 turns on its 10-epoch warm-up)
    seed_probe_lr: float | None = None  # None: the method's seed lr (SupCon 5, SimCLR 1, SelfCon 3, else 0.1)
    # compute
    num_threads: int = 0  # torch intra-op threads per worker; 0 = the CPUs the worker holds
    #: write the resume checkpoint every this many epochs (always after the last epoch and an early stop); a resume
    #: restarts from the last one written, exactly. 1 = every epoch (a crash loses at most one epoch)
    checkpoint_every: int = 1

    def __post_init__(self) -> None:
        from trainables.data import DATASETS
        from trainables.nets import BACKBONES

        check_choice("dataset", self.dataset, DATASETS)
        check_choice("backbone", self.backbone, tuple(BACKBONES))
        check_literals(self)
        check_range("width", self.width, low=0.0, low_inclusive=False)
        check_range("epochs", self.epochs, low=1)
        check_range("batch_size", self.batch_size, low=1)
        check_range("lr", self.lr, low=0.0, low_inclusive=False)
        check_range("momentum", self.momentum, low=0.0, high=1.0, high_inclusive=False)
        check_range("weight_decay", self.weight_decay, low=0.0)
        for e in self.lr_decay_epochs:
            check_range("lr_decay_epochs", e, low=1, high=self.epochs)
        if self.schedule == "step" and not self.lr_decay_epochs:
            raise ConfigError("`lr_decay_epochs` must list at least one epoch when schedule=step, but got ()")
        check_range("lr_decay_rate", self.lr_decay_rate, low=0.0, high=1.0, low_inclusive=False)
        if isinstance(self.warmup_epochs, str):
            check_choice("warmup_epochs", self.warmup_epochs, ("auto",))
        else:
            check_range("warmup_epochs", self.warmup_epochs, low=0.0, high=self.epochs, high_inclusive=False)
        check_range("warmup_from", self.warmup_from, low=0.0)
        check_range("grad_clip", self.grad_clip, low=0.0)
        check_range("knn_k", self.knn_k, low=1)
        check_range("knn_temperature", self.knn_temperature, low=0.0, low_inclusive=False)
        check_range("eval_batch_size", self.eval_batch_size, low=1)
        check_range("probe_epochs", self.probe_epochs, low=0)
        check_range("probe_lr", self.probe_lr, low=0.0, low_inclusive=False)
        check_range("probe_weight_decay", self.probe_weight_decay, low=0.0)
        check_range("seed_probe_epochs", self.seed_probe_epochs, low=1)
        check_range("seed_probe_batch_size", self.seed_probe_batch_size, low=1)
        if self.seed_probe_lr is not None:
            check_range("seed_probe_lr", self.seed_probe_lr, low=0.0, low_inclusive=False)
        check_range("num_threads", self.num_threads, low=0)
        check_range("checkpoint_every", self.checkpoint_every, low=1)
        if self.image_size is not None:
            check_range("image_size", self.image_size, low=8)
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None and len(value) not in (1, 3):
                raise ConfigError(f"`{name}` must have 1 or 3 values (one per channel), but got {name}={value!r}")
        if self.std is not None and min(self.std) <= 0:
            raise ConfigError(f"`std` must be > 0 for every channel, but got std={self.std!r}")

    def resolved_stem(self, image_size: int) -> str:
        """The stem to build: ``cifar`` for images of at most 64 px when ``stem == "auto"``."""
        if self.stem != "auto":
            return self.stem
        return "cifar" if image_size <= 64 else "imagenet"

    def scaled_lr(self) -> float:
        """The peak learning rate after optional linear scaling by ``batch_size / 256``."""
        return self.lr * self.batch_size / 256 if self.lr_scaling == "linear" else self.lr


# ---------------------------------------------------------------------------------------------------------------------
# Building dataclasses from loose values (CLI strings, YAML, Tune configs)


def config_fields(cls: type) -> dict[str, dataclasses.Field]:
    """The dataclass fields of ``cls`` by name."""
    return {f.name: f for f in fields(cls)}


def _coerce(cls: type, name: str, value: Any, annotation: Any) -> Any:
    """Convert ``value`` to the field's annotated type, or raise ConfigError naming the field."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(cls, name, value, arg)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"`{name}` got an unsupported value {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"`{name}` must be one of {', '.join(map(str, args))}; got {name}={value!r}")
        return value
    if origin is tuple:
        if isinstance(value, str):  # a YAML flow list from a search space: "[false, true, false]"
            try:
                parsed = yaml.safe_load(value)
            except yaml.YAMLError:
                parsed = None
            value = parsed if isinstance(parsed, list) else [value]
        if not isinstance(value, Iterable):
            value = [value]
        item_type = args[0] if args else Any
        return tuple(_coerce(cls, name, v, item_type) for v in value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"`{name}` must be true or false, but got {name}={value!r}")
    if annotation is int:
        number = _number(value)
        if number is None or not (isinstance(number, int) or math.isfinite(number) and number.is_integer()):
            raise ConfigError(f"`{name}` must be an integer, but got {name}={value!r}")
        return int(number)
    if annotation is float:
        number = _number(value)
        if number is None or math.isnan(number):
            raise ConfigError(f"`{name}` must be a number, but got {name}={value!r}")
        return float(number)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"`{name}` must be a string, but got {name}={value!r}")
        return value
    return value


def _number(value: Any) -> int | float | None:
    """``value`` as a number if it is one or is written as one (``1e-3``, ``3E-4``, ``.5``, ``5.``, ``1_000``, ``inf``,
    quoted or not: YAML 1.1 reads ``1e-3`` as a string); ``None`` otherwise. Booleans are not numbers."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if not isinstance(value, str):
        return None
    text = value.strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        return None


def coerce_value(cls: type, name: str, value: Any) -> Any:
    """``value`` converted to the type of field ``name`` of dataclass ``cls`` (``"1e-3"`` -> ``0.001`` for a float
    field, the text unchanged for a str field); raises ConfigError naming the field."""
    return _coerce(cls, name, value, typing.get_type_hints(cls)[name])


def coerce_dataclass(cls: type, values: Mapping[str, Any]):
    """Build ``cls(**values)`` after converting each value to its field's type.

    Unknown keys raise ConfigError listing the known fields; validation errors from ``__post_init__`` propagate as
    ConfigError.
    """
    known = config_fields(cls)
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"unknown field(s) {', '.join(unknown)}; known fields: {', '.join(known)}")
    hints = typing.get_type_hints(cls)
    kwargs = {k: _coerce(cls, k, v, hints[k]) for k, v in values.items()}
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(str(e)) from e


def parse_overrides(items: Iterable[str]) -> dict[str, Any]:
    """Parse ``key=value`` strings; values are YAML/JSON literals (``0.1``, ``[false,true,false]``, ``cosine``).

    Never evaluates code: ``yaml.safe_load`` only builds plain scalars, lists and mappings.
    """
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"`--set` takes key=value, but got {item!r}")
        try:
            out[key] = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"`--set {key}` value {raw!r} is not a YAML/JSON literal: {e.problem}") from e
    return out


def yaml_flow(value: Any) -> str:
    """``value`` as the YAML literal ``--set`` and the search spaces use: lists in flow style without spaces
    (``[false,true,false]``), booleans as ``true``/``false``, anything else as ``str``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(yaml_flow(v) for v in value) + "]"
    return str(value)


def split_overrides(values: Mapping[str, Any], *owners: type) -> list[dict[str, Any]]:
    """Route each key to the first dataclass in ``owners`` that has it; unknown keys raise ConfigError."""
    routed: list[dict[str, Any]] = [{} for _ in owners]
    names = [config_fields(o) for o in owners]
    for key, value in values.items():
        for i, known in enumerate(names):
            if key in known:
                routed[i][key] = value
                break
        else:
            allowed = sorted({n for known in names for n in known})
            raise ConfigError(f"unknown setting `{key}`; allowed: {', '.join(allowed)}")
    return routed


def describe_fields(cls: type) -> list[tuple[str, str, Any]]:
    """(name, type, default) rows for help texts."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
        rows.append((f.name, _type_name(hints[f.name]), default))
    return rows


def _type_name(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return "|".join(map(str, typing.get_args(annotation)))
    if origin is tuple:
        return "list"
    if origin is not None:
        return " or ".join(_type_name(a) for a in typing.get_args(annotation) if a is not type(None))
    return getattr(annotation, "__name__", str(annotation))

