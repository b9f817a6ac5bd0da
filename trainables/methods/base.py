"""The method contract: a small object the shared training loop calls through a handful of hooks.

A method owns its typed ``Config`` and whatever state lives outside ``nn.Module`` parameters (schedules, queues,
memory banks). The loop owns everything else: data, optimiser, precision, DDP, evaluation, checkpoints and reports.

Hooks, in the order the loop calls them::

    model = method.build()                                   # once, before DDP wrapping
    views = method.views(images, generator)                  # each step: uint8 [B,C,H,W] -> list of float views
    loss, logs = method.loss(model, views, labels, step=s)   # each step, inside autocast
    method.after_step(model, step=s)                         # after each optimiser step (EMA, queues, schedules)
    feats = method.eval_features(model, x)                   # frozen features, {"backbone": [N,D], ...}
    method.state_dict() / method.load_state_dict(state)      # non-module state, saved in every checkpoint
    method.epoch_logs()                                      # per-epoch extras to report (gamma, ema_beta, ...)
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
from trainables.nets import build_backbone

__all__ = ["DataInfo", "Encoder", "Method", "unwrap"]


class DataInfo(Protocol):
    """What a method needs to know about its dataset (``trainables.data.ImageData`` satisfies it)."""

    num_classes: int
    channels: int
    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the module itself)."""
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
    #: Whether the loss reads class labels (reported; SimCLR-style methods ignore labels).
    uses_labels: ClassVar[bool] = False

    def __init__(self, config: Any, *, train: TrainConfig, data: DataInfo) -> None:
        if not isinstance(config, self.Config):
            raise TypeError(f"{type(self).__name__} expects a {self.Config.__name__}, got {type(config).__name__}")
        self.config = config
        self.train = train
        self.data = data

    @classmethod
    def needs_labels(cls, config: Any) -> bool:
        """Whether this configuration's loss reads class labels (default: ``uses_labels``)."""
        return cls.uses_labels

    @classmethod
    def validate(cls, config: Any, train: TrainConfig) -> None:
        """Check what depends on both configs (e.g. exit positions vs backbone); raise ConfigError naming the field.
        Called by ``TrialSpec.from_settings`` before anything runs. Default: nothing to check."""
        return None

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
    def loss(self, model: nn.Module, views: list[Tensor], labels: Tensor, *, step: int) -> tuple[Tensor, dict]:
        """Scalar loss of one step and a dict of float logs. ``model`` may be DDP-wrapped: call it to forward."""

    def after_step(self, model: nn.Module, *, step: int) -> None:
        """Called after each optimiser step (EMA targets, momentum encoders, queues, schedules). Default: nothing."""
        return None

    # -- evaluation ----------------------------------------------------------------------------------------------------
    def eval_features(self, model: nn.Module, x: Tensor) -> dict[str, Tensor]:
        """Frozen features for the kNN monitor and the probes; the ``backbone`` entry is required."""
        return {"backbone": unwrap(model).backbone(x)}

    # -- state outside nn.Module ---------------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: Mapping) -> None:
        if state:
            raise ValueError(f"{self.name} keeps no state, but the checkpoint holds {sorted(state)}")

    def epoch_logs(self) -> dict[str, float]:
        """Per-epoch extras to report beside the shared metrics."""
        return {}
