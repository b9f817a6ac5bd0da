"""CMC: Contrastive Multiview Coding (Tian, Krishnan, Isola 2019; HobbitLong/CMC), two colour views with a memory bank.

Views: one random resized crop + flip of each image (the reference's default augmentation; ``color_jitter`` adds its
``--aug CJ`` jitter and grayscale) in [0, 1] RGB, converted on the device to a colour space
(:func:`trainables.data.augment.to_lab` / ``to_ycbcr``, batched), normalised with the reference's per-channel mean/std
of that space, and split into two channel groups: Lab -> L (1 channel) and ab (2), YCbCr -> Y and CbCr (``rgb``: R and
GB, normalised with the dataset's mean/std). A 1-channel dataset is treated as gray RGB. ``view_split="channels"``
makes each channel a view (L, a, b; Y, Cb, Cr; R, G, B), contrasted as the paper's section 3.3: ``view_mode="core"``
pairs the first view with each other one, ``"full"`` every pair (the full graph); the loss is the sum over pairs.

Model (:class:`CMCModel`): one encoder per view, each a project backbone (``build_backbone(..., in_channels=1 or 2)``,
width ``TrainConfig.width * encoder_width``; the reference's ResNets are width 0.5 / 1 / 2 of a ResNet-50), or with
``encoder=alexnet`` the paper's AlexNet half (:class:`trainables.nets.alexnet.AlexNetHalf`, same width rule) followed
by a linear embedding to ``feat_dim`` and L2 normalisation; a :class:`trainables.nets.MemoryBank` per view with one
row per training image (``RunShape.num_samples``), momentum ``nce_m``; the buffer ``z`` of the two NCE normalisation
constants (-1 = not yet set).

Loss (per step, for each anchor i with dataset row y_i): ``1 + nce_k`` bank rows, the positive ``y_i`` first, then
``nce_k`` rows drawn uniformly from the *other* ``n - 1`` rows, from a generator seeded by ``(seed, step, rank)``.
Both directions are used and summed, as the reference: the L anchor ``f_L`` is scored against the ab bank and the ab
anchor against the L bank, ``s = f . m``; with more views, both directions of every contrasted pair
(``CMCConfig.directions``), each with its own ``Z``. NCE (default, the reference's ``NCEAverage`` +
``NCECriterion``, paper eq. 12): ``h = exp(s / nce_t) / Z`` with ``Z = mean(exp(s / nce_t)) * n`` of the first batch,
per direction, then :func:`trainables.losses.nce_loss`; softmax: :func:`trainables.losses.nce_softmax_loss` of
``s / nce_t``. After the optimiser step every worker updates every bank with the *gathered* features and indices of
the global batch (``m_i <- normalize(nce_m m_i + (1 - nce_m) f_i)``), so the copies stay equal without broadcasting.

Evaluation: ``backbone`` = every view encoder's pooled features concatenated (kNN and ``linear_top1``), plus each
encoder alone (``view_l`` / ``view_ab`` or ``view_y`` / ``view_cbcr``, ..., probed as ``view_l_top1``, ...) and their
``ensemble_top1``.

Deliberate differences from the reference:
- negatives exclude the anchor's own row (the reference may draw it as a "negative"); drawn from an explicit
  generator so a resumed run draws the same negatives;
- under DDP each anchor's negatives come from the one global bank (the reference is DataParallel only), ``Z`` is the
  mean over all workers' first batches, and the banks are left out of DDP's buffer broadcast;
- scores and losses are computed in float32 outside autocast (``exp(s / T)`` reaches 1e6 at T = 0.07);
- ``nce_k >= n`` is refused before launch (the reference crashes later);
- an ``rgb`` split (R | GB, not in the paper) for gray datasets, where ab / CbCr carry nothing;
- the AlexNet halves pool conv5 adaptively to 6 x 6 (the reference flattens it, so only 224 px inputs fit) and are
  probed on fc7 features, not the reference's conv5.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from trainables import distributed
from trainables.config import ConfigError, TrainConfig, check_choice, check_range
from trainables.data.augment import AugmentConfig, BatchAugment, to_lab, to_ycbcr
from trainables.data.checks import default_image_size
from trainables.losses import nce_loss, nce_softmax_loss
from trainables.methods import register_method
from trainables.methods.base import Batch, Encoder, Method, RunShape, unwrap
from trainables.metrics import MetricNames
from trainables.nets import MemoryBank, build_backbone, projection_head
from trainables.nets.alexnet import MIN_IMAGE_SIZE, AlexNetHalf

__all__ = ["COLOR_SPACES", "CMC", "CMCConfig", "CMCModel", "ColorSpace"]


@dataclass(frozen=True)
class ColorSpace:
    """A colour space of CMC's views: the batched conversion, the reference's normalisation, the channel split."""

    convert: Callable[[Tensor], Tensor]  # float RGB [B, 3, H, W] in [0, 1] -> [B, 3, H, W] in this space
    mean: tuple[float, float, float] | None  # None: the dataset's mean/std (RGB)
    std: tuple[float, float, float] | None
    views: tuple[tuple[str, int], ...]  # (name, channels) of each view of the two-view split, in channel order
    channels: tuple[str, str, str]  # the name of each channel: one view each under ``view_split="channels"``

    def split(self, view_split: str) -> tuple[tuple[str, int], ...]:
        """``(name, channels)`` of each view: the paper's two groups (``pair``) or one view per channel."""
        return self.views if view_split == "pair" else tuple((name, 1) for name in self.channels)


