"""Backbones with named stages and attach points, and projection heads.

``build_backbone(name, ...)`` builds a registered backbone (``BACKBONES`` lists them); ``ProjectionHead`` maps its
feature to the loss space.
"""

from trainables.nets.heads import HEAD_KINDS, ProjectionHead
from trainables.nets.resnet import (
    BACKBONES,
    BasicBlock,
    Bottleneck,
    ResNet,
    build_backbone,
    register_backbone,
    resnet18,
    resnet34,
    resnet50,
    resnet101,
)

__all__ = [
    "BACKBONES",
    "HEAD_KINDS",
    "BasicBlock",
    "Bottleneck",
    "ProjectionHead",
    "ResNet",
    "build_backbone",
    "register_backbone",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
]
