"""SelfCon: single-view contrastive learning with sub-network exits (Bae et al., AAAI 2023), after
raymin0223/self-contrastive-learning.

One augmented view per image goes through the backbone; exits (``trainables.nets.exits``) hanging after intermediate
stages give further features of the same image. Every feature is projected by its own head and L2-normalised, and
:func:`trainables.losses.supcon_loss` contrasts the stack ``[exit_1, ..., exit_N, backbone]`` as the "views" of each
image (paper eq. 3). Only one forward pass of one view is needed, hence the reference's claim of 59 % of SupCon's
memory and 48 % of its time (ImageNet, ResNet-50).

Variants are explicit settings:

- ``labels`` (default true): positives are all vectors of the same class (SelfCon); false: the other exits of the
  same image only (SelfCon-U).
- ``multiview`` (default false): two augmented views per image, each with its exits, all ``2 (N + 1)`` vectors of an
  image being its views (SelfCon-M).
- ``alpha > 0``: ``L = L_F + alpha * L_G`` where ``L_F`` is SupCon on the backbone projections only (one view:
  SupCon-S, averaged over the anchors that have a positive, as the reference's ``supcon_s``; two views: SupCon) and
  ``L_G`` the loss whose anchors are the exit projections only, contrasted against every vector (the reference's
  ``selfcon_s_FG`` / ``selfcon_m_FG``).

The reference's ``--method`` names map onto this project as follows:

================================================  ================================================================
reference (``main_represent.py``)                 here
================================================  ================================================================
``--method Con`` (two views, no labels)           ``simclr``
``--method SupCon --multiview``                   ``supcon``
``--method SupCon`` (one view, SupCon-S)          ``supcon --set n_views=1`` (mean over anchors with a positive)
``--method SelfCon``                              ``selfcon`` (``labels=true``)
``--method SelfCon --label`` (store_false!)       ``selfcon --set labels=false`` (SelfCon-U)
``--method SelfCon --multiview``                  ``selfcon --set multiview=true`` (SelfCon-M)
``--method SelfCon --alpha a`` [``--multiview``]  ``selfcon --set alpha=a`` [``multiview=true``] (SelfCon-S*, -M*)
================================================  ================================================================

One deliberate difference: without labels and with two views (SelfCon-MU), the reference treats the two augmented
views of an image as different samples (positives only within one view); here they are views of the same sample.

Heads: ``head=mlp`` is the reference's. Its independently initialised heads start the backbone and the exits in
unrelated directions; on short runs (10 SGD epochs on digits) the projections then collapse to one point and the loss
stays at ``(tau / base_tau) log(2B - 1)``. ``head=mlp_bn`` (BatchNorm after the hidden layer) trains from the start.

Evaluation: ``eval_features`` returns the pooled backbone feature and each exit's pooled feature, named ``exit``
(one exit) or ``exit1``, ``exit2``, ... (several, in attach-point order), so the loop reports ``exit_top1`` (or
``exit1_top1``, ...) beside ``linear_top1`` and ``ensemble_top1``; the kNN monitor uses the backbone feature.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from trainables import distributed
from trainables.config import ConfigError, TrainConfig, check_choice, check_range
from trainables.data.augment import AugmentConfig, supcon_augment
from trainables.losses import supcon_loss
from trainables.methods import register_method
from trainables.methods.base import Batch, Method, unwrap
from trainables.metrics import MetricNames
from trainables.nets import BACKBONES, EXIT_HEAD_KINDS, EXIT_SIZES, FAMILIES, MultiExitNet, backbone_info, exit_names

__all__ = ["SelfCon", "SelfConConfig", "selfcon_loss"]


def selfcon_loss(
    features: Tensor,
    labels: Tensor | None = None,
    *,
    exit_views: Sequence[bool],
    alpha: float = 0.0,
    temperature: float = 0.1,
    base_temperature: float = 0.07,
    anchor_index: slice | Tensor | None = None,
) -> Tensor:
    """SelfCon loss over the exit and backbone projections of each sample.

    ``features [B, W, D]`` holds W L2-normalised vectors per sample; ``exit_views[w]`` says whether view ``w`` is an
    exit's projection (else a backbone projection). With ``S(anchors)`` the SupCon term of
    :func:`~trainables.losses.supcon_loss` averaged over the given anchors (contrasts: all B*W vectors)::

        alpha == 0:  L = S(all vectors)                                   (SelfCon, -U, -M)
        alpha > 0:   L = S_F + alpha * S(exit vectors)                    (SelfCon-S*, -M*)

    where ``S_F`` is SupCon on the backbone views alone (``features[:, ~exit_views]``), averaged over the backbone
    anchors that have at least one positive (as every :func:`~trainables.losses.supcon_loss`): with one backbone
    view this is SupCon-S, the mean over the ``B_pos`` samples whose label occurs twice (0 without labels).

    Args:
        features: ``[B, W, D]``; under DDP the gathered global batch.
        labels: ``[B]`` classes, or None (positives: the other views of the same sample).
        exit_views: W booleans, True for an exit view.
        alpha: weight of the exit-anchored term; 0 for plain SelfCon.
        temperature: ``tau > 0``.
        base_temperature: the loss is scaled by ``tau / base_tau``.
        anchor_index: this rank's samples (``trainables.distributed.local_rows``); None for all. The mean of the
            per-rank losses equals the global loss.

    Returns:
        Scalar loss.
    """
    if features.ndim != 3:
        raise ValueError(f"`features` must have shape [B, W, D], but got shape {tuple(features.shape)}")
    is_exit = [bool(v) for v in exit_views]
    if len(is_exit) != features.shape[1]:
        raise ValueError(f"`exit_views` must hold one flag per view (W={features.shape[1]}), but got {len(is_exit)}")
    if not alpha >= 0:
        raise ValueError(f"`alpha >= 0` must hold, but got alpha={alpha!r}")
    kw = dict(temperature=temperature, base_temperature=base_temperature, anchor_index=anchor_index)
    if alpha == 0:
        return supcon_loss(features, labels, **kw)
    exits = [w for w, e in enumerate(is_exit) if e]
    backbone = [w for w, e in enumerate(is_exit) if not e]
    if not exits or not backbone:
        raise ValueError(f"`exit_views` must mark at least one exit and one backbone view when alpha > 0, but got "
                         f"{is_exit}")
    loss_f = supcon_loss(features[:, backbone], labels, **kw)  # one view: SupCon-S, over anchors with a positive
    # Exit anchors only: each exit view in turn is view 0 of a contrast_mode="one" call over all W views; the mean of
    # these equal-sized means is the mean over every exit anchor.
    loss_g = torch.stack([
        supcon_loss(features[:, [w] + [u for u in range(len(is_exit)) if u != w]], labels, contrast_mode="one", **kw)
        for w in exits
    ]).mean()
    return loss_f + alpha * loss_g


@dataclass(frozen=True)
class SelfConConfig:
    """SelfCon settings (defaults: the reference README's CIFAR-100 ResNet-18 recipe)."""

    selfcon_pos: tuple[bool, ...] = (False, True, False)  # one flag per attach point of the backbone (ResNet: 3)
    selfcon_arch: Literal["resnet", "vgg", "wrn", "efficientnet"] = "resnet"  # must be the backbone's family
    selfcon_size: Literal["fc", "small", "same"] = "fc"  # exit: Linear(C_s -> C_last) | fewer-block copy | full copy
    temperature: float = 0.1  # tau in the loss
    base_temperature: float = 0.07  # the loss is scaled by temperature / base_temperature
    feat_dim: int = 128  # projection dimension (backbone and exits)
    head: Literal["mlp", "linear", "mlp_bn"] = "mlp"  # projection heads; mlp_bn: BatchNorm after the hidden layer
    labels: bool = True  # positives by class (SelfCon); false: by image (SelfCon-U)
    multiview: bool = False  # two augmented views, each with its exits (SelfCon-M)
    alpha: float = 0.0  # > 0: SupCon-S on the backbone + alpha * exit-anchored loss (SelfCon-S*, -M*)
    crop_scale_min: float = 0.2  # lower bound of RandomResizedCrop's area scale

    def __post_init__(self) -> None:
        check_choice("selfcon_arch", self.selfcon_arch, FAMILIES)
        check_choice("selfcon_size", self.selfcon_size, EXIT_SIZES)
        check_range("temperature", self.temperature, low=0.0, low_inclusive=False)
        check_range("base_temperature", self.base_temperature, low=0.0, low_inclusive=False)
        check_range("feat_dim", self.feat_dim, low=1)
        check_choice("head", self.head, EXIT_HEAD_KINDS)
        check_range("alpha", self.alpha, low=0.0)
        check_range("crop_scale_min", self.crop_scale_min, low=0.0, high=1.0, low_inclusive=False)
        if not all(isinstance(p, bool) for p in self.selfcon_pos):
            raise ConfigError(f"`selfcon_pos` must be a list of true/false, but got selfcon_pos={self.selfcon_pos!r}")


def _yaml_list(flags: Sequence[bool]) -> str:
    return "[" + ",".join("true" if f else "false" for f in flags) + "]"


@register_method
class SelfCon(Method):
    """Self-contrastive learning: one view, the backbone's and its exits' projections are the views contrasted."""

    name = "selfcon"
    Config = SelfConConfig
    #: Reference README: batch 1024, lr 0.5, cosine, 1000 epochs; its code warms up for 10 epochs from 0.01 only
    #: when batch_size >= 1024 (SupContrast's code: > 256).
    recipe = {"lr": 0.5, "batch_size": 1024, "epochs": 1000, "optimizer": "sgd", "momentum": 0.9,
              "weight_decay": 1e-4, "schedule": "cosine", "warmup_epochs": "auto", "warmup_from": 0.01}
    auto_warmup = (1024, 10)
    seed_probe_lr = 3.0  # the reference's linear-evaluation learning rate
    #: digits: with the reference's independent MLP heads, 10 SGD epochs on digits collapse every projection onto one
    #: point (the loss sticks at its uniform value); BatchNorm in the heads (``mlp_bn``) trains.
    presets = {"digits": {"dataset": "digits", "width": 0.25, "batch_size": 128, "epochs": 15, "lr": 0.05, "crop_scale_min": 0.5,
                          "head": "mlp_bn", "selfcon_size": "same"}}

    @classmethod
    def needs_labels(cls, config: SelfConConfig) -> bool:
        """SelfCon reads labels; SelfCon-U (``labels=false``) does not, so it can pretrain on unlabeled splits."""
        return config.labels

    @classmethod
    def metrics(cls, config: SelfConConfig | None = None) -> MetricNames:
        """Final: one linear probe per exit (``exit_top1``, or ``exit1_top1``, ``exit2_top1``, ...) and
        ``ensemble_top1``; without a config, the names of every exit count a backbone allows."""
        if config is not None:
            counts = [sum(config.selfcon_pos)]
        else:
            counts = range(1, 1 + max(len(backbone_info(n).attach_points) for n in BACKBONES
                                      if backbone_info(n).family is not None))
        names = dict.fromkeys(f"{e}_top1" for n in counts if n >= 1 for e in exit_names(n))
        return MetricNames((), (*names, "ensemble_top1"))

    @classmethod
    def validate(cls, config: SelfConConfig, train: TrainConfig) -> None:
        """``selfcon_arch`` must be the backbone's family and ``selfcon_pos`` hold one flag per attach point, with
        at least one exit on."""
        info = backbone_info(train.backbone)
        if info.family is None:
            with_exits = [n for n in BACKBONES if backbone_info(n).family is not None]
            raise ConfigError(f"`backbone` must be one with exits for selfcon ({', '.join(with_exits)}); "
                              f"got backbone={train.backbone!r}")
        if config.selfcon_arch != info.family:
            raise ConfigError(f"`selfcon_arch` must be {info.family} for backbone={train.backbone} (the exits copy "
                              f"the backbone's own stages); got selfcon_arch={config.selfcon_arch!r}")
        n = len(info.attach_points)
        if len(config.selfcon_pos) != n or not any(config.selfcon_pos):
            example = _yaml_list([i == (n - 1) // 2 for i in range(n)])
            raise ConfigError(
                f"`selfcon_pos` must be {n} true/false flag(s) for backbone={train.backbone}, one per attach point "
                f"({', '.join(info.attach_points)}), at least one true, e.g. selfcon_pos={example}; "
                f"got selfcon_pos={_yaml_list(config.selfcon_pos)}")

    def build(self) -> nn.Module:
        c = self.config
        return MultiExitNet(self.build_backbone(), c.selfcon_pos, size=c.selfcon_size, feat_dim=c.feat_dim,
                            head=c.head)

    def augmentations(self) -> list[AugmentConfig]:
        aug = supcon_augment(self.data.image_size)
        aug = aug.replace(scale=(self.config.crop_scale_min, 1.0))
        return [aug] * (2 if self.config.multiview else 1)

    def loss(self, model: nn.Module, views: list[Tensor], batch: Batch, *, step: int) -> tuple[Tensor, dict]:
        b, n_aug = views[0].shape[0], len(views)
        z = model(torch.cat(views))  # [n_aug * B, V, D], V = exits + backbone, normalised; one forward for DDP
        v = z.shape[1]
        features = z.view(n_aug, b, v, -1).transpose(0, 1).reshape(b, n_aug * v, -1)  # view a * V + k
        features = distributed.gather_with_grad(features)
        labels = distributed.gather(batch.labels) if self.config.labels else None
        exit_views = [k < v - 1 for _ in range(n_aug) for k in range(v)]
        loss = selfcon_loss(features, labels, exit_views=exit_views, alpha=self.config.alpha,
                            temperature=self.config.temperature, base_temperature=self.config.base_temperature,
                            anchor_index=distributed.local_rows(b))
        return loss, {}

    def eval_features(self, model: nn.Module, x: Tensor) -> dict[str, Tensor]:
        """``{"backbone": [N, D_f], "exit" or "exit1", ...: [N, D_k]}``: pooled features, one probe each."""
        return unwrap(model).features(x)
