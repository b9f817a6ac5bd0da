"""Batched augmentation on the trial's device, every random draw taken from an explicit ``torch.Generator``.

:class:`BatchAugment` augments a whole batch in a few tensor ops, with per-sample parameters and torchvision's
semantics: random resized crop + horizontal flip (one bilinear ``grid_sample`` with per-sample affine grids), colour
jitter (brightness, contrast, saturation, hue, in a per-sample random order), grayscale, Gaussian blur (per-sample
sigma, depthwise convolution), solarize, then normalisation. On 1-channel images colour jitter does what torchvision
does: brightness and contrast apply, saturation, hue and grayscale leave the image as it is.

Every call draws one ``[B, 36]`` block of uniforms from the generator, whatever the config, so the generator state
(``generator.get_state()``) is all a checkpoint needs to resume the exact augmentation stream. The draws are made on
the generator's device (CPU or the images' device) and moved to the images' device.

Differences from torchvision worth knowing: crops are resampled bilinearly without antialiasing (torchvision
antialiases when a crop shrinks), which only matters for crops much larger than the output (ReLIC's local views).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "AugmentConfig",
    "BatchAugment",
    "eval_transform",
    "local_view_size",
    "multicrop",
    "relic_global",
    "relic_local",
    "supcon_augment",
    "to_lab",
    "to_ycbcr",
]

_ATTEMPTS = 10  # RandomResizedCrop's tries before it falls back to a centre crop
# Column layout of the per-call uniform draws [B, _DRAWS].
_AREA, _LOGR = slice(0, 10), slice(10, 20)
_TOP, _LEFT, _FLIP, _JIT_P = 20, 21, 22, 23
_JIT_F, _JIT_ORDER = slice(24, 28), slice(28, 32)
_GRAY_P, _BLUR_P, _BLUR_SIGMA, _SOLAR_P = 32, 33, 34, 35
_DRAWS = 36
_LUMA = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale weights
_HUE = 3  # index of hue among the jitter ops (brightness, contrast, saturation, hue)


def _fail(field: str, condition: str, value: Any) -> ValueError:
    return ValueError(f"`{condition}` must hold, but got {field}={value!r}")


def _floats(field: str, value: Any, n: int | None = None) -> tuple[float, ...]:
    """``value`` as a tuple of floats (of length ``n`` when given)."""
    what = f"{n} numbers" if n is not None else "a sequence of numbers"
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"`{field}` must be {what}, but got {field}={value!r}") from None
    if n is not None and len(out) != n:
        raise ValueError(f"`{field}` must be {what}, but got {field}={value!r}")
    return out


def _default_kernel(size: int) -> int:
    """SimCLR's kernel size, 10 % of the image side rounded up to odd, at least 3."""
    return max(3, int(0.1 * size) // 2 * 2 + 1)


@dataclass(frozen=True)
class AugmentConfig:
    """One augmentation pipeline; probabilities are per sample, ranges are ``(low, high)``."""

    size: int  # output side in pixels
    scale: tuple[float, float] = (0.2, 1.0)  # crop area as a fraction of the image area
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # crop aspect ratio w/h, sampled log-uniformly
    flip_p: float = 0.5  # horizontal flip probability
    jitter: tuple[float, float, float, float] = (0.4, 0.4, 0.4, 0.1)  # brightness, contrast, saturation, hue
    jitter_p: float = 0.8  # probability of colour jitter
    grayscale_p: float = 0.2  # probability of converting to grayscale
    blur_p: float = 0.0  # probability of Gaussian blur
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # blur sigma range in pixels
    blur_kernel: int | None = None  # odd blur kernel size; None: 10 % of size rounded up to odd, at least 3
    solarize_p: float = 0.0  # probability of solarizing
    solarize_threshold: float = 0.5  # pixels >= threshold (images in [0, 1]) are inverted

    def __post_init__(self) -> None:
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 1:
            raise _fail("size", "size >= 1 (an integer)", self.size)
        for field, n in (("scale", 2), ("ratio", 2), ("jitter", 4), ("blur_sigma", 2)):
            object.__setattr__(self, field, _floats(field, getattr(self, field), n))
        lo, hi = self.scale
        if not 0 < lo <= hi <= 1:
            raise _fail("scale", "0 < scale[0] <= scale[1] <= 1", self.scale)
        lo, hi = self.ratio
        if not 0 < lo <= hi < math.inf:
            raise _fail("ratio", "0 < ratio[0] <= ratio[1]", self.ratio)
        for field in ("flip_p", "jitter_p", "grayscale_p", "blur_p", "solarize_p"):
            if not 0 <= getattr(self, field) <= 1:
                raise _fail(field, f"0 <= {field} <= 1", getattr(self, field))
        if not all(0 <= v < math.inf for v in self.jitter[:3]) or not 0 <= self.jitter[3] <= 0.5:
            raise _fail("jitter", "jitter[:3] >= 0 and 0 <= jitter[3] <= 0.5 (brightness, contrast, saturation, hue)",
                        self.jitter)
        lo, hi = self.blur_sigma
        if not 0 < lo <= hi < math.inf:
            raise _fail("blur_sigma", "0 < blur_sigma[0] <= blur_sigma[1]", self.blur_sigma)
        k = self.blur_kernel
        if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1 or k % 2 == 0):
            raise _fail("blur_kernel", "blur_kernel is None or an odd integer >= 1", k)
        if not 0 <= self.solarize_threshold <= 1:
            raise _fail("solarize_threshold", "0 <= solarize_threshold <= 1", self.solarize_threshold)

    def replace(self, **changes: Any) -> AugmentConfig:
        """A copy with ``changes`` applied, validated like a new config (``aug.replace(scale=(0.08, 1.0))``)."""
        return dataclasses.replace(self, **changes)

    @property
    def kernel_size(self) -> int:
        """The blur kernel size in use."""
        return self.blur_kernel if self.blur_kernel is not None else _default_kernel(self.size)