#: The reference's ``--view Lab`` / ``YCbCr`` normalisations (train_CMC.py).
COLOR_SPACES: dict[str, ColorSpace] = {
    "lab": ColorSpace(to_lab, (50.0, (-86.183 + 98.233) / 2, (-107.857 + 94.478) / 2),
                      (50.0, (86.183 + 98.233) / 2, (107.857 + 94.478) / 2), (("l", 1), ("ab", 2)), ("l", "a", "b")),
    "ycbcr": ColorSpace(to_ycbcr, (116.151, 121.080, 132.342), (109.500, 111.855, 111.964), (("y", 1), ("cbcr", 2)),
                        ("y", "cb", "cr")),
    # R | GB: not in the paper; on gray images (digits) the only split whose two views both carry the image
    "rgb": ColorSpace(lambda x: x, None, None, (("r", 1), ("gb", 2)), ("r", "g", "b")),
}


@dataclass(frozen=True)
class CMCConfig:
    """CMC settings (defaults: the reference's train_CMC.py; its README says nce_k 4096)."""

    nce_k: int = 16384  # negatives per anchor, drawn from the memory bank; must be < the training images
    nce_t: float = 0.07  # temperature T of exp(f . m / T) (the reference uses 0.1 on STL-10)
    nce_m: float = 0.5  # memory-bank momentum: m_i <- normalize(nce_m m_i + (1 - nce_m) f_i)
    softmax: bool = False  # cross-entropy over [positive, K negatives] / T instead of NCE (eq. 12)
    feat_dim: int = 128  # embedding dimension of each view
    color_space: Literal["lab", "ycbcr", "rgb"] = "lab"  # views: L | ab, Y | CbCr, or R | GB
    encoder_width: float = 0.5  # each view's encoder has width TrainConfig.width * encoder_width (reference 0.5/1/2)
    encoder: Literal["backbone", "alexnet"] = "backbone"  # TrainConfig.backbone or the AlexNet halves (>= 63 px)
    crop_scale_min: float = 0.2  # lower bound of RandomResizedCrop's area scale (the reference's crop_low)
    color_jitter: bool = False  # the later reference's --aug CJ: ColorJitter(0.4, 0.4, 0.4, 0.4) + RandomGrayscale(0.2)
    view_split: Literal["pair", "channels"] = "pair"  # pair: L | ab (Y | CbCr, R | GB); channels: L, a, b (3 views)
    view_mode: Literal["core", "full"] = "core"  # > 2 views: the first view against each other (core) or every pair

    def __post_init__(self) -> None:
        check_range("nce_k", self.nce_k, low=1)
        check_range("nce_t", self.nce_t, low=0.0, low_inclusive=False)
        check_range("nce_m", self.nce_m, low=0.0, high=1.0, high_inclusive=False)
        check_range("feat_dim", self.feat_dim, low=1)
        check_choice("color_space", self.color_space, tuple(COLOR_SPACES))
        check_range("encoder_width", self.encoder_width, low=0.0, low_inclusive=False)
        check_range("crop_scale_min", self.crop_scale_min, low=0.0, high=1.0, low_inclusive=False)
        check_choice("encoder", self.encoder, ("backbone", "alexnet"))
        check_choice("view_split", self.view_split, ("pair", "channels"))
        check_choice("view_mode", self.view_mode, ("core", "full"))

    @property
    def view_pairs(self) -> tuple[tuple[int, int], ...]:
        """The contrasted view pairs ``(i, j)``: ``core`` pairs view 0 with each other view, ``full`` every ``i < j``
        (the same single pair with two views)."""
        n = len(COLOR_SPACES[self.color_space].split(self.view_split))
        if self.view_mode == "core":
            return tuple((0, j) for j in range(1, n))
        return tuple((i, j) for i in range(n) for j in range(i + 1, n))

    @property
    def directions(self) -> tuple[tuple[int, int], ...]:
        """``(anchor view, bank view)`` of each scored direction: both of every pair, ``2 len(view_pairs)``."""
        return tuple(d for i, j in self.view_pairs for d in ((i, j), (j, i)))


