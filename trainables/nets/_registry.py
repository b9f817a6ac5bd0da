"""The backbone registry and the contract every registered backbone follows.

A backbone family module defines a :class:`Backbone` subclass and registers one factory per depth with
:func:`register_backbone`, naming its ``family`` and ``attach_points`` so that settings can be validated (e.g. SelfCon's
``selfcon_pos``) without building a network. :func:`build_backbone` builds one by name.

Every backbone maps ``x [B, in_channels, H, W]`` to ``[B, feature_dim]`` through ``stem -> stages -> final ->
global average pool``; each stage is a named submodule, so a SelfCon exit (``trainables.nets.exits``) can hang after
any of ``attach_points`` and :meth:`Backbone.build_tail` can build a fresh copy of the stages that follow.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar, Literal, TypeVar

import torch
from torch import Tensor, nn

__all__ = [
    "BACKBONES",
    "FAMILIES",
    "STEMS",
    "TAIL_SIZES",
    "Backbone",
    "BackboneInfo",
    "backbone_info",
    "build_backbone",
    "check_backbone_args",
    "register_backbone",
    "register_table",
    "scale_width",
    "init_weights",
    "small_depth",
]

Stem = Literal["cifar", "imagenet"]
STEMS: tuple[str, ...] = ("cifar", "imagenet")
#: The families with exits (``selfcon_arch`` values); a backbone registered without a family has none.
FAMILIES: tuple[str, ...] = ("resnet", "vgg", "wrn", "efficientnet")
TailSize = Literal["small", "same"]
TAIL_SIZES: tuple[str, ...] = ("small", "same")

BackboneFactory = Callable[..., nn.Module]
_F = TypeVar("_F", bound=BackboneFactory)


@dataclass(frozen=True)
class BackboneInfo:
    """What is known about a registered backbone without building it."""

    name: str
    family: str | None  # one of FAMILIES, or None for a backbone without exits
    attach_points: tuple[str, ...]  # stages an exit can hang after, in network order


_REGISTRY: dict[str, BackboneFactory] = {}
_INFO: dict[str, BackboneInfo] = {}

BACKBONES: Mapping[str, BackboneFactory] = MappingProxyType(_REGISTRY)
"""Read-only, live view of the registered backbones: name -> factory. ``tuple(BACKBONES)`` lists the names."""


def register_backbone(
    name: str, *, family: str | None = None, attach_points: Sequence[str] = ()
) -> Callable[[_F], _F]:
    """Decorator registering ``factory(*, stem, width, in_channels, zero_init_residual) -> nn.Module`` as ``name``.

    ``family`` (one of :data:`FAMILIES`) and ``attach_points`` describe the exits the backbone supports; leave them
    out for a backbone without exits.
    """
    if family is not None and family not in FAMILIES:
        raise ValueError(f"`family` must be one of {list(FAMILIES)} or None, but got family={family!r}")

    def decorator(factory: _F) -> _F:
        if name in _REGISTRY:
            raise ValueError(f"`name` must be unique, but backbone {name!r} is already registered")
        _REGISTRY[name] = factory
        _INFO[name] = BackboneInfo(name=name, family=family, attach_points=tuple(attach_points))
        return factory

    return decorator


def register_table(
    table: Mapping[str, tuple[str, Mapping[str, Any]]],
    build: Callable[..., nn.Module],
    *,
    family: str,
    attach_points: Sequence[str],
    module: str,
) -> dict[str, BackboneFactory]:
    """Register one factory per row of ``table`` (``name -> (docstring, fixed keyword arguments of build)``): the
    factory ``name(*, stem, width, in_channels, zero_init_residual)`` calls ``build(**fixed, stem=..., ...)``.
    Returns ``{name: factory}``, so the family module can bind each factory to its name (``module`` is its
    ``__name__``, which makes the factories importable and picklable by name)."""
    factories = {}
    for name, (doc, fixed) in table.items():
        factory = _table_factory(build, dict(fixed))
        factory.__name__ = factory.__qualname__ = name
        factory.__module__, factory.__doc__ = module, doc
        factories[name] = register_backbone(name, family=family, attach_points=attach_points)(factory)
    return factories


def _table_factory(build: Callable[..., nn.Module], fixed: dict[str, Any]) -> BackboneFactory:
    def factory(
        *, stem: Stem = "cifar", width: float = 1.0, in_channels: int = 3, zero_init_residual: bool = False
    ) -> nn.Module:
        return build(**fixed, stem=stem, width=width, in_channels=in_channels, zero_init_residual=zero_init_residual)

    return factory


def backbone_info(name: str) -> BackboneInfo:
    """Family and attach points of the registered backbone ``name`` (no network is built)."""
    if name not in _INFO:
        raise ValueError(f"`backbone` must be one of {sorted(_INFO)}, but got backbone={name!r}")
    return _INFO[name]


def build_backbone(
    name: str,
    *,
    stem: Stem = "cifar",
    width: float = 1.0,
    in_channels: int = 3,
    zero_init_residual: bool = False,
) -> nn.Module:
    """Build the registered backbone ``name``.

    The module maps ``x [B, in_channels, H, W]`` to ``[B, feature_dim]`` and exposes ``family``, ``feature_dim``,
    ``stage_names``, ``attach_points``, ``stage_channels``, ``forward_features(x, taps)`` and ``build_tail``.
    """
    if name not in _REGISTRY:
        raise ValueError(f"`backbone` must be one of {sorted(_REGISTRY)}, but got backbone={name!r}")
    return _REGISTRY[name](stem=stem, width=width, in_channels=in_channels, zero_init_residual=zero_init_residual)


def check_backbone_args(*, stem: str, width: float, in_channels: int) -> None:
    """The arguments every factory shares; ValueError naming the first bad one."""
    if stem not in STEMS:
        raise ValueError(f"`stem` must be one of {list(STEMS)}, but got stem={stem!r}")
    if not width > 0:
        raise ValueError(f"`width > 0` must hold, but got width={width!r}")
    if in_channels < 1:
        raise ValueError(f"`in_channels >= 1` must hold, but got in_channels={in_channels!r}")


def scale_width(channels: int, width: float) -> int:
    """``max(1, round(channels * width))``: a stage's channels under the width multiplier."""
    return max(1, round(channels * width))


