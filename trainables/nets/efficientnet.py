"""``effnet_small``: an EfficientNet-B0-style backbone with named stages (family ``efficientnet``).

B0's seven MBConv stages (Tan & Le, 2019, table 1) with squeeze-and-excitation (ratio 0.25) and SiLU, then a 1x1
"top" conv (``final``) to ``512 * width`` channels, as in the SelfCon reference, instead of B0's 1280; no dropout or
drop-connect in the trunk. Hence the name: B0's layout, a smaller head. One exit hangs after ``stage4`` (80 channels);
it is the reference's whatever ``selfcon_size`` (:meth:`EfficientNet.build_exit_layers`).

Stems: "imagenet" is B0's (3x3 stride-2 conv, stage2 strided: 32x down-sampling); "cifar" uses stride 1 in both
(8x down-sampling, 32 px -> 4x4 before the pool), the reference's CIFAR adaptation.
"""

from __future__ import annotations

from typing import NamedTuple

from torch import Tensor, nn

from trainables.nets._registry import (
    Backbone,
    Stem,
    check_backbone_args,
    init_weights,
    register_backbone,
    scale_width,
)

__all__ = ["EfficientNet", "MBConv", "effnet_small"]


class StageSpec(NamedTuple):
    """One MBConv stage of the B0 table."""

    expand: int  # expansion ratio of the inverted bottleneck
    kernel: int  # depthwise kernel size
    stride: int  # stride of the stage's first block (ImageNet layout)
    channels: int  # output channels at width 1
    repeats: int  # blocks


B0_STAGES: tuple[StageSpec, ...] = (
    StageSpec(1, 3, 1, 16, 1),
    StageSpec(6, 3, 2, 24, 2),
    StageSpec(6, 5, 2, 40, 2),
    StageSpec(6, 3, 2, 80, 3),
    StageSpec(6, 5, 1, 112, 3),
    StageSpec(6, 5, 2, 192, 4),
    StageSpec(6, 3, 1, 320, 1),
)
STEM_CHANNELS = 32
TOP_CHANNELS = 512
ATTACH_POINTS: tuple[str, ...] = ("stage4",)
EXIT_DROPOUT = 0.2  # the reference's B0 dropout_rate, applied to the pooled exit feature


