"""VGG-13/16, with and without BatchNorm, as backbones with named stages (family ``vgg``).

The network is ``block1 -> ... -> block5 -> global average pool`` (no classifier): block ``i`` is ``n_i`` times
``3x3 conv (-> BN) -> ReLU`` at ``(64, 128, 256, 512, 512)[i] * width`` channels, closed by a 2x2 max-pool; VGG-13
has 2 convs per block, VGG-16 has (2, 2, 3, 3, 3) (Simonyan & Zisserman, 2015, configurations B and D). Exits hang
after block1..block4; ``feature_dim = 512 * width``.

VGG has no stem to adapt: its five max-pools take 32 px to 1x1 and 224 px to 7x7 before the global pool, so both
``stem`` values build the same network. The pools use ``ceil_mode`` so that inputs smaller than 32 px (the 16 px
digits) keep a 1x1 map instead of vanishing.
"""

from __future__ import annotations

from torch import nn

from trainables.nets._registry import (
    Backbone,
    Stem,
    check_backbone_args,
    init_weights,
    register_table,
    scale_width,
)

__all__ = ["VGG", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn"]

BASE_WIDTHS: tuple[int, ...] = (64, 128, 256, 512, 512)
DEPTHS: dict[str, tuple[int, ...]] = {"vgg13": (2, 2, 2, 2, 2), "vgg16": (2, 2, 3, 3, 3)}
ATTACH_POINTS: tuple[str, ...] = ("block1", "block2", "block3", "block4")


class VGG(Backbone):
    """VGG backbone without a classifier: ``x [B, in_channels, H, W] -> [B, 512 * width]``.

    Args:
        convs: convolutions per block (5 counts).
        batch_norm: BN after every convolution (the ``_bn`` variants).
        stem: accepted for the common factory signature; both values build the same network (see the module doc).
        width: multiplier of every block's channels.
        in_channels: channels of the input images.
    """

    family = "vgg"
    stage_names: tuple[str, ...] = ("block1", "block2", "block3", "block4", "block5")
    attach_points: tuple[str, ...] = ATTACH_POINTS

    def __init__(
        self,
        convs: tuple[int, ...],
        *,
        batch_norm: bool,
        stem: Stem = "cifar",
        width: float = 1.0,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        check_backbone_args(stem=stem, width=width, in_channels=in_channels)
        if len(convs) != len(self.stage_names) or min(convs) < 1:
            raise ValueError(f"`convs` must be 5 positive counts, but got convs={convs!r}")
        self.convs = tuple(convs)
        self.batch_norm = batch_norm
        self.widths = tuple(scale_width(base, width) for base in BASE_WIDTHS)
        self.stem = nn.Identity()
        self.stage_channels: dict[str, int] = {}
        in_planes = in_channels
        for index, name in enumerate(self.stage_names):
            self.add_module(name, self._make_stage(index, in_planes, convs[index]))
            in_planes = self.widths[index]
            self.stage_channels[name] = in_planes
        self.final = nn.Identity()
        self.feature_dim = in_planes
        init_weights(self)

    def _stage_depth(self, index: int) -> int:
        return self.convs[index]

    def _tail_depth(self, index: int, size: str) -> int:
        """Convs per block of an exit tail, as the reference: ``small`` one; ``same`` 3 for VGG-16 (cfg D) and 2
        otherwise, whatever the trunk's block had (VGG-16's block2 has 2, its ``same`` copy 3)."""
        return 1 if size == "small" else max(self.convs)

    def _make_stage(self, index: int, in_planes: int, convs: int) -> nn.Sequential:
        """Block ``index``: ``convs`` x (3x3 conv -> [BN] -> ReLU), then a 2x2 max-pool."""
        planes = self.widths[index]
        layers: list[nn.Module] = []
        for _ in range(convs):
            layers.append(nn.Conv2d(in_planes, planes, kernel_size=3, padding=1))
            if self.batch_norm:
                layers.append(nn.BatchNorm2d(planes))
            layers.append(nn.ReLU(inplace=True))
            in_planes = planes
        layers.append(nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))
        return nn.Sequential(*layers)

def _vgg(*, convs: tuple[int, ...], batch_norm: bool, stem: Stem, width: float, in_channels: int,
         zero_init_residual: bool) -> VGG:
    if zero_init_residual:
        raise ValueError("`zero_init_residual` must be False for VGG (it has no residual branches), but got True")
    return VGG(convs, batch_norm=batch_norm, stem=stem, width=width, in_channels=in_channels)


vgg13, vgg13_bn, vgg16, vgg16_bn = register_table(
    {
        f"{depth}{'_bn' if bn else ''}": (
            f"VGG-{depth[3:]} {'with BN after every conv' if bn else 'without BN'}: {convs} convs per block.",
            {"convs": convs, "batch_norm": bn},
        )
        for depth, convs in DEPTHS.items()
        for bn in (False, True)
    },
    _vgg,
    family="vgg",
    attach_points=ATTACH_POINTS,
    module=__name__,
).values()
