"""SelfCon exits: sub-networks that hang after an intermediate stage of a backbone (Bae et al., 2023, sec. 3).

An :class:`Exit` attached after stage ``s`` maps the trunk's map after ``s`` to a second feature of the same image:
``g(x) = post(pool(body(trunk_{<=s}(x))))``, projected by its own head. The layers follow the reference's
``_make_sub_layer`` (:meth:`~trainables.nets._registry.Backbone.build_exit_layers`):

- ``fc``: ``body`` is nothing, ``post = Linear(stage_channels[s] -> feature_dim)``, then the backbone-width head
  (ResNet-18 after layer2: ``128 -> 512``, then ``512 -> 512 -> 128``: 394,368 parameters);
- ``small``: a freshly initialised copy of the stages after ``s`` with fewer blocks (ResNet: ``max(1, n // 2)``,
  VGG: one conv per stage, WRN: ``(n + 1) // 2``);
- ``same``: a freshly initialised copy of the stages after ``s`` (VGG: 3 convs per stage for VGG-16, 2 for VGG-13,
  as the reference's ``cfg == 'D'`` rule);
- EfficientNet ignores the size, as the reference: ``Conv1x1(80 -> 512) -> BN -> SiLU``, pool, ``Dropout(0.2) ->
  Linear(512 -> 512)``.

Heads come from :func:`~trainables.nets.heads.projection_head`: ``mlp`` and ``linear`` are the reference's heads;
``mlp_bn`` adds BatchNorm after the hidden layer. Independently initialised MLP heads map the backbone and an exit to
two nearly constant, unrelated directions, so the first SelfCon steps see a loss far above the uniform plateau and
plain SGD collapses every projection onto one point (measured on digits: the loss sticks at
``(tau / base_tau) log(2B - 1)``); BatchNorm centres the hidden layer and removes that start.

An exit never shares a parameter with the trunk past its attach point: ``body`` is built anew by the backbone's
:meth:`~trainables.nets._registry.Backbone.build_tail`, and gradients of an exit's output reach the trunk only
through the stages up to ``s``.

:class:`MultiExitNet` holds the trunk (``backbone``), its head and one exit per enabled attach point. Exit features
are named ``"exit"`` when there is one exit, else ``"exit1"``, ``"exit2"``, ... in attach-point order
(:func:`exit_names`); the training loop reports their probes as ``exit_top1`` / ``exit1_top1``, ...
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from trainables.nets.heads import HEAD_KINDS, HeadKind, projection_head

__all__ = ["EXIT_HEAD_KINDS", "EXIT_SIZES", "Exit", "MultiExitNet", "build_exit", "exit_names"]

ExitSize = Literal["fc", "small", "same"]
EXIT_SIZES: tuple[str, ...] = ("fc", "small", "same")
ExitHeadKind = HeadKind
EXIT_HEAD_KINDS: tuple[str, ...] = HEAD_KINDS  # every projection-head kind


def exit_names(n: int) -> tuple[str, ...]:
    """Feature names of ``n`` exits: ``("exit",)`` for one, ``("exit1", ..., f"exit{n}")`` for several."""
    if n < 1:
        raise ValueError(f"`n >= 1` must hold, but got n={n!r}")
    return ("exit",) if n == 1 else tuple(f"exit{i}" for i in range(1, n + 1))


class Exit(nn.Module):
    """One sub-network: ``map [B, C_s, h, w] -> pooled feature [B, feature_dim] -> head -> [B, feat_dim]``.

    Attributes:
        attach_point: the trunk stage whose output feeds the exit.
        size: ``fc``, ``small`` or ``same``.
        feature_dim: width of the exit's feature (the backbone's ``feature_dim`` for ``fc``, the tail's output
            channels otherwise).
    """

    def __init__(self, body: nn.Module, feature_dim: int, *, attach_point: str, size: ExitSize,
                 feat_dim: int = 128, head: ExitHeadKind = "mlp", post: nn.Module | None = None) -> None:
        super().__init__()
        self.attach_point = attach_point
        self.size = size
        self.feature_dim = feature_dim
        self.body = body
        self.post = nn.Identity() if post is None else post
        self.head = projection_head(feature_dim, feat_dim, kind=head)

    def features(self, feature_map: Tensor) -> Tensor:
        """``[B, C_s, h, w] -> [B, feature_dim]``: the body, global average pooling, then ``post``."""
        return self.post(torch.flatten(nn.functional.adaptive_avg_pool2d(self.body(feature_map), 1), 1))

    def forward(self, feature_map: Tensor) -> Tensor:
        """``[B, C_s, h, w] -> [B, feat_dim]``, un-normalised projections."""
        return self.head(self.features(feature_map))


def build_exit(backbone: nn.Module, attach_point: str, *, size: ExitSize, feat_dim: int = 128,
               head: ExitHeadKind = "mlp") -> Exit:
    """The exit of ``size`` hanging after ``attach_point`` of ``backbone`` (a registered backbone)."""
    if attach_point not in backbone.attach_points:
        raise ValueError(f"`attach_point` must be one of {list(backbone.attach_points)}, but got "
                         f"attach_point={attach_point!r}")
    if size not in EXIT_SIZES:
        raise ValueError(f"`size` must be one of {list(EXIT_SIZES)}, but got size={size!r}")
    body, post, dim = backbone.build_exit_layers(attach_point, size=size)
    return Exit(body, dim, attach_point=attach_point, size=size, feat_dim=feat_dim, head=head, post=post)


class MultiExitNet(nn.Module):
    """Backbone + projection head + one exit per enabled attach point.

    ``forward(x)`` returns the L2-normalised projections ``[B, V, feat_dim]`` with ``V = n_exits + 1``, ordered
    ``[exit1, ..., exitN, backbone]`` (the "views" SelfCon contrasts); ``features(x)`` returns the pooled features
    ``{"backbone": [B, backbone.feature_dim], name_k: [B, exits[k].feature_dim], ...}`` for the probes.

    Args:
        backbone: a registered backbone (the trunk).
        positions: one boolean per ``backbone.attach_points``; at least one true.
        size: exit size, ``fc``, ``small`` or ``same``.
        feat_dim: projection dimension.
        head: ``mlp``, ``linear`` or ``mlp_bn`` projection heads (the backbone's and every exit's).
    """

    def __init__(self, backbone: nn.Module, positions: Sequence[bool], *, size: ExitSize = "same",
                 feat_dim: int = 128, head: ExitHeadKind = "mlp") -> None:
        super().__init__()
        points = tuple(backbone.attach_points)
        if len(positions) != len(points) or not any(positions):
            raise ValueError(f"`positions` must be {len(points)} booleans (one per attach point {', '.join(points)}) "
                             f"with at least one true, but got positions={list(positions)!r}")
        self.backbone = backbone
        self.head = projection_head(backbone.feature_dim, feat_dim, kind=head)
        self.exit_points: tuple[str, ...] = tuple(p for p, on in zip(points, positions) if on)
        self.exit_names: tuple[str, ...] = exit_names(len(self.exit_points))
        self.exits = nn.ModuleList(
            build_exit(backbone, p, size=size, feat_dim=feat_dim, head=head) for p in self.exit_points)

    def _run(self, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Pooled backbone feature ``[B, D_f]`` and the trunk maps at the exits' attach points."""
        return self.backbone.forward_features(x, taps=self.exit_points)

    def forward(self, x: Tensor) -> Tensor:
        """``x [B, C, H, W] -> [B, n_exits + 1, feat_dim]``: normalised ``[exits..., backbone]`` projections."""
        pooled, maps = self._run(x)
        z = [exit_(maps[exit_.attach_point]) for exit_ in self.exits] + [self.head(pooled)]
        return nn.functional.normalize(torch.stack(z, dim=1).float(), dim=2)

    def features(self, x: Tensor) -> dict[str, Tensor]:
        """Pooled, un-projected features: ``{"backbone": [B, D_f], "exit"/"exit1"...: [B, D_k]}``."""
        pooled, maps = self._run(x)
        out = {"backbone": pooled}
        for name, exit_ in zip(self.exit_names, self.exits):
            out[name] = exit_.features(maps[exit_.attach_point])
        return out
