"""The method contract: a small object the shared training loop calls through a handful of hooks.

A method owns its typed ``Config`` and whatever state lives outside ``nn.Module`` parameters and buffers. The loop
owns everything else: data, optimiser, precision, DDP, evaluation, checkpoints, reports and the global step (the
truth every schedule is a pure function of). Queues, memory banks and momentum encoders are modules
(``trainables.nets.momentum``) inside the built model, so ``model.state_dict()`` checkpoints them.

Hooks, in the order the loop calls them::

    method.setup(shape)                                      # once: RunShape(steps_per_epoch, total_steps, ...)
    model = method.build()                                   # once, before DDP wrapping
    views = method.views(batch.images, generator)           # each step: uint8 [B,C,H,W] -> list of float views
    loss, logs = method.loss(model, views, batch, step=s)    # each step, inside autocast; s = steps completed
    method.after_step(model, step=s + 1)                     # after each optimiser step (EMA, queues, banks)
    method.epoch_logs(step=s + 1)                            # per-epoch extras at that step (gamma, ema_beta, ...)
    feats = method.eval_features(model, x)                   # frozen features, {"backbone": [N,D], ...}
    method.state_dict() / method.load_state_dict(state)      # state outside the model; usually none

``batch`` is a :class:`Batch` (images, labels, dataset row indices). Every key of ``logs`` and ``epoch_logs`` is
declared in ``epoch_metrics``, every extra final metric in ``final_metrics`` (or ``metrics(config)``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor, nn

from trainables.config import TrainConfig
from trainables.data.augment import AugmentConfig, BatchAugment
from trainables.metrics import MetricNames
from trainables.nets import build_backbone

__all__ = ["Batch", "DataInfo", "Encoder", "Method", "RunShape", "unwrap"]


@dataclass(frozen=True)
class Batch:
    """One worker's batch on the device, as the loop's batch reader builds it."""

    images: Tensor  # uint8 [B, C, H, W]
    labels: Tensor  # int64 [B], -1 for unlabeled images
    indices: Tensor  # int64 [B], the samples' rows in the training split (memory banks are indexed by them)


@dataclass(frozen=True)
class RunShape:
    """The run's size in optimiser steps, computed by the loop once (:meth:`of`) and given to ``Method.setup``."""

    steps_per_epoch: int  # global optimiser steps per epoch (full global batches; the remainder is dropped)
    total_steps: int  # steps_per_epoch * epochs
    num_samples: int  # training samples (rows of a memory bank)
    world_size: int = 1  # DDP workers

    def __post_init__(self) -> None:
        for name in ("steps_per_epoch", "total_steps", "num_samples", "world_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name} >= 1` must hold, but got {name}={getattr(self, name)!r}")

    @classmethod
    def of(cls, train: TrainConfig, *, num_samples: int, world_size: int = 1) -> RunShape:
        """The shape of training ``train`` on ``num_samples`` images: ``num_samples // batch_size`` steps an epoch."""
        steps_per_epoch = num_samples // train.batch_size
        return cls(steps_per_epoch, steps_per_epoch * train.epochs, num_samples, world_size)


class DataInfo(Protocol):
    """What a method needs to know about its dataset (``trainables.data.ImageData`` satisfies it)."""

    num_classes: int
    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside ``torch.compile`` and DistributedDataParallel wrappers (or the module itself)."""
    model = getattr(model, "_orig_mod", model)  # torch.compile's OptimizedModule
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


class Encoder(nn.Module):
    """Backbone followed by a head: ``forward(x) -> head(backbone(x))``.

    ``normalize=True`` L2-normalises the head's output (projection heads); ``False`` returns it raw (classifiers).
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, *, normalize: bool) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.normalize = normalize

    def forward(self, x: Tensor) -> Tensor:
        out = self.head(self.backbone(x))
        return nn.functional.normalize(out.float(), dim=1) if self.normalize else out


@dataclass(frozen=True)
class _NoConfig:
    """Placeholder config type for the abstract base."""