class CMCModel(nn.Module):
    """The view encoders (``encoders``), their memory banks (``banks``, no gradient) and the NCE constants ``z``,
    one per scored direction (``num_directions``, default one per view).

    ``forward(views) -> [f_v [B, feat_dim] L2-normalised, one per view]``.
    """

    z: Tensor

    def __init__(self, encoders: list[Encoder], banks: list[MemoryBank], num_directions: int | None = None) -> None:
        super().__init__()
        self.encoders = nn.ModuleList(encoders)
        self.banks = nn.ModuleList(banks)
        directions = len(encoders) if num_directions is None else num_directions
        self.register_buffer("z", torch.full((directions,), -1.0))  # per direction; < 0 = not set yet
        # Every worker updates its banks and Z from gathered values, so they are equal everywhere: DDP need not
        # broadcast them (a bank of ImageNet is 650 MB) before each forward.
        self._ddp_params_and_buffers_to_ignore = [f"banks.{v}.memory" for v in range(len(banks))] + ["z"]

    def forward(self, views: list[Tensor]) -> list[Tensor]:
        return [encoder(view) for encoder, view in zip(self.encoders, views, strict=True)]


def _seed(*entropy: int) -> int:
    return int(np.random.SeedSequence(list(entropy)).generate_state(1)[0])


