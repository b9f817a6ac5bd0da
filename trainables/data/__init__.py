"""Datasets as uint8 arrays shared through a node-level cache, and batched augmentation on the trial's device."""

from trainables.data.augment import (
    AugmentConfig,
    BatchAugment,
    eval_transform,
    local_view_size,
    multicrop,
    relic_global,
    relic_local,
    supcon_augment,
    to_lab,
    to_ycbcr,
)
from trainables.data.datasets import (
    DATASETS,
    DataError,
    ImageData,
    Split,
    check_dataset,
    default_image_size,
    load_dataset,
)

__all__ = [
    "DATASETS",
    "AugmentConfig",
    "BatchAugment",
    "DataError",
    "ImageData",
    "Split",
    "check_dataset",
    "default_image_size",
    "eval_transform",
    "load_dataset",
    "local_view_size",
    "multicrop",
    "relic_global",
    "relic_local",
    "supcon_augment",
    "to_lab",
    "to_ycbcr",
]
