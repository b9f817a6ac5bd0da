"""Sigmoid contrastive learning on ReLIC (filipbasara0/sigmoid-contrastive-loss; Mitrovic et al. 2020; Zhai et al.
2023): an online encoder trained with :func:`trainables.losses.sigmoid_pairwise_loss` against an EMA target encoder.

Model: online ``backbone -> head`` (``Linear -> BN -> ReLU -> Linear``, no biases, ``in -> 512 -> 64``), a target
copy of both (:class:`trainables.nets.momentum.MomentumTarget`, no gradient; ``after_step`` copies the online
encoder into it up to ``ema_start_step``, then moves it by EMA), and two learnable scalars, the log-temperature ``t``
(init ``log init_logit_scale``) and the bias ``b`` (init -5), registered on the module so the optimiser and DDP see
them.

Views (multi-crop): ``num_global_views`` ReLIC global views at full size, then ``num_local_views`` local views at
``int(size * local_size_ratio)`` px (:func:`trainables.data.augment.multicrop`). The target projects the global views
only; every target projection of global view ``g`` is paired with every online projection of a view ``v != g``
(global and local) and the ``G * (G + L - 1)`` pair losses are averaged (:func:`multiview_sigmoid_loss`). With
``use_penalty_filtering``, negatives whose penalty is at most ``filtering_threshold`` are dropped, and the kept pairs
lose their penalty weight, once ``step > filtering_warmup_steps`` (the seed's test).

Schedules: the confidence penalty ``gamma`` (:func:`trainables.schedules.gamma_at`) and the EMA coefficient
(:func:`trainables.schedules.ema_beta_at`) are pure functions of the loop's global optimiser step and the run's
length (``Method.setup``), which the loop restores on resume, so a resumed trial continues both exactly and the method
keeps no state of its own. Each epoch reports ``gamma``, ``ema_beta``, the mean learnt
``logit_scale`` (``min(e^t, max_scale)``) and ``logit_bias``, and ``instance_top1`` (how often an online view's most
similar target is its own image's, the seed's ``acc/top1``).

DDP: each worker gathers the online (with gradient) and target projections of every worker and computes the loss
over the global batch, so every positive has the ``N - 1`` negatives of the whole batch and every worker's loss is the
global loss. The gather's backward sums the workers' gradients into each worker's rows (``world_size`` times the
gradient of the global loss through them), and DDP's average over workers turns that into exactly the global loss's
gradient; ``t`` and ``b`` get the same (global) gradient on every worker, which the average keeps. The ``N x N``
logits are recomputed on every worker, which costs little next to the encoders.

Evaluation uses the target backbone (the seed's ``get_features``). Its parameters change only in ``after_step``
(copied from the online encoder during the warm-up, then EMA); its BatchNorm running statistics are its own, updated by
its forward passes on the global views. Unlike the seed, the EMA does not pull them towards the online statistics,
which also see the local views: evaluation on full-size images then normalises with full-size statistics.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from trainables import distributed
from trainables.config import ConfigError, TrainConfig, check_choice, check_range
from trainables.data.augment import AugmentConfig, local_view_size, multicrop
from trainables.losses import sigmoid_pairwise_loss
from trainables.methods import register_method
from trainables.methods.base import Batch, Method, unwrap
from trainables.nets import MomentumTarget, projection_head
from trainables.schedules import GAMMA_SCHEDULES, ema_action, ema_beta_at, gamma_at

__all__ = ["ReLICModel", "Sigmoid", "SigmoidConfig", "multiview_sigmoid_loss"]


@dataclass(frozen=True)
class SigmoidConfig:
    """Sigmoid-contrastive settings (defaults: the seed's command-line defaults; its STL-10 recipe adds
    ``use_gamma_scaling=true, beta=0.99``). Steps are global optimiser steps."""

    gamma: float = 1.0  # confidence penalty gamma0: (1 - p)^gamma weights each pair; 0 = plain sigmoid loss
    use_gamma_scaling: bool = False  # decay gamma from gamma0 to 0 over gamma_scaling_steps (else constant)
    gamma_scaling_steps: int = 20000  # T of the gamma schedule; gamma = 0 from step T on
    gamma_schedule: Literal["cosine", "linear", "constant"] = "cosine"  # shape of the decay (constant: gamma0 then 0)
    alpha: float = 1.0  # weight of the KL invariance term
    beta: float = 0.995  # initial EMA coefficient beta0, raised to 1 by a cosine over the run's steps
    ema_start_step: int = 1  # the target is a copy of the online network up to this step; EMA after it
    ema_every_n_steps: int = 1  # EMA update of the target on steps that are multiples of this
    use_penalty_filtering: bool = False  # drop negatives whose penalty (1 - p)^gamma <= filtering_threshold
    filtering_threshold: float = 0.05  # penalty threshold of the filtering
    filtering_warmup_steps: int = 5000  # filtering starts after this step (step > filtering_warmup_steps, as the seed)
    num_global_views: int = 2  # full-size views (target and online)
    num_local_views: int = 4  # small views (online only)
    local_size_ratio: float = 3 / 7  # local view side = int(image side * ratio)
    crop_scale_min: float = 0.1  # lower bound of the global views' crop area scale
    local_crop_scale_min: float = 0.05  # lower bound of the local views' crop area scale
    proj_hidden_dim: int = 512  # hidden width of the projection MLP
    proj_out_dim: int = 64  # projection dimension
    init_logit_scale: float = 5.0  # initial logit scale e^t (t = log 5)
    init_bias: float = -5.0  # initial bias b
    max_scale: float = 5.0  # e^t is clamped to at most this
    #: the seed's accident: its backbones' BatchNorm stays in eval mode (running statistics frozen at 0 / 1, so BN is
    #: an affine layer) because ``get_feature_size`` calls ``.eval()`` and training never calls ``.train()``; its
    #: published numbers come from that setting. False (default): BN trains normally.
    freeze_backbone_bn: bool = False

    def __post_init__(self) -> None:
        check_range("gamma", self.gamma, low=0.0)
        if self.use_gamma_scaling and self.gamma_scaling_steps <= 0:
            raise ConfigError("`gamma_scaling_steps > 0` must hold when use_gamma_scaling=true, but got "
                              f"gamma_scaling_steps={self.gamma_scaling_steps!r}")
        check_choice("gamma_schedule", self.gamma_schedule, GAMMA_SCHEDULES)
        check_range("alpha", self.alpha, low=0.0)
        check_range("beta", self.beta, low=0.0, high=1.0)
        check_range("ema_start_step", self.ema_start_step, low=0)
        check_range("ema_every_n_steps", self.ema_every_n_steps, low=1)
        check_range("filtering_threshold", self.filtering_threshold, low=0.0, high=1.0)
        check_range("filtering_warmup_steps", self.filtering_warmup_steps, low=0)
        check_range("num_global_views", self.num_global_views, low=1)
        check_range("num_local_views", self.num_local_views, low=0)
        if self.num_global_views + self.num_local_views < 2:
            raise ConfigError("`num_global_views + num_local_views >= 2` must hold (a target view needs an online "
                              f"view of another index), but got num_global_views={self.num_global_views}, "
                              f"num_local_views={self.num_local_views}")
        check_range("local_size_ratio", self.local_size_ratio, low=0.0, high=1.0, low_inclusive=False)
        check_range("crop_scale_min", self.crop_scale_min, low=0.0, high=1.0, low_inclusive=False)
        check_range("local_crop_scale_min", self.local_crop_scale_min, low=0.0, high=1.0, low_inclusive=False)
        check_range("proj_hidden_dim", self.proj_hidden_dim, low=1)
        check_range("proj_out_dim", self.proj_out_dim, low=1)
        check_range("init_logit_scale", self.init_logit_scale, low=0.0, low_inclusive=False)
        check_range("max_scale", self.max_scale, low=0.0, low_inclusive=False)
        check_range("init_bias", self.init_bias)


class ReLICModel(nn.Module):
    """Online encoder (``backbone``, ``head``), its EMA target copy (``target_backbone``, ``target_head``, no
    gradient), and the learnable ``log_temperature`` and ``bias`` of the sigmoid loss.

    ``forward(views) -> [online projection [B, out_dim] per view]``: one call for all views (one DDP forward), one
    backbone pass per run of equally sized views (global views share a pass, local views another).
    """

    def __init__(self, backbone: nn.Module, head: nn.Module, *, init_logit_scale: float = 5.0,
                 init_bias: float = -5.0, freeze_backbone_bn: bool = False) -> None:
        super().__init__()
        self.freeze_backbone_bn = freeze_backbone_bn
        self.backbone = backbone
        self.head = head
        self.target_backbone = MomentumTarget(backbone)
        self.target_head = MomentumTarget(head)
        self.log_temperature = nn.Parameter(torch.tensor(math.log(init_logit_scale)))
        self.bias = nn.Parameter(torch.tensor(float(init_bias)))

    def train(self, mode: bool = True) -> ReLICModel:
        """``nn.Module.train``; with ``freeze_backbone_bn`` the BatchNorm layers of both backbones stay in eval mode
        (the seed's behaviour), so their running statistics never change."""
        super().train(mode)
        if self.freeze_backbone_bn:
            for backbone in (self.backbone, self.target_backbone):
                for m in backbone.modules():
                    if isinstance(m, nn.modules.batchnorm._BatchNorm):
                        m.eval()
        return self

    @staticmethod
    def _project(backbone: nn.Module, head: nn.Module, views: Sequence[Tensor]) -> list[Tensor]:
        out: list[Tensor] = []
        start = 0
        while start < len(views):  # group consecutive views of equal shape into one pass
            stop = start + 1
            while stop < len(views) and views[stop].shape == views[start].shape:
                stop += 1
            z = head(backbone(torch.cat(list(views[start:stop]))))
            out.extend(z.chunk(stop - start))
            start = stop
        return out

    def forward(self, views: Sequence[Tensor]) -> list[Tensor]:
        """Online projections (un-normalised), one ``[B, out_dim]`` per view."""
        return self._project(self.backbone, self.head, views)

    @torch.no_grad()
    def target(self, views: Sequence[Tensor]) -> list[Tensor]:
        """Target projections (un-normalised, no gradient), one per view. In train mode the target's BatchNorm layers
        normalise with batch statistics and update their running statistics, from the views given (global only)."""
        return self._project(self.target_backbone, self.target_head, views)

    @property
    def momentum_pairs(self) -> list[tuple[nn.Module, MomentumTarget]]:
        """The (online, target) pairs the EMA moves."""
        return [(self.backbone, self.target_backbone), (self.head, self.target_head)]


def multiview_sigmoid_loss(online: Tensor, target: Tensor, **loss_kwargs: Any) -> Tensor:
    """Mean of :func:`trainables.losses.sigmoid_pairwise_loss` over the multi-crop pairs (the seed's pairing)::

        L = 1 / (G * (V - 1)) * sum_{g < G} sum_{v < V, v != g} sigmoid_pairwise_loss(online[:, v], target[:, g])

    Args:
        online: ``[N, V, d]`` online projections of V views (the G global views first, then the local ones).
        target: ``[N, G, d]`` target projections of the G global views.
        **loss_kwargs: ``log_temperature``, ``bias``, ``gamma``, ... of :func:`sigmoid_pairwise_loss`.
    """
    if online.ndim != 3 or target.ndim != 3 or target.shape[0] != online.shape[0] or target.shape[1] > online.shape[1]:
        raise ValueError(f"`online` [N, V, d] and `target` [N, G, d] with G <= V must hold, but got shapes "
                         f"{tuple(online.shape)} and {tuple(target.shape)}")
    n_global, n_views = target.shape[1], online.shape[1]
    if n_views < 2:
        raise ValueError(f"`online` must hold at least 2 views (a pair of different views), but got V={n_views}")
    losses = [sigmoid_pairwise_loss(online[:, v], target[:, g], **loss_kwargs)
              for g in range(n_global) for v in range(n_views) if v != g]
    return torch.stack(losses).mean()


def _native_image_size(train: TrainConfig) -> int | None:
    """The side of the training images: ``image_size`` when set, else the dataset's default (None if unknown)."""
    if train.image_size is not None:
        return train.image_size
    from trainables.data import default_image_size

    return default_image_size(train.dataset)


@register_method
class Sigmoid(Method):
    """Sigmoid pairwise contrastive loss between an online encoder and its EMA target, on multi-crop views."""

    name = "sigmoid"
    Config = SigmoidConfig
    #: The seed's ``run_training.py`` defaults: batch 256, 100 epochs, Adam lr 3e-4, wd 1e-5, no schedule, no warm-up.
    recipe = {"batch_size": 256, "epochs": 100, "optimizer": "adam", "lr": 3e-4, "weight_decay": 1e-5,
              "schedule": "constant", "warmup_epochs": "auto", "logreg_probe": True}
    #: digits (16 px): milder crops (the seed's 0.1 / 0.05 scales leave a few pixels of an 8x8 digit), 2 local views,
    #: batch 64 (twice the steps), lr 1e-3 and beta0 = 0 (the target follows the online encoder early, then slows).
    presets = {"digits": {"dataset": "digits", "width": 0.25, "batch_size": 64, "epochs": 15, "lr": 1e-3, "beta": 0.0,
                          "crop_scale_min": 0.5, "local_crop_scale_min": 0.3, "num_local_views": 2}}
    epoch_metrics = ("gamma", "ema_beta", "logit_scale", "logit_bias", "instance_top1")
    seed_probe = "logreg"  # the seed: CalibratedClassifierCV(LogisticRegression(max_iter=100)) on all train images

    @classmethod
    def validate(cls, config: SigmoidConfig, train: TrainConfig) -> None:
        size = _native_image_size(train)
        if config.num_local_views and size is not None and local_view_size(size, config.local_size_ratio) < 1:
            raise ConfigError(f"`int(image side * local_size_ratio) >= 1` must hold for the local views of {size} px "
                              f"images, but got local_size_ratio={config.local_size_ratio!r} "
                              f"(int({size} * {config.local_size_ratio:.4g}) = 0)")

    # -- schedules -----------------------------------------------------------------------------------------------------
    def gamma(self, step: int) -> float:
        """Confidence penalty of the loss of step ``step`` (0-based)."""
        c = self.config
        return gamma_at(step, gamma=c.gamma, scaling_steps=c.gamma_scaling_steps if c.use_gamma_scaling else None,
                        shape=c.gamma_schedule)

    def ema_beta(self, step: int) -> float:
        """EMA coefficient in effect after step ``step`` (1-based)."""
        c = self.config
        return ema_beta_at(step, beta=c.beta, total_steps=self.shape.total_steps, after_step=c.ema_start_step,
                           every_n_steps=c.ema_every_n_steps)

    # -- hooks ---------------------------------------------------------------------------------------------------------
    def build(self) -> nn.Module:
        backbone = self.build_backbone()
        head = projection_head(backbone.feature_dim, self.config.proj_out_dim, kind="mlp_bn",
                               hidden_dim=self.config.proj_hidden_dim, bias=False)  # the seed's critic MLP
        model = ReLICModel(backbone, head, init_logit_scale=self.config.init_logit_scale,
                           init_bias=self.config.init_bias, freeze_backbone_bn=self.config.freeze_backbone_bn)
        return model.train()

    def augmentations(self) -> list[AugmentConfig]:
        c = self.config
        return multicrop(self.data.image_size, c.num_global_views, c.num_local_views, local_ratio=c.local_size_ratio,
                         global_scale=(c.crop_scale_min, 1.0), local_scale=(c.local_crop_scale_min, 1.0))

    def loss(self, model: nn.Module, views: list[Tensor], batch: Batch, *, step: int) -> tuple[Tensor, dict]:
        c = self.config
        module: ReLICModel = unwrap(model)
        n_global = c.num_global_views
        online = torch.stack([z.float() for z in model(views)], 1)  # [b, V, d]
        target = torch.stack([z.float() for z in module.target(views[:n_global])], 1)  # [b, G, d]
        online = distributed.gather_with_grad(online)  # [N, V, d], N = global batch
        target = distributed.gather(target)  # [N, G, d]
        filtering = c.use_penalty_filtering and step > c.filtering_warmup_steps  # the seed's global_step > warmup
        loss = multiview_sigmoid_loss(online, target, log_temperature=module.log_temperature, bias=module.bias,
                                      gamma=self.gamma(step), alpha=c.alpha, max_scale=c.max_scale,
                                      filter_threshold=c.filtering_threshold if filtering else None)
        with torch.no_grad():
            scale = module.log_temperature.exp().clamp(max=c.max_scale)
            # Instance discrimination accuracy of the pair (target global view 0, online view 1), as the seed logs it.
            similarity = online[:, 1] @ torch.nn.functional.normalize(target[:, 0], dim=1).T
            hits = similarity.argmax(1) == torch.arange(len(similarity), device=similarity.device)
        return loss, {"logit_scale": scale, "logit_bias": module.bias.detach().clone(),
                      "instance_top1": hits.float().mean()}

    def after_step(self, model: nn.Module, *, step: int) -> None:
        """Copy the online encoder into the target up to ``ema_start_step``, then EMA with ``ema_beta(step)``."""
        c = self.config
        action = ema_action(step, after_step=c.ema_start_step, every_n_steps=c.ema_every_n_steps)
        if action == "none":
            return
        beta = self.ema_beta(step)
        for online, target in unwrap(model).momentum_pairs:
            if action == "copy":
                target.copy_from(online)
            else:
                target.update(online, beta)

    def eval_features(self, model: nn.Module, x: Tensor) -> dict[str, Tensor]:
        """The target encoder's backbone features (what the seed evaluates)."""
        return {"backbone": unwrap(model).target_backbone(x)}

    def epoch_logs(self, *, step: int) -> dict[str, float]:
        """The schedules at global step ``step``: ``gamma`` for the next loss, ``ema_beta`` of the last update."""
        return {"gamma": self.gamma(step), "ema_beta": self.ema_beta(step)}