# -- presets -----------------------------------------------------------------------------------------------------------
def supcon_augment(size: int) -> AugmentConfig:
    """SupContrast's pipeline: crop scale 0.2-1, flip, ColorJitter(0.4, 0.4, 0.4, 0.1) p=0.8, grayscale p=0.2."""
    return AugmentConfig(size=size, scale=(0.2, 1.0), flip_p=0.5, jitter=(0.4, 0.4, 0.4, 0.1), jitter_p=0.8,
                         grayscale_p=0.2)


def relic_global(size: int) -> AugmentConfig:
    """The sigmoid-contrastive ReLIC seed's global view (``scl/aug.py``): crop scale 0.1-1, flip,
    ColorJitter(0.8, 0.8, 0.8, 0.2) p=0.8, grayscale p=0.2, Gaussian blur always (sigma 0.1-2), solarize p=0.2 at
    127/255. Use ``dataclasses.replace`` for variants (e.g. BYOL's ``blur_p=0.5``)."""
    return AugmentConfig(size=size, scale=(0.1, 1.0), flip_p=0.5, jitter=(0.8, 0.8, 0.8, 0.2), jitter_p=0.8,
                         grayscale_p=0.2, blur_p=1.0, solarize_p=0.2, solarize_threshold=127 / 255)


def relic_local(size: int) -> AugmentConfig:
    """The seed's local view of images of side ``size``: a crop of side ``int(size * 3 / 7)`` (scale 0.05-1) with
    the global colour ops and blur kernel, without solarize (as in the seed)."""
    if isinstance(size, bool) or not isinstance(size, int):
        raise _fail("size", "size is an integer", size)
    local = int(size * 3 / 7)
    if local < 1:
        raise _fail("size", "int(size * 3 / 7) >= 1 (the local crop side)", size)
    return AugmentConfig(size=local, scale=(0.05, 1.0), flip_p=0.5, jitter=(0.8, 0.8, 0.8, 0.2), jitter_p=0.8,
                         grayscale_p=0.2, blur_p=1.0, blur_kernel=_default_kernel(size), solarize_p=0.0)


