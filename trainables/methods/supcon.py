"""SupCon and SimCLR (Khosla et al. 2020; Chen et al. 2020), after HobbitLong/SupContrast.

Both train ``backbone -> projection head -> L2-normalise`` on ``n_views`` SupContrast augmentations of each image with
:func:`trainables.losses.supcon_loss`; SupCon passes the class labels (positives = same class), SimCLR does not
(positives = other views of the same image). Under DDP the projections of every worker are gathered with gradient so
negatives span the global batch, and each worker computes the loss for its own anchors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from trainables import distributed
from trainables.config import check_choice, check_range
from trainables.data.augment import AugmentConfig, supcon_augment
from trainables.losses import supcon_loss
from trainables.methods import register_method
from trainables.methods.base import Batch, Encoder, Method
from trainables.nets import projection_head

__all__ = ["SimCLR", "SimCLRConfig", "SupCon", "SupConConfig"]


@dataclass(frozen=True)
class SupConConfig:
    """SupCon settings (defaults: the SupContrast README recipe)."""

    temperature: float = 0.1  # tau in the loss
    base_temperature: float = 0.07  # the loss is scaled by temperature / base_temperature
    feat_dim: int = 128  # projection dimension
    head: Literal["mlp", "linear"] = "mlp"  # projection head: dim_in -> dim_in -> feat_dim, or one linear layer
    n_views: int = 2  # augmented views per image
    contrast_mode: Literal["all", "one"] = "all"  # anchors: every view, or view 0 only
    crop_scale_min: float = 0.2  # lower bound of RandomResizedCrop's area scale

    def __post_init__(self) -> None:
        check_range("temperature", self.temperature, low=0.0, low_inclusive=False)
        check_range("base_temperature", self.base_temperature, low=0.0, low_inclusive=False)
        check_range("feat_dim", self.feat_dim, low=1)
        check_choice("head", self.head, ("mlp", "linear"))
        check_range("n_views", self.n_views, low=1)
        check_choice("contrast_mode", self.contrast_mode, ("all", "one"))
        check_range("crop_scale_min", self.crop_scale_min, low=0.0, high=1.0, low_inclusive=False)


@dataclass(frozen=True)
class SimCLRConfig(SupConConfig):
    """SimCLR settings: SupCon's without labels; the SupContrast README uses temperature 0.5."""

    temperature: float = 0.5


@register_method
class SupCon(Method):
    """Supervised contrastive learning: positives are all views of all images of the anchor's class."""

    name = "supcon"
    Config = SupConConfig
    #: SupContrast README: ``--batch_size 1024 --learning_rate 0.5 --temp 0.1 --cosine``, 1000 epochs; its code warms
    #: up for 10 epochs from 0.01 whenever batch_size > 256 (``auto_warmup``).
    recipe = {"lr": 0.5, "batch_size": 1024, "epochs": 1000, "optimizer": "sgd", "momentum": 0.9,
              "weight_decay": 1e-4, "schedule": "cosine", "warmup_epochs": "auto", "warmup_from": 0.01}
    auto_warmup = (257, 10)
    seed_probe_lr = 5.0  # SupContrast README: main_linear.py --learning_rate 5
    presets = {"digits": {"dataset": "digits", "width": 0.25, "batch_size": 128, "epochs": 10, "lr": 0.05, "crop_scale_min": 0.5}}

    @classmethod
    def needs_labels(cls, config: SupConConfig) -> bool:
        return True

    def build(self) -> nn.Module:
        backbone = self.build_backbone()
        head = projection_head(backbone.feature_dim, self.config.feat_dim, kind=self.config.head)
        return Encoder(backbone, head, normalize=True)

    def augmentations(self) -> list[AugmentConfig]:
        aug = supcon_augment(self.data.image_size)
        aug = aug.replace(scale=(self.config.crop_scale_min, 1.0))
        return [aug] * self.config.n_views

    def loss(self, model: nn.Module, views: list[Tensor], batch: Batch, *, step: int) -> tuple[Tensor, dict]:
        b = views[0].shape[0]
        z = model(torch.cat(views)).float()  # one forward: BatchNorm sees every view, DDP syncs once
        features = z.view(len(views), b, -1).transpose(0, 1)  # [B, V, D]
        features = distributed.gather_with_grad(features)
        labels = distributed.gather(batch.labels) if self.needs_labels(self.config) else None
        loss = supcon_loss(features, labels, temperature=self.config.temperature,
                           base_temperature=self.config.base_temperature, contrast_mode=self.config.contrast_mode,
                           anchor_index=distributed.local_rows(b))
        return loss, {}


@register_method
class SimCLR(SupCon):
    """SimCLR: SupCon's loss and pipeline with labels ignored (positives are the other views of the same image)."""

    name = "simclr"
    Config = SimCLRConfig
    seed_probe_lr = 1.0  # SupContrast README: SimCLR's linear eval at --learning_rate 1
    #: Without labels, SGD at 0.05 made digits' kNN fall below the untrained encoder's on some seeds; Adam learns.
    presets = {"digits": {"dataset": "digits", "width": 0.25, "batch_size": 128, "epochs": 20, "optimizer": "adam", "lr": 1e-3,
                          "weight_decay": 1e-5, "temperature": 0.2, "crop_scale_min": 0.5}}

    @classmethod
    def needs_labels(cls, config: SimCLRConfig) -> bool:
        return False
