"""Backbones with named stages and attach points, SelfCon exits, and projection heads.

``build_backbone(name, ...)`` builds a registered backbone (``BACKBONES`` lists them; ``backbone_info(name)`` gives
its family and attach points without building it). Families: ResNet-18/34/50/101 (``resnet``), VGG-13/16 with and
without BN (``vgg``), WRN-16-8 (``wrn``) and ``effnet_small`` (``efficientnet``). ``projection_head`` maps a
feature to the loss space; ``MultiExitNet`` adds SelfCon exits to a backbone; ``momentum`` holds the EMA target,
feature queue and memory bank of methods with state.
"""

from trainables.nets._registry import (
    BACKBONES,
    FAMILIES,
    Backbone,
    BackboneInfo,
    backbone_info,
    build_backbone,
    register_backbone,
)

# isort: off
# Import order is registration order, which is the order error messages list the backbones in: ResNets first.
from trainables.nets.resnet import BasicBlock, Bottleneck, ResNet, resnet18, resnet34, resnet50, resnet101
from trainables.nets.vgg import VGG, vgg13, vgg13_bn, vgg16, vgg16_bn
from trainables.nets.wrn import WideResNet, wrn16_8
from trainables.nets.efficientnet import EfficientNet, effnet_small
# isort: on
from trainables.nets.exits import (
    EXIT_HEAD_KINDS,
    EXIT_SIZES,
    Exit,
    MultiExitNet,
    build_exit,
    exit_names,
)
from trainables.nets.heads import HEAD_KINDS, projection_head
from trainables.nets.momentum import FeatureQueue, MemoryBank, MomentumTarget, cosine_momentum

__all__ = [
    "BACKBONES",
    "EXIT_HEAD_KINDS",
    "EXIT_SIZES",
    "FAMILIES",
    "HEAD_KINDS",
    "VGG",
    "Backbone",
    "BackboneInfo",
    "BasicBlock",
    "Bottleneck",
    "EfficientNet",
    "Exit",
    "MultiExitNet",
    "FeatureQueue",
    "MemoryBank",
    "MomentumTarget",
    "ResNet",
    "WideResNet",
    "backbone_info",
    "build_backbone",
    "build_exit",
    "cosine_momentum",
    "effnet_small",
    "exit_names",
    "projection_head",
    "register_backbone",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "vgg13",
    "vgg13_bn",
    "vgg16",
    "vgg16_bn",
    "wrn16_8",
]