def small_depth(blocks: int) -> int:
    """Blocks of a stage in a ``small`` tail: half of the trunk's, at least one (the SelfCon reference's rule)."""
    return max(1, blocks // 2)


class Backbone(nn.Module, ABC):
    """Base of the registered backbones: ``stem -> stages (stage_names) -> final -> global average pool``.

    Subclasses build ``self.stem``, one submodule per entry of ``stage_names``, ``self.final`` (what runs between
    the last stage and the pool: identity, or a pre-activation network's closing BN-ReLU) and set
    ``stage_channels`` and ``feature_dim``; they implement :meth:`build_tail`.

    Attributes:
        family: the exit architecture (``selfcon_arch``) this backbone supports.
        stage_names: the stages, in order.
        attach_points: the stages an exit can hang after.
        stage_channels: output channels of each stage.
        feature_dim: channels of the pooled feature.
    """

    family: ClassVar[str]
    stage_names: tuple[str, ...]
    attach_points: tuple[str, ...]
    stage_channels: dict[str, int]
    feature_dim: int
    stem: nn.Module
    final: nn.Module

    def forward_features(self, x: Tensor, taps: Iterable[str] = ()) -> tuple[Tensor, dict[str, Tensor]]:
        """Run the network, keeping the maps after the stages named in ``taps``.

        Returns the pooled feature ``[B, feature_dim]`` and ``{s: [B, stage_channels[s], h_s, w_s] for s in taps}``.
        """
        wanted = tuple(taps)
        unknown = [tap for tap in wanted if tap not in self.stage_names]
        if unknown:
            raise ValueError(f"`taps` must be among {list(self.stage_names)}, but got unknown taps {unknown}")
        maps: dict[str, Tensor] = {}
        x = self.stem(x)
        for name in self.stage_names:
            x = getattr(self, name)(x)
            if name in wanted:
                maps[name] = x
        return torch.flatten(nn.functional.adaptive_avg_pool2d(self.final(x), 1), 1), maps

    def forward(self, x: Tensor) -> Tensor:
        """``x [B, in_channels, H, W] -> [B, feature_dim]``."""
        return self.forward_features(x)[0]

    def build_exit_layers(self, after: str, *, size: str) -> tuple[nn.Module, nn.Module, int]:
        """The layers of a SelfCon exit after ``after``: ``(body, post, dim)``; the exit computes
        ``post(pool(body(map)))``, ``[B, stage_channels[after], h, w] -> [B, dim]``.

        As the reference: ``fc`` is ``body = identity`` and ``post = Linear(stage_channels[after] -> feature_dim)``
        (ResNet-18 after layer2: 128 -> 512); ``small`` / ``same`` are ``body = build_tail(after, size)`` and
        ``post = identity``. Families whose reference exit differs override this (EfficientNet).
        """
        if size == "fc":
            self._check_tail(after, "same")
            return nn.Identity(), nn.Linear(self.stage_channels[after], self.feature_dim), self.feature_dim
        tail, dim = self.build_tail(after, size=size)  # type: ignore[arg-type]
        return tail, nn.Identity(), dim

    def build_tail(self, after: str, *, size: TailSize) -> tuple[nn.Module, int]:
        """A freshly initialised network equivalent to the stages after ``after`` (and ``final``), sharing nothing
        with this backbone: ``[B, stage_channels[after], h, w] -> [B, C, h', w']`` (not pooled), and ``C``.

        ``size="same"`` copies the architecture; ``size="small"`` keeps the widths and gives each stage
        ``max(1, blocks // 2)`` blocks (the SelfCon reference's ``small`` sub-network). Families provide
        ``_stage_depth``, ``_make_stage`` and, when a closing layer follows the last stage, ``_tail_top``.
        """
        start = self._check_tail(after, size) + 1
        tail = nn.Sequential()
        in_planes = self.stage_channels[after]
        for index in range(start, len(self.stage_names)):
            name = self.stage_names[index]
            tail.add_module(name, self._make_stage(index, in_planes, self._tail_depth(index, size)))
            in_planes = self.stage_channels[name]
        top = self._tail_top(in_planes)
        if top is not None:
            tail.add_module("final", top[0])
            in_planes = top[1]
        init_weights(tail, zero_init_residual=getattr(self, "zero_init_residual", False))
        return tail, in_planes

    @abstractmethod
    def _stage_depth(self, index: int) -> int:
        """Blocks (or convs) in stage ``index``."""

    def _tail_depth(self, index: int, size: str) -> int:
        """Blocks of stage ``index`` in a tail: the trunk's for ``same``, :func:`small_depth` of it for ``small``."""
        depth = self._stage_depth(index)
        return depth if size == "same" else small_depth(depth)

    @abstractmethod
    def _make_stage(self, index: int, in_planes: int, depth: int) -> nn.Module:
        """A fresh stage ``index`` of ``depth`` blocks taking ``in_planes`` channels."""

    def _tail_top(self, in_planes: int) -> tuple[nn.Module, int] | None:
        """The layer that closes the network after its last stage and its output channels (None: nothing)."""
        return None

    def _check_tail(self, after: str, size: str) -> int:
        """Index of ``after`` in ``stage_names``; ValueError unless it is an attach point and ``size`` is valid."""
        if after not in self.attach_points:
            raise ValueError(f"`after` must be one of {list(self.attach_points)}, but got after={after!r}")
        if size not in TAIL_SIZES:
            raise ValueError(f"`size` must be one of {list(TAIL_SIZES)}, but got size={size!r}")
        return self.stage_names.index(after)


def init_weights(root: nn.Module, *, zero_init_residual: bool = False) -> None:
    """Kaiming-normal convs (fan_out, ReLU) with zero biases, unit BN/GroupNorm; with ``zero_init_residual`` the last
    BN of every residual branch (a module with ``last_bn`` whose ``residual`` is not False) starts at zero, so each
    block starts as the identity (Goyal et al., 2017)."""
    for module in root.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d | nn.GroupNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    if zero_init_residual:
        for module in root.modules():
            if hasattr(module, "last_bn") and getattr(module, "residual", True):
                nn.init.zeros_(module.last_bn.weight)