@register_method
class CMC(Method):
    """Contrastive multiview coding of colour-channel views against per-view memory banks (NCE or softmax)."""

    name = "cmc"
    loss_draws_random = True  # the bank's negatives, drawn in `loss` (sample_indices)
    Config = CMCConfig
    #: ResNet recipe of train_CMC.py: batch 128, SGD lr 0.03, decay x0.1 at 120/160/200, 240 epochs.
    recipe = {"batch_size": 128, "optimizer": "sgd", "lr": 0.03, "momentum": 0.9, "weight_decay": 1e-4,
              "schedule": "step", "lr_decay_epochs": (120, 160, 200), "lr_decay_rate": 0.1, "epochs": 240}
    presets = {
        # Digits are gray: Lab's ab (YCbCr's CbCr) is constant, so the cross-view loss has nothing to contrast; R | GB
        # views both carry the digit. Measured 2026-11-29: this setting does NOT beat the untrained encoder's kNN
        # (evidence in tests/test_methods.py NOT_LEARNING_ON_DIGITS: the views' mean embeddings run apart while the
        # banks lag, and identical R|GB pixels need no semantics to match).
        "digits": {"dataset": "digits", "width": 0.25, "batch_size": 128, "epochs": 15, "optimizer": "adam",
                   "lr": 1e-3, "weight_decay": 1e-5, "schedule": "cosine", "lr_decay_epochs": (), "nce_k": 1024,
                   "nce_t": 0.2, "softmax": True, "color_space": "rgb", "color_jitter": True, "crop_scale_min": 0.5},
        # the ImageNet-100 headline (75.8 %): softmax over 4096 negatives, ResNet-50 encoders
        "imagenet100": {"dataset": "imagenet100", "backbone": "resnet50", "softmax": True, "nce_k": 4096,
                        "crop_scale_min": 0.08},
        "stl10": {"dataset": "stl10", "nce_t": 0.1},
    }
    epoch_metrics = ("pos_prob",)

    @classmethod
    def metrics(cls, config: CMCConfig | None = None) -> MetricNames:
        """``pos_prob`` per epoch (mean h+ under NCE, softmax probability of the positive otherwise); final: a linear
        probe per view encoder (``view_l_top1``, ``view_ab_top1`` / ``view_y_top1``, ``view_cbcr_top1``) and
        ``ensemble_top1``."""
        if config is not None:
            names = [name for name, _ in COLOR_SPACES[config.color_space].split(config.view_split)]
        else:
            names = list(dict.fromkeys(name for space in COLOR_SPACES.values() for split in ("pair", "channels")
                                       for name, _ in space.split(split)))
        return MetricNames(cls.epoch_metrics, (*(f"view_{name}_top1" for name in names), "ensemble_top1"))

    @classmethod
    def check_data(cls, config: CMCConfig, train: TrainConfig, num_samples: int) -> None:
        """``nce_k`` negatives are drawn from the other ``num_samples - 1`` rows: refuse ``nce_k >= num_samples``; the
        AlexNet halves need images of at least ``MIN_IMAGE_SIZE`` px."""
        if config.nce_k >= num_samples:
            raise ConfigError(f"`nce_k` must be smaller than the {num_samples} training images of {train.dataset}, "
                              f"but got nce_k={config.nce_k}")
        size = train.image_size or default_image_size(train.dataset)
        if config.encoder == "alexnet" and size is not None and size < MIN_IMAGE_SIZE:
            raise ConfigError(f"`encoder=alexnet` needs images of at least {MIN_IMAGE_SIZE} px, but {train.dataset} "
                              f"has {size} px: use encoder=backbone or a larger image_size")

    @property
    def space(self) -> ColorSpace:
        return COLOR_SPACES[self.config.color_space]

    @property
    def view_specs(self) -> tuple[tuple[str, int], ...]:
        """``(name, channels)`` of each view under the configured ``view_split``."""
        return self.space.split(self.config.view_split)

    def setup(self, shape: RunShape) -> None:
        if shape.num_samples < 2:
            raise ConfigError(f"CMC needs at least 2 training images for negatives, but got {shape.num_samples}")
        super().setup(shape)

    # -- model ---------------------------------------------------------------------------------------------------------
    def build(self) -> nn.Module:
        t, c = self.train, self.config
        stem = t.resolved_stem(self.data.image_size)
        encoders, banks = [], []
        for v, (_, channels) in enumerate(self.view_specs):
            width = t.width * c.encoder_width
            backbone = (AlexNetHalf(channels, width=width) if c.encoder == "alexnet"
                        else build_backbone(t.backbone, stem=stem, width=width, in_channels=channels))
            encoders.append(Encoder(backbone, projection_head(backbone.feature_dim, c.feat_dim, kind="linear"),
                                    normalize=True))
            banks.append(MemoryBank(self.shape.num_samples, c.feat_dim, c.nce_m, seed=_seed(t.seed, v)))
        return CMCModel(encoders, banks, num_directions=len(c.directions))

    # -- views ---------------------------------------------------------------------------------------------------------
    def _split(self, rgb: Tensor) -> list[Tensor]:
        """float RGB ``[B, 3 or 1, H, W]`` in [0, 1] -> the normalised views ``[B, c_v, H, W]`` of the colour space."""
        space = self.space
        if rgb.shape[1] == 1:
            rgb = rgb.expand(-1, 3, -1, -1)
        x = space.convert(rgb.clamp(0.0, 1.0))
        mean, std = (space.mean, space.std) if space.mean is not None else (self.data.mean, self.data.std)
        mean = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        x = (x - mean) / std
        return list(x.split([channels for _, channels in self.view_specs], dim=1))

    def augmentations(self) -> list[AugmentConfig]:
        """Crop + flip (the reference's default), with ``color_jitter`` also its ``CJ`` jitter and grayscale; one
        augmentation feeds both views (they are channels of the same augmented image)."""
        c = self.config
        return [AugmentConfig(self.data.image_size, scale=(c.crop_scale_min, 1.0), jitter=(0.4, 0.4, 0.4, 0.4),
                              jitter_p=1.0 if c.color_jitter else 0.0, grayscale_p=0.2 if c.color_jitter else 0.0)]

    def views(self, images: Tensor, generator: torch.Generator) -> list[Tensor]:
        if not hasattr(self, "_augment"):
            channels = self.data.channels
            self._augment = BatchAugment(self.augmentations()[0], mean=(0.0,) * channels, std=(1.0,) * channels)
        return self._split(self._augment(images, generator))

    # -- objective -----------------------------------------------------------------------------------------------------
    def sample_indices(self, indices: Tensor, *, step: int) -> Tensor:
        """``[B, 1 + nce_k]`` bank rows: each anchor's own row, then ``nce_k`` rows drawn uniformly (with replacement)
        from the other ``n - 1``, from a generator seeded by ``(seed, step, rank)``."""
        n, device = self.shape.num_samples, indices.device
        generator = torch.Generator(device=device).manual_seed(_seed(self.train.seed, step, distributed.rank()))
        negatives = torch.randint(n - 1, (indices.shape[0], self.config.nce_k), generator=generator, device=device)
        positives = indices.view(-1, 1)
        negatives += (negatives >= positives).long()  # skip the anchor's own row
        return torch.cat([positives, negatives], 1)

    def loss(self, model: nn.Module, views: list[Tensor], batch: Batch, *, step: int) -> tuple[Tensor, dict]:
        c = self.config
        module: CMCModel = unwrap(model)
        feats = model(views)
        idx = self.sample_indices(batch.indices.to(module.z.device), step=step)
        total, pos_prob = 0.0, 0.0
        with torch.autocast(feats[0].device.type, enabled=False):
            for d, (anchor, other) in enumerate(c.directions):
                logits = self._scores(feats[anchor].float(), module.banks[other].memory, idx) / c.nce_t  # [B, 1+K]
                if c.softmax:
                    total = total + nce_softmax_loss(logits)
                    pos_prob += logits.detach().softmax(1)[:, 0].mean()
                    continue
                e = logits.exp()
                if module.z[d] < 0:  # the reference's constant Z, fixed from the first batch (checkpointed)
                    with torch.no_grad():
                        module.z[d] = distributed.all_reduce_mean(e.detach().mean()) * self.shape.num_samples
                probs = e / module.z[d].clone()  # a constant: later writes to z must not touch the graph
                total = total + nce_loss(probs, n_data=self.shape.num_samples)
                pos_prob += probs.detach()[:, 0].mean()
        self._pending = (distributed.gather(batch.indices), [distributed.gather(f.detach().float()) for f in feats])
        return total, {"pos_prob": pos_prob / len(c.directions)}

    @staticmethod
    def _scores(anchor: Tensor, memory: Tensor, idx: Tensor) -> Tensor:
        """``s[i, k] = anchor[i] . memory[idx[i, k]]``: ``[B, D]``, ``[n, D]``, ``[B, 1+K]`` -> ``[B, 1+K]``. One
        ``[B, n]`` product when the bank is smaller than the gathered rows, else a gather of ``B (1+K)`` rows."""
        if memory.shape[0] <= idx.shape[1] * anchor.shape[1]:
            return (anchor @ memory.T).gather(1, idx)
        return torch.bmm(memory[idx], anchor.unsqueeze(2)).squeeze(2)

    def after_step(self, model: nn.Module, *, step: int) -> None:
        """Move each view's bank rows of the global batch towards their new features."""
        indices, feats = self._pending
        for bank, f in zip(unwrap(model).banks, feats, strict=True):
            bank.update(indices, f)
        del self._pending

    # -- evaluation ----------------------------------------------------------------------------------------------------
    def eval_features(self, model: nn.Module, x: Tensor) -> dict[str, Tensor]:
        """``x`` is normalised with the dataset's mean/std: undo it, convert, and return each encoder's pooled
        features (``view_<name>``) and their concatenation (``backbone``)."""
        module: CMCModel = unwrap(model)
        mean = torch.tensor(self.data.mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        std = torch.tensor(self.data.std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
        views = self._split(x * std + mean)
        out = {f"view_{name}": encoder.backbone(view)
               for (name, _), encoder, view in zip(self.view_specs, module.encoders, views, strict=True)}
        return {"backbone": torch.cat(list(out.values()), 1), **out}