def local_view_size(size: int, ratio: float = 3 / 7) -> int:
    """Side of a local view of images of side ``size``: ``int(size * ratio)`` (truncated, as the seed's
    ``int(image_size * 3 / 7)``; 6 px for 16 px digits, 13 for CIFAR, 41 for STL-10). May be 0: callers validate."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise _fail("size", "size >= 1 (an integer)", size)
    if not 0 < ratio <= 1:
        raise _fail("ratio", "0 < ratio <= 1", ratio)
    return int(size * ratio)


def multicrop(size: int, num_global: int, num_local: int, *, local_ratio: float = 3 / 7,
              global_scale: tuple[float, float] = (0.1, 1.0),
              local_scale: tuple[float, float] = (0.05, 1.0)) -> list[AugmentConfig]:
    """Multi-crop pipelines (Caron et al., 2020; the sigmoid-contrastive seed's ``ViewGenerator``): ``num_global``
    :func:`relic_global` views of side ``size`` followed by ``num_local`` :func:`relic_local` views of side
    ``local_view_size(size, local_ratio)``, with crop area scales ``global_scale`` and ``local_scale`` (the seed's
    0.1-1 and 0.05-1 by default). One config per view, in that order; feed each to a :class:`BatchAugment`
    (``Method.views`` does)."""
    for field, value in (("num_global", num_global), ("num_local", num_local)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise _fail(field, f"{field} >= 0 (an integer)", value)
    views = [dataclasses.replace(relic_global(size), scale=global_scale)] * num_global
    if num_local:
        side = local_view_size(size, local_ratio)
        if side < 1:
            raise _fail("local_ratio", f"int(size * local_ratio) >= 1 (the local crop side) with size={size}",
                        local_ratio)
        views += [dataclasses.replace(relic_local(size), size=side, scale=local_scale)] * num_local
    return views


# -- tensor helpers ----------------------------------------------------------------------------------------------------
def _as_float(images: Any) -> Tensor:
    """uint8 -> float32 / 255; floating -> float32 (assumed in [0, 1]). Never modifies ``images``."""
    if not isinstance(images, Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"`images` must be a [B, C, H, W] tensor, but got images={shape}")
    if images.dtype == torch.uint8:
        return images.float().div_(255.0)
    if images.is_floating_point():
        return images.float()
    raise ValueError(f"`images` must be uint8 or floating point, but got images.dtype={images.dtype}")


def _stats(mean: Sequence[float], std: Sequence[float]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    mean_t, std_t = _floats("mean", mean), _floats("std", std)
    if len(mean_t) != len(std_t) or not mean_t:
        raise ValueError(f"`len(mean) == len(std) >= 1` must hold, but got mean={mean!r}, std={std!r}")
    if not all(math.isfinite(m) for m in mean_t):
        raise _fail("mean", "every mean is finite", mean)
    if not all(0 < s < math.inf for s in std_t):
        raise _fail("std", "every std > 0", std)
    return mean_t, std_t


_CONSTANTS: dict[tuple[Any, ...], Tensor] = {}


def _const(values: tuple[float, ...], like: Tensor) -> Tensor:
    """``values`` as a ``[1, len, 1, 1]`` tensor on ``like``'s device and dtype, made once (no copy per call)."""
    key = (values, like.device, like.dtype)
    if key not in _CONSTANTS:
        _CONSTANTS[key] = torch.tensor(values, dtype=like.dtype).view(1, -1, 1, 1).to(like.device)
    return _CONSTANTS[key]


def _normalize(x: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    if x.shape[1] != len(mean):
        raise ValueError(f"`images.shape[1] == len(mean)` must hold, but got images.shape={tuple(x.shape)}, "
                         f"mean={mean}")
    return (x - _const(mean, x)) / _const(std, x)


def _gray(x: Tensor) -> Tensor:
    """ITU-R 601 luma as torchvision computes it: ``[B, 3, H, W] -> [B, 1, H, W]`` (a 1-channel image is its own)."""
    return x if x.shape[1] == 1 else (x * _const(_LUMA, x)).sum(1, keepdim=True)


def _shift_hue(x: Tensor, shift: Tensor) -> Tensor:
    """torchvision's ``adjust_hue`` for a batch, hue shifted by ``shift[i]`` (in turns) per sample.

    The HSV round trip without S and V: a hue rotation keeps each pixel's max and min channel, so
    ``out = min + (max - min) * P(h)``, with ``P`` the fully saturated colour of hue ``h``: channel ``c`` (centred on
    hue 0, 1/3, 2/3 for R, G, B) is ``clamp(2 - d, 0, 1)``, ``d`` the circular distance from ``6h`` to ``6c``.
    """
    maxc, minc = x.amax(1), x.amin(1)
    spread = maxc - minc
    div = torch.where(spread == 0, torch.ones_like(spread), spread)
    r, g, b = x.unbind(1)
    h6 = torch.where(maxc == r, (g - b) / div, torch.where(maxc == g, (b - r) / div + 2.0, (r - g) / div + 4.0))
    h6 = (h6 + 6.0 * shift.view(-1, 1, 1)).unsqueeze(1)
    distance = (torch.remainder(h6 - _const((0.0, 2.0, 4.0), x) + 3.0, 6.0) - 3.0).abs_()
    return torch.addcmul(minc.unsqueeze(1), spread.unsqueeze(1), (2.0 - distance).clamp_(0.0, 1.0))


def _blend_step(x: Tensor, op: Tensor, factors: Tensor, active: Tensor | None) -> Tensor:
    """One jitter step: each sample applies op ``op[i]`` (0 brightness, 1 contrast, 2 saturation; 3 hue is a no-op
    here) as torchvision's ``blend(img, target, factor)``, ``target`` being black, the mean gray, or the gray image."""
    f = factors.gather(1, op[:, None]).squeeze(1)
    if active is not None:
        f = torch.where(active, f, torch.ones_like(f))
    f = f.view(-1, 1, 1, 1)
    gray = _gray(x)
    op4 = op.view(-1, 1, 1, 1)
    target = torch.where(op4 == 2, gray, torch.where(op4 == 1, gray.mean((1, 2, 3), keepdim=True),
                                                     torch.zeros_like(gray)))
    return torch.lerp(target.expand_as(x), x, f.expand_as(x)).clamp_(0.0, 1.0)  # f * x + (1 - f) * target


# -- the augmentation --------------------------------------------------------------------------------------------------
class BatchAugment:
    """Apply one :class:`AugmentConfig` to a batch: ``aug(images, generator) -> [B, C, size, size]`` float32,
    normalised with ``mean``/``std``, on the images' device.

    ``images`` are uint8, or float in [0, 1], ``[B, C, H, W]`` on any device; ``generator`` lives on the CPU or on
    that device. Each sample draws its own crop, flip, jitter factors and order, and ops.
    """

    def __init__(self, config: AugmentConfig, *, mean: Sequence[float], std: Sequence[float]) -> None:
        if not isinstance(config, AugmentConfig):
            raise TypeError(f"`config` must be an AugmentConfig, but got {type(config).__name__}")
        self.config = config
        self.mean, self.std = _stats(mean, std)

    def __repr__(self) -> str:
        return f"BatchAugment({self.config!r}, mean={self.mean}, std={self.std})"

    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"`generator` must be a torch.Generator, but got {type(generator).__name__}")
        x = _as_float(images)
        if x.shape[1] != len(self.mean):
            raise ValueError(f"`images.shape[1] == len(mean)` must hold, but got images.shape={tuple(x.shape)}, "
                             f"mean={self.mean}")
        cfg = self.config
        u = torch.rand(x.shape[0], _DRAWS, generator=generator, device=generator.device).to(x.device)
        x = self._crop_flip(x, u)
        if cfg.jitter_p > 0 and any(cfg.jitter) and x.shape[1] in (1, 3):
            x = self._jitter(x, u)
        if cfg.grayscale_p > 0 and x.shape[1] == 3:
            x = torch.where((u[:, _GRAY_P] < cfg.grayscale_p).view(-1, 1, 1, 1), _gray(x).expand_as(x), x)
        if cfg.blur_p > 0 and cfg.kernel_size > 1:
            x = self._blur(x, u)
        if cfg.solarize_p > 0:
            invert = (u[:, _SOLAR_P] < cfg.solarize_p).view(-1, 1, 1, 1) & (x >= cfg.solarize_threshold)
            x = torch.where(invert, 1.0 - x, x)
        return _normalize(x, self.mean, self.std)

    def _crop_flip(self, x: Tensor, u: Tensor) -> Tensor:
        """RandomResizedCrop + RandomHorizontalFlip: integer crop boxes as torchvision samples them, resampled to
        ``size`` by one bilinear grid_sample (a flip negates the grid's x axis)."""
        cfg = self.config
        b, c, height, width = x.shape
        area = float(height * width)
        target = area * (cfg.scale[0] + (cfg.scale[1] - cfg.scale[0]) * u[:, _AREA])
        log_lo, log_hi = math.log(cfg.ratio[0]), math.log(cfg.ratio[1])
        aspect = torch.exp(log_lo + (log_hi - log_lo) * u[:, _LOGR])
        w_try = torch.round(torch.sqrt(target * aspect))
        h_try = torch.round(torch.sqrt(target / aspect))
        ok = (w_try > 0) & (w_try <= width) & (h_try > 0) & (h_try <= height)
        first = ok.float().argmax(1, keepdim=True)  # the first attempt that fits, as torchvision's loop takes
        found = ok.any(1)
        # torchvision's fallback when no attempt fits: the largest centred crop within the ratio range.
        in_ratio = width / height
        if in_ratio < cfg.ratio[0]:
            fw, fh = width, int(round(width / cfg.ratio[0]))
        elif in_ratio > cfg.ratio[1]:
            fw, fh = int(round(height * cfg.ratio[1])), height
        else:
            fw, fh = width, height
        w = torch.where(found, w_try.gather(1, first).squeeze(1), torch.full_like(u[:, 0], fw))
        h = torch.where(found, h_try.gather(1, first).squeeze(1), torch.full_like(u[:, 0], fh))
        top = torch.minimum(torch.floor(u[:, _TOP] * (height - h + 1)), height - h)
        left = torch.minimum(torch.floor(u[:, _LEFT] * (width - w + 1)), width - w)
        top = torch.where(found, top, torch.full_like(top, (height - fh) // 2))
        left = torch.where(found, left, torch.full_like(left, (width - fw) // 2))
        sign = torch.where(u[:, _FLIP] < cfg.flip_p, -1.0, 1.0)
        # Output pixel centres in normalised coords (align_corners=False) map onto the crop box [left, left + w).
        theta = torch.zeros(b, 2, 3, dtype=x.dtype, device=x.device)
        theta[:, 0, 0] = w / width * sign
        theta[:, 0, 2] = (2 * left + w) / width - 1
        theta[:, 1, 1] = h / height
        theta[:, 1, 2] = (2 * top + h) / height - 1
        grid = F.affine_grid(theta, [b, c, cfg.size, cfg.size], align_corners=False)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def _jitter(self, x: Tensor, u: Tensor) -> Tensor:
        """ColorJitter with probability ``jitter_p``: per-sample factors and a per-sample random op order."""
        cfg = self.config
        apply = u[:, _JIT_P] < cfg.jitter_p
        draws = u[:, _JIT_F]
        one = torch.ones_like(draws[:, 0])
        factors = []
        for k, amount in enumerate(cfg.jitter[:3]):
            lo, hi = max(0.0, 1.0 - amount), 1.0 + amount
            factors.append(torch.where(apply, lo + (hi - lo) * draws[:, k], one))
        factors.append(one)  # the hue slot: neutral in the blend steps
        factors_t = torch.stack(factors, 1)
        order = u[:, _JIT_ORDER].argsort(1)  # uniform random permutation per sample, like torch.randperm(4)
        hue = cfg.jitter[_HUE] if x.shape[1] == 3 else 0.0  # saturation and hue leave a gray image as it is
        if hue == 0:
            for k in range(4):
                x = _blend_step(x, order[:, k], factors_t, None)
            return x
        # Hue is the costly op: run it once, with the blend steps each sample takes before it, then those after.
        hue_at = (order == _HUE).float().argmax(1)
        for k in range(3):
            x = _blend_step(x, order[:, k], factors_t, hue_at > k)
        shift = torch.where(apply, hue * (2.0 * draws[:, 3] - 1.0), torch.zeros_like(one))
        x = _shift_hue(x, shift)
        for k in range(1, 4):
            x = _blend_step(x, order[:, k], factors_t, hue_at < k)
        return x

    def _blur(self, x: Tensor, u: Tensor) -> Tensor:
        """GaussianBlur with probability ``blur_p``: per-sample sigma, separable depthwise convolution, reflect
        padding (as torchvision); samples without blur get a delta kernel."""
        cfg = self.config
        k = cfg.kernel_size
        r = k // 2
        b, c, height, width = x.shape
        sigma = cfg.blur_sigma[0] + (cfg.blur_sigma[1] - cfg.blur_sigma[0]) * u[:, _BLUR_SIGMA]
        t = torch.arange(k, dtype=x.dtype, device=x.device) - r
        kernel = torch.exp(-0.5 * (t / sigma[:, None]) ** 2)
        kernel = kernel / kernel.sum(1, keepdim=True)
        kernel = torch.where((u[:, _BLUR_P] < cfg.blur_p)[:, None], kernel, (t == 0).to(x.dtype).expand_as(kernel))
        weight = kernel.repeat_interleave(c, dim=0)  # [B * C, k]: sample i's kernel for each of its channels
        mode = "reflect" if r < min(height, width) else "replicate"
        y = F.pad(x, (r, r, r, r), mode=mode).reshape(1, b * c, height + 2 * r, width + 2 * r)
        y = F.conv2d(y, weight.view(b * c, 1, 1, k), groups=b * c)
        y = F.conv2d(y, weight.view(b * c, 1, k, 1), groups=b * c)
        return y.view(b, c, height, width)


def eval_transform(images: Tensor, *, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """No augmentation: uint8 (or float in [0, 1]) ``[B, C, H, W]`` -> normalised float32, same device."""
    mean_t, std_t = _stats(mean, std)
    return _normalize(_as_float(images), mean_t, std_t)


# -- colour spaces (CMC's views) ---------------------------------------------------------------------------------------
def _check_rgb(images: Any) -> Tensor:
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3 or not images.is_floating_point():
        got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, Tensor) else type(images).__name__
        raise ValueError(f"`images` must be float RGB [B, 3, H, W] in [0, 1], but got images={got}")
    return images


_XYZ_FROM_RGB = ((0.412453, 0.357580, 0.180423), (0.212671, 0.715160, 0.072169), (0.019334, 0.119193, 0.950227))
_D65_WHITE = (0.95047, 1.0, 1.08883)
_YCBCR_FROM_RGB = ((65.481, 128.553, 24.966), (-37.797, -74.203, 112.0), (112.0, -93.786, -18.214))


def _mix(x: Tensor, matrix: Sequence[Sequence[float]]) -> Tensor:
    m = torch.tensor(matrix, dtype=x.dtype, device=x.device)
    return torch.einsum("oc,bchw->bohw", m, x)


@torch.no_grad()
def to_lab(images: Tensor) -> Tensor:
    """sRGB (D65) -> CIE Lab as scikit-image's ``rgb2lab``: L in [0, 100], a and b roughly in [-128, 127].

    ``images``: float RGB ``[B, 3, H, W]`` in [0, 1]. CMC splits the result into L (1 channel) and ab (2 channels).
    """
    x = _check_rgb(images)
    linear = torch.where(x > 0.04045, ((x.clamp_min(0.04045) + 0.055) / 1.055) ** 2.4, x / 12.92)
    xyz = _mix(linear, _XYZ_FROM_RGB) / _const(_D65_WHITE, x)
    f = torch.where(xyz > 0.008856, xyz.clamp_min(0.008856) ** (1.0 / 3.0), 7.787 * xyz + 16.0 / 116.0)
    fx, fy, fz = f.unbind(1)
    return torch.stack((116.0 * fy - 16.0, 500.0 * (fx - fy), 200.0 * (fy - fz)), 1)


@torch.no_grad()
def to_ycbcr(images: Tensor) -> Tensor:
    """RGB -> YCbCr (ITU-R BT.601, studio swing) as scikit-image's ``rgb2ycbcr``: Y in [16, 235], Cb and Cr in
    [16, 240]. ``images``: float RGB ``[B, 3, H, W]`` in [0, 1]."""
    x = _check_rgb(images)
    return _mix(x, _YCBCR_FROM_RGB) + _const((16.0, 128.0, 128.0), x)
