"""AlexNet halves of CMC (Tian et al. 2019, HobbitLong/CMC ``models/alexnet.py``): one per view, each with half of
AlexNet's channels, BatchNorm after every layer and no biases in the convolutions.

Not a registered backbone (no stages to hang SelfCon exits on, and it needs images of at least ``MIN_IMAGE_SIZE``
pixels); CMC builds it with ``encoder=alexnet``.
"""

from __future__ import annotations

from torch import Tensor, nn

from trainables.nets._registry import scale_width

__all__ = ["ALEXNET_CHANNELS", "MIN_IMAGE_SIZE", "AlexNetHalf"]

#: Full AlexNet's conv1..conv5 channels and fc6/fc7 width; the paper's halves are width 0.5.
ALEXNET_CHANNELS: tuple[int, ...] = (96, 256, 384, 384, 256, 4096)
#: The smallest side the three 3x3 / stride-2 max pools (after an 11x11 / stride-4 conv1) leave at least 1 pixel for.
MIN_IMAGE_SIZE = 63


def _conv(c_in: int, c_out: int, kernel: int, stride: int, pool: bool) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2 if kernel < 11 else 2, bias=False),
                               nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers, nn.MaxPool2d(3, 2)) if pool else nn.Sequential(*layers)


class AlexNetHalf(nn.Module):
    """``x [B, in_channels, H, W]`` (``H, W >= MIN_IMAGE_SIZE``) -> fc7 features ``[B, feature_dim]``.

    conv1 11x11/4 -> pool -> conv2 5x5 -> pool -> conv3, conv4, conv5 3x3 -> pool (each conv + BN + ReLU), then an
    adaptive average pool to 6x6 (the identity at 224 px, where the reference flattens 6x6 directly), fc6 and fc7
    (Linear + BN1d + ReLU). Channels are ``ALEXNET_CHANNELS`` times ``width`` (0.5: the reference's halves, with
    ``feature_dim = 2048``); the reference's fc8 + L2 norm is CMC's linear embedding.
    """

    def __init__(self, in_channels: int = 1, *, width: float = 0.5) -> None:
        super().__init__()
        if in_channels < 1 or width <= 0:
            raise ValueError(f"`in_channels >= 1` and `width > 0` must hold, but got in_channels={in_channels!r}, "
                             f"width={width!r}")
        c1, c2, c3, c4, c5, fc = (scale_width(c, width) for c in ALEXNET_CHANNELS)
        self.features = nn.Sequential(_conv(in_channels, c1, 11, 4, True), _conv(c1, c2, 5, 1, True),
                                      _conv(c2, c3, 3, 1, False), _conv(c3, c4, 3, 1, False), _conv(c4, c5, 3, 1, True))
        self.pool = nn.AdaptiveAvgPool2d(6)
        self.fc = nn.Sequential(nn.Linear(c5 * 36, fc), nn.BatchNorm1d(fc), nn.ReLU(inplace=True),
                                nn.Linear(fc, fc), nn.BatchNorm1d(fc), nn.ReLU(inplace=True))
        self.feature_dim = fc  # PyTorch's default initialisation, as the reference

    def forward(self, x: Tensor) -> Tensor:
        if min(x.shape[-2:]) < MIN_IMAGE_SIZE:
            raise ValueError(f"AlexNetHalf needs images of at least {MIN_IMAGE_SIZE} px, but got {tuple(x.shape)}")
        return self.fc(self.pool(self.features(x)).flatten(1))
