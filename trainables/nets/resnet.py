"""ResNet-18/34/50/101 backbones with named stages, and the backbone registry.

The network is ``stem -> layer1 -> layer2 -> layer3 -> layer4 -> global average pool``, each part a named submodule,
so that a SelfCon exit can hang after any of ``attach_points`` and copy the stages that follow. The "cifar" stem
(3x3 conv, stride 1, no max-pool) keeps 32 px inputs at full resolution in ``layer1``; the "imagenet" stem
(7x7 conv, stride 2, 3x3 max-pool) divides the resolution by 4. ``width`` scales every stage's base width
(64, 128, 256, 512).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Literal, TypeVar

import torch
from torch import Tensor, nn

__all__ = [
    "BACKBONES",
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "build_backbone",
    "register_backbone",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
]

Stem = Literal["cifar", "imagenet"]
STEMS: tuple[str, ...] = ("cifar", "imagenet")
BASE_WIDTHS: tuple[int, int, int, int] = (64, 128, 256, 512)

# --------------------------------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------------------------------

BackboneFactory = Callable[..., nn.Module]
_F = TypeVar("_F", bound=BackboneFactory)
_REGISTRY: dict[str, BackboneFactory] = {}

BACKBONES: Mapping[str, BackboneFactory] = MappingProxyType(_REGISTRY)
"""Read-only, live view of the registered backbones: name -> factory. ``tuple(BACKBONES)`` lists the names."""


def register_backbone(name: str) -> Callable[[_F], _F]:
    """Decorator registering ``factory(*, stem, width, in_channels, zero_init_residual) -> nn.Module`` as ``name``."""

    def decorator(factory: _F) -> _F:
        if name in _REGISTRY:
            raise ValueError(f"`name` must be unique, but backbone {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return decorator


def build_backbone(
    name: str,
    *,
    stem: Stem = "cifar",
    width: float = 1.0,
    in_channels: int = 3,
    zero_init_residual: bool = False,
) -> nn.Module:
    """Build the registered backbone ``name``.

    The module maps ``x [B, in_channels, H, W]`` to ``[B, feature_dim]`` and exposes ``feature_dim``,
    ``stage_names``, ``attach_points``, ``stage_channels`` and ``forward_features(x, taps)``.
    """
    if name not in _REGISTRY:
        raise ValueError(f"`backbone` must be one of {sorted(_REGISTRY)}, but got backbone={name!r}")
    return _REGISTRY[name](stem=stem, width=width, in_channels=in_channels, zero_init_residual=zero_init_residual)


# --------------------------------------------------------------------------------------------------------------------
# Blocks
# --------------------------------------------------------------------------------------------------------------------


def _downsample(in_planes: int, out_planes: int, stride: int) -> nn.Module | None:
    """1x1 conv + BN projection shortcut when the block changes resolution or channels, else None (identity)."""
    if stride == 1 and in_planes == out_planes:
        return None
    return nn.Sequential(
        nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(out_planes)
    )


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual connection: ``[B, in_planes, H, W] -> [B, planes, H/stride, W/stride]``."""

    expansion = 1

    def __init__(self, in_planes: int, planes: int, *, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_planes, planes, stride)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (strided) -> 1x1 convs with a residual: ``[B, in_planes, H, W] -> [B, 4 * planes, H/s, W/s]``."""

    expansion = 4

    def __init__(self, in_planes: int, planes: int, *, stride: int = 1) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_planes, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_planes, out_planes, stride)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


Block = type[BasicBlock] | type[Bottleneck]

# --------------------------------------------------------------------------------------------------------------------
# ResNet
# --------------------------------------------------------------------------------------------------------------------


class ResNet(nn.Module):
    """ResNet backbone without a classifier: ``x [B, in_channels, H, W] -> [B, feature_dim]``.

    Attributes:
        feature_dim: channels of the pooled feature, ``round(512 * width) * block.expansion``.
        stage_names: the residual stages, in order.
        attach_points: the stages an exit can hang after (all but the last).
        stage_channels: output channels of each stage.
    """

    stage_names: tuple[str, ...] = ("layer1", "layer2", "layer3", "layer4")
    attach_points: tuple[str, ...] = ("layer1", "layer2", "layer3")

    def __init__(
        self,
        block: Block,
        num_blocks: tuple[int, int, int, int],
        *,
        stem: Stem = "cifar",
        width: float = 1.0,
        in_channels: int = 3,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        if stem not in STEMS:
            raise ValueError(f"`stem` must be one of {list(STEMS)}, but got stem={stem!r}")
        if not width > 0:
            raise ValueError(f"`width > 0` must hold, but got width={width!r}")
        if in_channels < 1:
            raise ValueError(f"`in_channels >= 1` must hold, but got in_channels={in_channels!r}")
        if len(num_blocks) != len(self.stage_names) or min(num_blocks) < 1:
            raise ValueError(f"`num_blocks` must be 4 positive counts, but got num_blocks={num_blocks!r}")
        widths = [max(1, round(base * width)) for base in BASE_WIDTHS]

        self.stem = _make_stem(stem, in_channels, widths[0])
        in_planes = widths[0]
        self.stage_channels: dict[str, int] = {}
        for index, (name, planes, blocks) in enumerate(zip(self.stage_names, widths, num_blocks)):
            stride = 1 if index == 0 else 2
            layers = []
            for block_stride in [stride] + [1] * (blocks - 1):
                layers.append(block(in_planes, planes, stride=block_stride))
                in_planes = planes * block.expansion
            self.add_module(name, nn.Sequential(*layers))
            self.stage_channels[name] = in_planes
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.feature_dim = in_planes
        self._init_weights(zero_init_residual=zero_init_residual)

    def _init_weights(self, *, zero_init_residual: bool) -> None:
        """Kaiming-normal convs (fan_out, ReLU), unit BN; optionally zero the last BN of every residual branch so each
        block starts as the identity (Goyal et al., 2017)."""
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d | nn.GroupNorm):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, BasicBlock | Bottleneck):
                    nn.init.zeros_(module.last_bn.weight)

    def forward_features(self, x: Tensor, taps: Iterable[str] = ()) -> tuple[Tensor, dict[str, Tensor]]:
        """Run the network, keeping the maps after the stages named in ``taps``.

        Returns the pooled feature ``[B, feature_dim]`` and ``{s: [B, stage_channels[s], h_s, w_s] for s in taps}``.
        """
        wanted = tuple(taps)
        unknown = [tap for tap in wanted if tap not in self.stage_names]
        if unknown:
            raise ValueError(f"`taps` must be among {list(self.stage_names)}, but got unknown taps {unknown}")
        maps: dict[str, Tensor] = {}
        x = self.stem(x)
        for name in self.stage_names:
            x = getattr(self, name)(x)
            if name in wanted:
                maps[name] = x
        return torch.flatten(self.avgpool(x), 1), maps

    def forward(self, x: Tensor) -> Tensor:
        """``x [B, in_channels, H, W] -> [B, feature_dim]``."""
        return self.forward_features(x)[0]


def _make_stem(stem: Stem, in_channels: int, out_channels: int) -> nn.Sequential:
    if stem == "cifar":
        conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=False)
        return nn.Sequential(conv, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True))
    conv = nn.Conv2d(in_channels, out_channels, kernel_size=7, stride=2, padding=3, bias=False)
    return nn.Sequential(
        conv, nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True), nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
    )


# --------------------------------------------------------------------------------------------------------------------
# Registered depths
# --------------------------------------------------------------------------------------------------------------------


@register_backbone("resnet18")
def resnet18(
    *, stem: Stem = "cifar", width: float = 1.0, in_channels: int = 3, zero_init_residual: bool = False
) -> ResNet:
    """ResNet-18: BasicBlock x (2, 2, 2, 2); ``feature_dim = 512 * width``."""
    return ResNet(
        BasicBlock, (2, 2, 2, 2), stem=stem, width=width, in_channels=in_channels, zero_init_residual=zero_init_residual
    )


@register_backbone("resnet34")
def resnet34(
    *, stem: Stem = "cifar", width: float = 1.0, in_channels: int = 3, zero_init_residual: bool = False
) -> ResNet:
    """ResNet-34: BasicBlock x (3, 4, 6, 3); ``feature_dim = 512 * width``."""
    return ResNet(
        BasicBlock, (3, 4, 6, 3), stem=stem, width=width, in_channels=in_channels, zero_init_residual=zero_init_residual
    )


@register_backbone("resnet50")
def resnet50(
    *, stem: Stem = "cifar", width: float = 1.0, in_channels: int = 3, zero_init_residual: bool = False
) -> ResNet:
    """ResNet-50: Bottleneck x (3, 4, 6, 3); ``feature_dim = 2048 * width``."""
    return ResNet(
        Bottleneck, (3, 4, 6, 3), stem=stem, width=width, in_channels=in_channels, zero_init_residual=zero_init_residual
    )


@register_backbone("resnet101")
def resnet101(
    *, stem: Stem = "cifar", width: float = 1.0, in_channels: int = 3, zero_init_residual: bool = False
) -> ResNet:
    """ResNet-101: Bottleneck x (3, 4, 23, 3); ``feature_dim = 2048 * width``."""
    return ResNet(
        Bottleneck,
        (3, 4, 23, 3),
        stem=stem,
        width=width,
        in_channels=in_channels,
        zero_init_residual=zero_init_residual,
    )
