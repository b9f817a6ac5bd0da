"""Wide ResNet WRN-16-8 as a backbone with named stages (family ``wrn``; Zagoruyko & Komodakis, 2016).

``stem -> layer1 -> layer2 -> layer3 -> BN-ReLU -> global average pool``. Depth 16 gives ``(16 - 4) / 6 = 2``
pre-activation blocks per stage; widening factor 8 gives stage widths ``(128, 256, 512) * width`` after a
``16 * width`` stem, so ``feature_dim = 512 * width``. Exits hang after layer1 and layer2. The "cifar" stem is one
3x3 conv; the "imagenet" stem a 7x7 stride-2 conv and a 3x3 stride-2 max-pool, as for the ResNets.

The blocks are the SelfCon reference's ``wide_basic``: every conv (and the 1x1 shortcut) has a bias, dropout 0.3
sits between the first conv and the second BN (also during contrastive pretraining), and the *second* conv carries
the stride. A SelfCon tail of this family is blocks only, without the closing BN-ReLU, as the reference's.
"""

from __future__ import annotations

from torch import Tensor, nn

from trainables.nets._registry import (
    Backbone,
    Stem,
    check_backbone_args,
    init_weights,
    register_backbone,
    scale_width,
)

__all__ = ["WideBasic", "WideResNet", "wrn16_8"]

ATTACH_POINTS: tuple[str, ...] = ("layer1", "layer2")
DROPOUT = 0.3  # the reference's wrn_16_8 dropout_rate, active whenever the network is in train mode


class WideBasic(nn.Module):
    """Pre-activation block ``shortcut(x) + conv2(relu(bn2(dropout(conv1(relu(bn1(x)))))))`` (the reference's).

    ``[B, in_planes, H, W] -> [B, planes, H/s, W/s]``; ``conv2`` carries the stride; convs have biases; the shortcut
    is a strided 1x1 conv (with bias) when the block changes resolution or channels, else the identity.
    """

    def __init__(self, in_planes: int, planes: int, *, stride: int = 1, dropout: float = DROPOUT) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, kernel_size=3, padding=1, bias=True)
        self.dropout = nn.Dropout(p=dropout)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=True)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut = (
            None if stride == 1 and in_planes == planes
            else nn.Conv2d(in_planes, planes, kernel_size=1, stride=stride, bias=True)
        )

    def forward(self, x: Tensor) -> Tensor:
        out = self.dropout(self.conv1(self.relu(self.bn1(x))))
        out = self.conv2(self.relu(self.bn2(out)))
        return out + (x if self.shortcut is None else self.shortcut(x))


class WideResNet(Backbone):
    """WRN-``depth``-``widen`` backbone without a classifier: ``x [B, in_channels, H, W] -> [B, feature_dim]``.

    Args:
        depth: ``6 n + 4`` (n blocks per stage).
        widen: widening factor k; stage widths ``(16 k, 32 k, 64 k) * width``.
        stem: "cifar" (3x3 conv) or "imagenet" (7x7 stride-2 conv + max-pool).
        width: channel multiplier on top of ``widen``.
        in_channels: channels of the input images.
    """

    family = "wrn"
    stage_names: tuple[str, ...] = ("layer1", "layer2", "layer3")
    attach_points: tuple[str, ...] = ATTACH_POINTS

    def __init__(
        self, depth: int, widen: int, *, stem: Stem = "cifar", width: float = 1.0, in_channels: int = 3
    ) -> None:
        super().__init__()
        check_backbone_args(stem=stem, width=width, in_channels=in_channels)
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"`depth = 6 n + 4` with n >= 1 must hold, but got depth={depth!r}")
        if widen < 1:
            raise ValueError(f"`widen >= 1` must hold, but got widen={widen!r}")
        self.blocks = (depth - 4) // 6
        stem_width = scale_width(16, width)
        self.widths = tuple(scale_width(base * widen, width) for base in (16, 32, 64))
        if stem == "cifar":
            self.stem: nn.Module = nn.Conv2d(in_channels, stem_width, kernel_size=3, padding=1, bias=True)
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(in_channels, stem_width, kernel_size=7, stride=2, padding=3, bias=True),
                nn.MaxPool2d(kernel_size=3, stride=2, padding=1),
            )
        self.stage_channels: dict[str, int] = {}
        in_planes = stem_width
        for index, name in enumerate(self.stage_names):
            self.add_module(name, self._make_stage(index, in_planes, self.blocks))
            in_planes = self.widths[index]
            self.stage_channels[name] = in_planes
        self.final = _closing(in_planes)
        self.feature_dim = in_planes
        init_weights(self)

    def _stage_depth(self, index: int) -> int:
        return self.blocks

    def _tail_depth(self, index: int, size: str) -> int:
        """The reference's ``small`` WRN tail: ``int((n + 1) / 2)`` blocks per stage."""
        return self.blocks if size == "same" else (self.blocks + 1) // 2

    def _make_stage(self, index: int, in_planes: int, blocks: int) -> nn.Sequential:
        """Stage ``index``: ``blocks`` wide blocks, the first strided (except in layer1)."""
        planes = self.widths[index]
        layers = []
        for stride in [1 if index == 0 else 2] + [1] * (blocks - 1):
            layers.append(WideBasic(in_planes, planes, stride=stride))
            in_planes = planes
        return nn.Sequential(*layers)

def _closing(channels: int) -> nn.Sequential:
    """The BN-ReLU that closes a pre-activation network before pooling."""
    return nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(inplace=True))


@register_backbone("wrn16_8", family="wrn", attach_points=ATTACH_POINTS)
def wrn16_8(
    *, stem: Stem = "cifar", width: float = 1.0, in_channels: int = 3, zero_init_residual: bool = False
) -> WideResNet:
    """WRN-16-8: 2 pre-activation blocks per stage, widths (128, 256, 512); ``feature_dim = 512 * width``."""
    if zero_init_residual:
        raise ValueError("`zero_init_residual` must be False for WRN (its pre-activation branches end in a conv, "
                         "not a BN), but got True")
    return WideResNet(16, 8, stem=stem, width=width, in_channels=in_channels)
