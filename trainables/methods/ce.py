"""The cross-entropy baseline of SupContrast (``main_ce.py``): backbone + linear classifier trained on labels.

One view per image (random resized crop and flip, as the reference), optional label smoothing. Its backbone is
evaluated by the same kNN monitor and linear probe as every contrastive method, so the tables compare like with like.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from trainables.config import check_range
from trainables.data.augment import AugmentConfig
from trainables.losses import cross_entropy_loss
from trainables.methods import register_method
from trainables.methods.base import Batch, Encoder, Method

__all__ = ["CrossEntropy", "CrossEntropyConfig"]


@dataclass(frozen=True)
class CrossEntropyConfig:
    """Cross-entropy baseline settings (defaults: the SupContrast README recipe)."""

    label_smoothing: float = 0.0  # epsilon of label smoothing
    crop_scale_min: float = 0.2  # lower bound of RandomResizedCrop's area scale

    def __post_init__(self) -> None:
        check_range("label_smoothing", self.label_smoothing, low=0.0, high=1.0, high_inclusive=False)
        check_range("crop_scale_min", self.crop_scale_min, low=0.0, high=1.0, low_inclusive=False)


@register_method
class CrossEntropy(Method):
    """Supervised training with softmax cross-entropy: ``L = -mean_i log softmax(W f(x_i))_{y_i}``."""

    name = "ce"
    Config = CrossEntropyConfig
    #: SupContrast README: ``main_ce.py --batch_size 1024 --learning_rate 0.8 --cosine``, 500 epochs (its default);
    #: 10 warm-up epochs from 0.01 when batch_size > 256.
    recipe = {"lr": 0.8, "batch_size": 1024, "epochs": 500, "optimizer": "sgd", "momentum": 0.9,
              "weight_decay": 1e-4, "schedule": "cosine", "warmup_epochs": "auto", "warmup_from": 0.01}
    auto_warmup = (257, 10)
    presets = {"digits": {"dataset": "digits", "width": 0.25, "batch_size": 128, "epochs": 10, "lr": 0.05}}
    epoch_metrics = ("train_top1",)

    @classmethod
    def needs_labels(cls, config: CrossEntropyConfig) -> bool:
        return True

    def build(self) -> nn.Module:
        backbone = self.build_backbone()
        return Encoder(backbone, nn.Linear(backbone.feature_dim, self.data.num_classes), normalize=False)

    def augmentations(self) -> list[AugmentConfig]:
        return [AugmentConfig(size=self.data.image_size, scale=(self.config.crop_scale_min, 1.0), jitter_p=0.0,
                              grayscale_p=0.0)]

    def loss(self, model: nn.Module, views: list[Tensor], batch: Batch, *, step: int) -> tuple[Tensor, dict]:
        logits, labels = model(views[0]).float(), batch.labels
        loss = cross_entropy_loss(logits, labels, label_smoothing=self.config.label_smoothing)
        return loss, {"train_top1": (logits.argmax(1) == labels).float().mean().detach()}