class MBConv(nn.Module):
    """Mobile inverted bottleneck: ``1x1 expand -> kxk depthwise (stride) -> SE -> 1x1 project (+ x)``.

    ``[B, in_planes, H, W] -> [B, planes, H/stride, W/stride]``; BN after each conv, SiLU after the first two; the
    residual is added when the block keeps resolution and channels. SE squeezes to ``max(1, in_planes // 4)``.
    """

    def __init__(self, in_planes: int, planes: int, *, expand: int, kernel: int, stride: int) -> None:
        super().__init__()
        hidden = in_planes * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(in_planes, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.SiLU(inplace=True)]
        layers += [
            nn.Conv2d(hidden, hidden, kernel, stride=stride, padding=kernel // 2, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.SiLU(inplace=True),
        ]
        self.expand_dw = nn.Sequential(*layers)
        squeezed = max(1, in_planes // 4)
        self.se = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(hidden, squeezed, 1),
            nn.SiLU(inplace=True),
            nn.Conv2d(squeezed, hidden, 1),
            nn.Sigmoid(),
        )
        self.project = nn.Sequential(nn.Conv2d(hidden, planes, 1, bias=False), nn.BatchNorm2d(planes))
        self.residual = stride == 1 and in_planes == planes

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.project[1]

    def forward(self, x: Tensor) -> Tensor:
        out = self.expand_dw(x)
        out = self.project(out * self.se(out))
        return out + x if self.residual else out


class EfficientNet(Backbone):
    """EfficientNet backbone without a classifier: ``x [B, in_channels, H, W] -> [B, round(512 * width)]``.

    Args:
        stages: the MBConv stages (B0's by default).
        stem: "cifar" (no down-sampling in the stem and stage2) or "imagenet" (B0's strides).
        width: multiplier of every stage's channels.
        in_channels: channels of the input images.
        zero_init_residual: zero the last BN of every residual block so it starts as the identity.
    """

    family = "efficientnet"
    attach_points: tuple[str, ...] = ATTACH_POINTS

    def __init__(
        self,
        stages: tuple[StageSpec, ...] = B0_STAGES,
        *,
        stem: Stem = "cifar",
        width: float = 1.0,
        in_channels: int = 3,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        check_backbone_args(stem=stem, width=width, in_channels=in_channels)
        if len(stages) < 5:
            raise ValueError(f"`stages` must hold at least 5 stages (exits hang after stage4), but got {len(stages)}")
        self.stage_names = tuple(f"stage{i + 1}" for i in range(len(stages)))
        strides = [s.stride for s in stages]
        if stem == "cifar":
            strides[1] = 1
        self.stages = tuple(s._replace(stride=st) for s, st in zip(stages, strides))
        self.widths = tuple(scale_width(s.channels, width) for s in stages)
        self.top_channels = scale_width(TOP_CHANNELS, width)
        self.zero_init_residual = zero_init_residual

        stem_width = scale_width(STEM_CHANNELS, width)
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, stem_width, 3, stride=1 if stem == "cifar" else 2, padding=1, bias=False),
            nn.BatchNorm2d(stem_width),
            nn.SiLU(inplace=True),
        )
        self.stage_channels: dict[str, int] = {}
        in_planes = stem_width
        for index, name in enumerate(self.stage_names):
            self.add_module(name, self._make_stage(index, in_planes, self.stages[index].repeats))
            in_planes = self.widths[index]
            self.stage_channels[name] = in_planes
        self.final = self._make_top(in_planes)
        self.feature_dim = self.top_channels
        init_weights(self, zero_init_residual=zero_init_residual)

    def _stage_depth(self, index: int) -> int:
        return self.stages[index].repeats

    def _tail_top(self, in_planes: int) -> tuple[nn.Module, int]:
        return self._make_top(in_planes), self.top_channels

    def build_exit_layers(self, after: str, *, size: str) -> tuple[nn.Module, nn.Module, int]:
        """The reference's EfficientNet exit, whatever ``size``: ``Conv1x1(C_s -> top) -> BN -> SiLU``, pool,
        ``Dropout(0.2) -> Linear(top -> top)`` (``top = 512 * width``; ``C_s = 80 * width`` after stage4)."""
        self._check_tail(after, "same")
        if size not in ("fc", "small", "same"):
            raise ValueError(f"`size` must be one of ['fc', 'small', 'same'], but got size={size!r}")
        body = nn.Sequential(nn.Conv2d(self.stage_channels[after], self.top_channels, 1, bias=False),
                             nn.BatchNorm2d(self.top_channels), nn.SiLU(inplace=True))
        init_weights(body)
        post = nn.Sequential(nn.Dropout(EXIT_DROPOUT), nn.Linear(self.top_channels, self.top_channels))
        return body, post, self.top_channels

    def _make_stage(self, index: int, in_planes: int, repeats: int) -> nn.Sequential:
        """Stage ``index``: ``repeats`` MBConv blocks, the first with the stage's stride."""
        spec, planes = self.stages[index], self.widths[index]
        layers = []
        for stride in [spec.stride] + [1] * (repeats - 1):
            layers.append(MBConv(in_planes, planes, expand=spec.expand, kernel=spec.kernel, stride=stride))
            in_planes = planes
        return nn.Sequential(*layers)

    def _make_top(self, in_planes: int) -> nn.Sequential:
        """The closing ``1x1 conv -> BN -> SiLU`` to ``top_channels``."""
        return nn.Sequential(
            nn.Conv2d(in_planes, self.top_channels, 1, bias=False),
            nn.BatchNorm2d(self.top_channels),
            nn.SiLU(inplace=True),
        )

@register_backbone("effnet_small", family="efficientnet", attach_points=ATTACH_POINTS)
def effnet_small(
    *, stem: Stem = "cifar", width: float = 1.0, in_channels: int = 3, zero_init_residual: bool = False
) -> EfficientNet:
    """EfficientNet-B0's MBConv stages with a 512-channel top conv; ``feature_dim = 512 * width``."""
    return EfficientNet(B0_STAGES, stem=stem, width=width, in_channels=in_channels,
                        zero_init_residual=zero_init_residual)