class Method(ABC):
    """Base of every method. Subclasses set ``name``, ``Config`` and ``recipe`` and register with
    :func:`trainables.methods.register_method`."""

    name: ClassVar[str]
    Config: ClassVar[type] = _NoConfig
    #: TrainConfig values of the method's published recipe that differ from TrainConfig's defaults (lr, optimiser...).
    recipe: ClassVar[Mapping[str, Any]] = {}
    #: Named complete settings (``csweep train METHOD --preset NAME``), applied over ``recipe`` and under the user's.
    #: ``digits`` is required: a setting that clearly learns on the embedded digits in well under a minute on one CPU
    #: core (the contract's short-run test holds every method to it, measured against an untrained encoder).
    presets: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    #: The seed's warm-up rule that ``warmup_epochs="auto"`` applies: ``(min_batch, epochs)`` warms up for ``epochs``
    #: (at most half the run) from ``warmup_from`` when ``batch_size >= min_batch``; None: never.
    auto_warmup: ClassVar[tuple[int, float] | None] = None
    #: ``probe=seed``: the seed's evaluation, ``"linear"`` (SupContrast's main_linear.py at ``seed_probe_lr``,
    #: reported as ``seed_linear_top1``) or ``"logreg"`` (calibrated logistic regression, ``seed_logreg_top1``).
    seed_probe: ClassVar[str] = "linear"
    seed_probe_lr: ClassVar[float] = 0.1  # main_linear.py's default learning rate
    #: Per-epoch extras this method reports: every key of ``loss``'s logs and of ``epoch_logs``.
    epoch_metrics: ClassVar[tuple[str, ...]] = ()
    #: Extras of the final report only (probes of extra eval features, ...).
    final_metrics: ClassVar[tuple[str, ...]] = ()
    #: Whether ``loss`` draws random numbers itself (beyond ``views``): such a loss cannot run under
    #: ``torch.func.vmap``, so trials of the method cannot be fused (trainables/fused.py).
    loss_draws_random: ClassVar[bool] = False

    def __init__(self, config: Any, *, train: TrainConfig, data: DataInfo) -> None:
        if not isinstance(config, self.Config):
            raise TypeError(f"{type(self).__name__} expects a {self.Config.__name__}, got {type(config).__name__}")
        self.config = config
        self.train = train
        self.data = data
        self._shape: RunShape | None = None

    @classmethod
    def needs_labels(cls, config: Any) -> bool:
        """Whether this configuration's loss reads class labels (checked against the data; default: no)."""
        return False

    @classmethod
    def metrics(cls, config: Any = None) -> MetricNames:
        """The extras this method reports for ``config`` (None: every name some configuration may report).
        Default: ``epoch_metrics`` and ``final_metrics``."""
        return MetricNames(tuple(cls.epoch_metrics), tuple(cls.final_metrics))

    @classmethod
    def resolve_warmup(cls, train: TrainConfig) -> float:
        """Warm-up epochs of ``train``: its own number, or for ``"auto"`` the rule ``auto_warmup``:
        ``min(epochs_rule, train.epochs / 2)`` if ``batch_size >= min_batch`` else 0."""
        if train.warmup_epochs != "auto":
            return float(train.warmup_epochs)
        if cls.auto_warmup is None or train.batch_size < cls.auto_warmup[0]:
            return 0.0
        return float(min(cls.auto_warmup[1], train.epochs / 2))

    @classmethod
    def validate(cls, config: Any, train: TrainConfig) -> None:
        """Check what depends on both configs (e.g. exit positions vs backbone); raise ConfigError naming the field.
        Called by ``TrialSpec.from_settings`` before anything runs. Default: nothing to check."""
        return None

    @classmethod
    def check_data(cls, config: Any, train: TrainConfig, num_samples: int) -> None:
        """Check what depends on the training set's size (e.g. negatives drawn from a memory bank); raise ConfigError
        naming the field. Called by ``trainables.loop.check_data`` (before launch and in ``fit``). Default: nothing."""
        return None

    # -- run -----------------------------------------------------------------------------------------------------------
    def setup(self, shape: RunShape) -> None:
        """Told once, before ``build``, how long the run is; schedules read it from :attr:`shape`."""
        self._shape = shape

    @property
    def shape(self) -> RunShape:
        """The run's :class:`RunShape`; RuntimeError if the loop (or a test) has not called ``setup`` yet."""
        if self._shape is None:
            raise RuntimeError(f"{self.name}: call setup(RunShape) before using the run's shape")
        return self._shape

    # -- model ---------------------------------------------------------------------------------------------------------
    def build_backbone(self) -> nn.Module:
        """The backbone named in TrainConfig, with the stem that suits the image size."""
        t = self.train
        return build_backbone(t.backbone, stem=t.resolved_stem(self.data.image_size), width=t.width,
                              in_channels=self.data.channels)

    @abstractmethod
    def build(self) -> nn.Module:
        """Build the trainable module (before DDP wrapping)."""

    # -- data ----------------------------------------------------------------------------------------------------------
    def augmentations(self) -> Sequence[AugmentConfig]:
        """One augmentation pipeline per view (default: none, i.e. the images are only normalised)."""
        return ()

    def views(self, images: Tensor, generator: torch.Generator) -> list[Tensor]:
        """Turn a uint8 batch ``[B,C,H,W]`` on the device into the list of float views the loss consumes."""
        if not hasattr(self, "_augments"):
            self._augments = [BatchAugment(c, mean=self.data.mean, std=self.data.std) for c in self.augmentations()]
        return [aug(images, generator) for aug in self._augments]

    # -- objective -----------------------------------------------------------------------------------------------------
    @abstractmethod
    def loss(self, model: nn.Module, views: list[Tensor], batch: Batch, *, step: int) -> tuple[Tensor, dict]:
        """Scalar loss of the step after ``step`` completed steps, and a dict of float logs (keys in
        ``epoch_metrics``). ``model`` may be DDP-wrapped: call it to forward."""

    def after_step(self, model: nn.Module, *, step: int) -> None:
        """Called after optimiser step ``step`` (1-based): EMA targets, queues, memory banks. Default: nothing."""
        return None

    # -- evaluation ----------------------------------------------------------------------------------------------------
    def eval_features(self, model: nn.Module, x: Tensor) -> dict[str, Tensor]:
        """Frozen features ``{name: [N, D_name]}`` for the kNN monitor (``backbone``, required) and the probes (each
        other entry ``name`` is probed and reported as ``{name}_top1``, declared in ``final_metrics``)."""
        return {"backbone": unwrap(model).backbone(x)}

    def epoch_logs(self, *, step: int) -> dict[str, float]:
        """Per-epoch extras at global step ``step`` (keys in ``epoch_metrics``). Default: none."""
        return {}

    # -- state outside the model ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """State outside the model that ``load_state_dict`` restores (buffers belong in the model). Default: none."""
        return {}

    def load_state_dict(self, state: Mapping) -> None:
        if state:
            raise ValueError(f"{self.name} keeps no state, but the checkpoint holds {sorted(state)}")
