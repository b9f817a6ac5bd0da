"""ResNet-18/34/50/101 backbones with named stages (family ``resnet``).

The network is ``stem -> layer1 -> layer2 -> layer3 -> layer4 -> global average pool``, each part a named submodule,
so that a SelfCon exit can hang after any of ``attach_points`` and copy the stages that follow. The "cifar" stem
(3x3 conv, stride 1, no max-pool) keeps 32 px inputs at full resolution in ``layer1``; the "imagenet" stem
(7x7 conv, stride 2, 3x3 max-pool) divides the resolution by 4. ``width`` scales every stage's base width
(64, 128, 256, 512). The registry itself lives in ``trainables.nets._registry``.
"""

from __future__ import annotations

from torch import Tensor, nn

from trainables.nets._registry import (
    Backbone,
    Stem,
    check_backbone_args,
    init_weights,
    register_table,
    scale_width,
)

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet34", "resnet50", "resnet101"]

BASE_WIDTHS: tuple[int, int, int, int] = (64, 128, 256, 512)
ATTACH_POINTS: tuple[str, ...] = ("layer1", "layer2", "layer3")

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


class ResNet(Backbone):
    """ResNet backbone without a classifier: ``x [B, in_channels, H, W] -> [B, feature_dim]``.

    Attributes:
        feature_dim: channels of the pooled feature, ``round(512 * width) * block.expansion``.
        stage_names: the residual stages, in order.
        attach_points: the stages an exit can hang after (all but the last).
        stage_channels: output channels of each stage.
    """

    family = "resnet"
    stage_names: tuple[str, ...] = ("layer1", "layer2", "layer3", "layer4")
    attach_points: tuple[str, ...] = ATTACH_POINTS

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
        check_backbone_args(stem=stem, width=width, in_channels=in_channels)
        if len(num_blocks) != len(self.stage_names) or min(num_blocks) < 1:
            raise ValueError(f"`num_blocks` must be 4 positive counts, but got num_blocks={num_blocks!r}")
        self.block = block
        self.num_blocks = tuple(num_blocks)
        self.widths = tuple(scale_width(base, width) for base in BASE_WIDTHS)
        self.zero_init_residual = zero_init_residual

        self.stem = _make_stem(stem, in_channels, self.widths[0])
        in_planes = self.widths[0]
        self.stage_channels: dict[str, int] = {}
        for index, (name, blocks) in enumerate(zip(self.stage_names, num_blocks)):
            self.add_module(name, self._make_stage(index, in_planes, blocks))
            in_planes = self.widths[index] * block.expansion
            self.stage_channels[name] = in_planes
        self.final = nn.Identity()
        self.feature_dim = in_planes
        init_weights(self, zero_init_residual=zero_init_residual)

    def _stage_depth(self, index: int) -> int:
        return self.num_blocks[index]

    def _make_stage(self, index: int, in_planes: int, blocks: int) -> nn.Sequential:
        """Stage ``index``: ``blocks`` blocks of width ``widths[index]``, the first strided (except in layer1)."""
        planes = self.widths[index]
        layers = []
        for block_stride in [1 if index == 0 else 2] + [1] * (blocks - 1):
            layers.append(self.block(in_planes, planes, stride=block_stride))
            in_planes = planes * self.block.expansion
        return nn.Sequential(*layers)

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


#: name -> (block, blocks per stage)
DEPTHS: dict[str, tuple[Block, tuple[int, int, int, int]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
}

resnet18, resnet34, resnet50, resnet101 = register_table(
    {
        name: (
            f"ResNet-{name[6:]}: {block.__name__} x {blocks}; ``feature_dim = {512 * block.expansion} * width``.",
            {"block": block, "num_blocks": blocks},
        )
        for name, (block, blocks) in DEPTHS.items()
    },
    ResNet,
    family="resnet",
    attach_points=ATTACH_POINTS,
    module=__name__,
).values()
