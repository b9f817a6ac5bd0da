"""SCE: Similarity Contrastive Estimation (Denize et al., WACV 2023; juliendenize/eztorch), trained with
:func:`trainables.losses.sce_loss`.

Model: the online encoder ``backbone -> projector -> predictor`` gives the queries ``q``; a momentum copy of
``backbone -> projector`` (:class:`trainables.nets.momentum.MomentumTarget`, no gradient) gives the keys ``k``; a
:class:`trainables.nets.momentum.FeatureQueue` holds the last ``queue_size`` keys (its pointer is a buffer, so the
model's ``state_dict`` checkpoints the queue with the encoders). Projector and predictor are ``Linear -> BN -> ReLU ->
Linear`` MLPs (``512 -> feat_dim`` and ``1024 -> feat_dim``, eztorch's ResNet-18 heads); ``predictor=false`` drops the
predictor (``q`` = projector output; eztorch's predictor is optional too).

Views: two global SupContrast views (:func:`trainables.data.augment.supcon_augment`, crop scale ``crop_scale_min``-1)
and ``num_local_views`` local views (:func:`trainables.data.augment.multicrop`, side ``int(size * local_size_ratio)``). With ``symmetric`` (the default, eztorch's
``sym``) both global views give keys and every view ``v != g`` is a query against the keys of global view ``g``: the
loss is the mean of the ``2 * (V - 1)`` pair losses (``V = 2 + num_local_views``); without it only view 0 gives keys
and the other views are queries. Local views are queries only, never keys.

Schedules: the key encoder's momentum rises from ``initial_momentum`` to 1 by a cosine over the run's steps
(:func:`trainables.nets.momentum.cosine_momentum`, a pure function of the loop's global step and ``RunShape``), so a
resume continues it exactly and the method keeps no state of its own.

DDP: each worker computes the loss of its own queries against its own keys (the positives) and the queue. The
candidates are per anchor (own key + queue), as in MoCo, so no gather with gradient is needed; DDP's average of the
per-worker gradients is the global batch's gradient. The keys of every worker are gathered (without gradient) in
``loss`` and enqueued in ``after_step`` (the queue is read by this step's backward, so it cannot change before it):
every worker enqueues the same global keys in the same order and the queues stay identical with no broadcast.
MoCo's shuffled BatchNorm is not used (nor is it in the seed, ``shuffle_bn: false``): the predictor already breaks the
symmetry between the online and key encoders; with ``sync_bn`` the loop synchronises the statistics.

Evaluation uses the online backbone (the seed's online evaluator reads the online trunk's ``h``).

Deliberate differences from eztorch: the relational target always masks the positive out (the paper's form; eztorch's
default ``use_keys: false`` path instead gives the positive slot a similarity of 0 in the relational softmax); no
warm-up or schedule of ``coeff`` / ``temperature_m`` (eztorch's defaults leave them constant); multi-crop local views
use this project's SupContrast (global) and ReLIC multi-crop (local) pipelines, not eztorch's own transforms.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from trainables import distributed
from trainables.config import ConfigError, TrainConfig, check_range
from trainables.data.augment import AugmentConfig, local_view_size, multicrop, supcon_augment
from trainables.losses import sce_loss
from trainables.methods import register_method
from trainables.methods.base import Batch, Method, unwrap
from trainables.nets import FeatureQueue, MomentumTarget, cosine_momentum, projection_head

__all__ = ["SCE", "SCEConfig", "SCEModel"]

NUM_GLOBAL_VIEWS = 2


@dataclass(frozen=True)
class SCEConfig:
    """SCE settings (defaults: the seed's CIFAR-10 ResNet-18 recipe, except ``queue_size``: 1024 keys fit the default
    dataset, digits' 1197 training images; the ``cifar10`` preset sets the seed's 4096)."""

    temperature: float = 0.1  # tau of the online (query) logits
    temperature_m: float = 0.05  # tau_m of the relational target's logits (0.07 on ImageNet)
    coeff: float = 0.5  # lambda: weight of the one-hot part of the target (1 = MoCo's InfoNCE, 0 = relational only)
    initial_momentum: float = 0.99  # m_0 of the key encoder, raised to 1 by a cosine over the run's steps
    queue_size: int = 1024  # keys kept; a multiple of batch_size below the training set size (seed CIFAR: 4096)
    feat_dim: int = 256  # projector (and predictor) output dimension
    proj_hidden_dim: int = 512  # hidden width of the projector MLP
    predictor: bool = True  # online predictor MLP after the projector (the seed's); false: q = projector output
    pred_hidden_dim: int = 1024  # hidden width of the predictor MLP
    symmetric: bool = True  # both global views give keys and queries; the loss averages the pairs
    num_local_views: int = 0  # extra small views (queries only) for multi-crop
    local_size_ratio: float = 3 / 7  # local view side = int(image side * ratio)
    crop_scale_min: float = 0.2  # lower bound of the global views' crop area scale
    local_crop_scale_min: float = 0.05  # lower bound of the local views' crop area scale

    def __post_init__(self) -> None:
        check_range("temperature", self.temperature, low=0.0, low_inclusive=False)
        check_range("temperature_m", self.temperature_m, low=0.0, low_inclusive=False)
        check_range("coeff", self.coeff, low=0.0, high=1.0)
        check_range("initial_momentum", self.initial_momentum, low=0.0, high=1.0)
        check_range("queue_size", self.queue_size, low=1)
        check_range("feat_dim", self.feat_dim, low=1)
        check_range("proj_hidden_dim", self.proj_hidden_dim, low=1)
        check_range("pred_hidden_dim", self.pred_hidden_dim, low=1)
        check_range("num_local_views", self.num_local_views, low=0)
        check_range("local_size_ratio", self.local_size_ratio, low=0.0, high=1.0, low_inclusive=False)
        check_range("crop_scale_min", self.crop_scale_min, low=0.0, high=1.0, low_inclusive=False)
        check_range("local_crop_scale_min", self.local_crop_scale_min, low=0.0, high=1.0, low_inclusive=False)

    @property
    def key_views(self) -> int:
        """Views whose keys are computed and enqueued each step (2 when symmetric, else 1)."""
        return NUM_GLOBAL_VIEWS if self.symmetric else 1


def _forward_runs(encoder: nn.Module, views: Sequence[Tensor]) -> list[Tensor]:
    """``encoder`` on each view, one pass per run of consecutive views of equal shape (global views share a pass, so
    BatchNorm sees them together, as eztorch's multi-crop step)."""
    out: list[Tensor] = []
    start = 0
    while start < len(views):
        stop = start + 1
        while stop < len(views) and views[stop].shape == views[start].shape:
            stop += 1
        out.extend(encoder(torch.cat(list(views[start:stop]))).chunk(stop - start))
        start = stop
    return out


class SCEModel(nn.Module):
    """Online ``backbone -> projector -> predictor``, the key encoder (momentum copies of ``backbone`` and
    ``projector``, no gradient) and the key ``queue``.

    ``forward(views) -> [q [B, feat_dim] per view]`` (un-normalised; one DDP forward for all query views);
    ``keys(views) -> [k [B, feat_dim] per view]`` (no gradient).
    """

    def __init__(self, backbone: nn.Module, projector: nn.Module, predictor: nn.Module, *, queue_size: int,
                 feat_dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = projector
        self.predictor = predictor
        self.key_backbone = MomentumTarget(backbone)
        self.key_projector = MomentumTarget(projector)
        self.queue = FeatureQueue(queue_size, feat_dim)

    def _query(self, x: Tensor) -> Tensor:
        return self.predictor(self.projector(self.backbone(x)))

    def _key(self, x: Tensor) -> Tensor:
        return self.key_projector(self.key_backbone(x))

    def forward(self, views: Sequence[Tensor]) -> list[Tensor]:
        return _forward_runs(self._query, views)

    @torch.no_grad()
    def keys(self, views: Sequence[Tensor]) -> list[Tensor]:
        """Key projections of ``views``; in train mode the key encoder's BatchNorm uses batch statistics and updates
        its own running statistics."""
        return _forward_runs(self._key, views)

    @property
    def momentum_pairs(self) -> list[tuple[nn.Module, MomentumTarget]]:
        """The (online, key) pairs the momentum update moves."""
        return [(self.backbone, self.key_backbone), (self.projector, self.key_projector)]


@register_method
class SCE(Method):
    """Soft contrastive learning: InfoNCE's one-hot target mixed with the key's similarity distribution over the
    queue, against a momentum encoder's keys."""

    name = "sce"
    Config = SCEConfig
    #: The seed's CIFAR-10 ResNet-18 recipe (TrainConfig part): SGD lr 0.06, momentum 0.9, wd 5e-4, 5 warm-up epochs,
    #: cosine, batch 256 (200 epochs in the ``cifar10`` preset).
    recipe = {"optimizer": "sgd", "lr": 0.06, "momentum": 0.9, "weight_decay": 5e-4, "schedule": "cosine",
              "warmup_epochs": 5.0, "batch_size": 256}
    presets = {
        #: digits (16 px, 1197 images, 18 steps an epoch at batch 64): kNN gain over the untrained encoder on seeds 0-4
        #: (1 thread, 2026-11-29) +0.087, +0.057, +0.043, +0.113, +0.080 (20 epochs at tau = tau_m = 0.2: +0.007..
        #: +0.063). In ~500 steps the seed's predictor and a slow key encoder barely leave chance (own key beats the
        #: queue < 6 % of the time) and the sharp tau_m = 0.05 target then teaches noise (kNN below the untrained
        #: encoder); no predictor, a key encoder that follows closely (m_0 0.5), a small fresh queue (2 steps of keys),
        #: tau = tau_m = 0.1, Adam and 30 epochs learn. SupContrast crops at scale 0.5-1 keep enough of an 8x8 digit.
        "digits": {"dataset": "digits", "width": 0.25, "batch_size": 64, "epochs": 30, "optimizer": "adam",
                   "lr": 1e-3, "weight_decay": 1e-5, "warmup_epochs": 0.0, "temperature": 0.1, "temperature_m": 0.1,
                   "queue_size": 256, "initial_momentum": 0.5, "predictor": False, "feat_dim": 128,
                   "proj_hidden_dim": 128, "crop_scale_min": 0.5},
        "cifar10": {"dataset": "cifar10", "backbone": "resnet18", "epochs": 200, "batch_size": 256, "queue_size": 4096},
        #: eztorch's ResNet-50 ImageNet config: LARS lr 0.3 x bs/256, wd 1e-6, 10 warm-up epochs, batch 4096,
        #: queue 65536, tau_m 0.07, projector 2048-4096-256 (eztorch's is 3 layers; ours is the 2-layer MLP).
        "imagenet": {"dataset": "imagenet", "backbone": "resnet50", "epochs": 200, "batch_size": 4096,
                     "optimizer": "lars", "lr": 0.3, "lr_scaling": "linear", "weight_decay": 1e-6,
                     "warmup_epochs": 10.0, "queue_size": 65536, "temperature_m": 0.07, "proj_hidden_dim": 4096,
                     "pred_hidden_dim": 4096},
    }
    epoch_metrics = ("key_momentum", "instance_top1")

    @classmethod
    def validate(cls, config: SCEConfig, train: TrainConfig) -> None:
        """The queue holds whole global batches and at least one step's keys; local views have at least 1 px."""
        keys_per_step = config.key_views * train.batch_size
        if config.queue_size % train.batch_size or config.queue_size < keys_per_step:
            raise ConfigError(f"`queue_size` must be a positive multiple of batch_size={train.batch_size} holding at "
                              f"least one step's {keys_per_step} keys, but got queue_size={config.queue_size}")
        if config.num_local_views:
            from trainables.data import default_image_size

            size = train.image_size if train.image_size is not None else default_image_size(train.dataset)
            if size is not None and local_view_size(size, config.local_size_ratio) < 1:
                raise ConfigError(f"`int(image side * local_size_ratio) >= 1` must hold for the local views of {size} "
                                  f"px images, but got local_size_ratio={config.local_size_ratio!r}")

    @classmethod
    def check_data(cls, config: SCEConfig, train: TrainConfig, num_samples: int) -> None:
        """The queue must be smaller than the training set (else it holds the anchor's own older keys); checked
        before launch (``trainables.loop.check_data``), so a bad size is one line and exit 2."""
        if config.queue_size >= num_samples:
            raise ConfigError(f"`queue_size` must be smaller than the {num_samples} training images of "
                              f"{train.dataset} (else it holds the anchor's own older keys), but got "
                              f"queue_size={config.queue_size}")

    # -- schedules -----------------------------------------------------------------------------------------------------
    def key_momentum(self, step: int) -> float:
        """Momentum of the key encoder's update after step ``step`` (1-based): cosine from ``initial_momentum`` to 1."""
        return cosine_momentum(step, self.shape.total_steps, self.config.initial_momentum)

    # -- hooks ---------------------------------------------------------------------------------------------------------
    def build(self) -> nn.Module:
        c = self.config
        backbone = self.build_backbone()
        projector = projection_head(backbone.feature_dim, c.feat_dim, kind="mlp_bn", hidden_dim=c.proj_hidden_dim)
        predictor = (projection_head(c.feat_dim, c.feat_dim, kind="mlp_bn", hidden_dim=c.pred_hidden_dim, bias=False)
                     if c.predictor else nn.Identity())
        return SCEModel(backbone, projector, predictor, queue_size=c.queue_size, feat_dim=c.feat_dim)

    def augmentations(self) -> list[AugmentConfig]:
        c = self.config
        size = self.data.image_size
        global_view = supcon_augment(size).replace(scale=(c.crop_scale_min, 1.0))
        local_views = multicrop(size, 0, c.num_local_views, local_ratio=c.local_size_ratio,
                                local_scale=(c.local_crop_scale_min, 1.0))
        return [global_view] * NUM_GLOBAL_VIEWS + local_views

    def loss(self, model: nn.Module, views: list[Tensor], batch: Batch, *, step: int) -> tuple[Tensor, dict]:
        c = self.config
        module: SCEModel = unwrap(model)
        first_query = 0 if c.symmetric else 1  # without symmetry view 0 is only a key
        queries = [q.float() for q in model(views[first_query:])]
        keys = [k.float() for k in module.keys(views[:c.key_views])]
        queue = module.queue()
        pairs = [(v, g) for g in range(c.key_views) for v in range(first_query, len(views)) if v != g]
        losses = [sce_loss(queries[v - first_query], keys[g], queue, temperature=c.temperature,
                           temperature_m=c.temperature_m, coeff=c.coeff) for v, g in pairs]
        # Every worker enqueues the same global keys (view-major, then rank order) in after_step.
        self._pending_keys = nn.functional.normalize(torch.cat([distributed.gather(k) for k in keys]), dim=1)
        with torch.no_grad():  # instance discrimination: the own key beats every queued key (first pair)
            v, g = pairs[0]
            q = nn.functional.normalize(queries[v - first_query], dim=1)
            k = nn.functional.normalize(keys[g], dim=1)
            hits = (q * k).sum(1) > (q @ nn.functional.normalize(queue, dim=1).T).amax(1)
        return torch.stack(losses).mean(), {"instance_top1": hits.float().mean()}

    def after_step(self, model: nn.Module, *, step: int) -> None:
        """Move the key encoder by ``key_momentum(step)`` and enqueue the step's gathered keys."""
        module: SCEModel = unwrap(model)
        momentum = self.key_momentum(step)
        for online, key in module.momentum_pairs:
            key.update(online, momentum)
        keys = getattr(self, "_pending_keys", None)
        if keys is not None:
            module.queue.enqueue(keys)
            self._pending_keys = None

    def epoch_logs(self, *, step: int) -> dict[str, float]:
        """``key_momentum`` of the last update."""
        return {"key_momentum": self.key_momentum(step)}

    def eval_features(self, model: nn.Module, x: Tensor) -> dict[str, Tensor]:
        """The online backbone's features (what the seed's online evaluator and linear evaluation read)."""
        return {"backbone": unwrap(model).backbone(x)}
