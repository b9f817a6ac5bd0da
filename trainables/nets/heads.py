"""Projection heads: the one factory that maps a backbone feature to the space a loss compares."""

from __future__ import annotations

from typing import Literal

from torch import nn

__all__ = ["HEAD_KINDS", "HeadKind", "projection_head"]

HeadKind = Literal["mlp", "mlp_bn", "linear"]
HEAD_KINDS: tuple[str, ...] = ("mlp", "mlp_bn", "linear")


def projection_head(dim_in: int, out_dim: int = 128, *, kind: HeadKind = "mlp", hidden_dim: int | None = None,
                    bias: bool = True) -> nn.Sequential:
    """Projection head ``[B, dim_in] -> [B, out_dim]``, un-normalised (the caller L2-normalises for the loss).

    - ``mlp``: ``Linear(dim_in, hidden) -> ReLU -> Linear(hidden, out_dim)`` (SupContrast's head);
    - ``mlp_bn``: ``Linear -> BatchNorm1d(hidden) -> ReLU -> Linear`` (SelfCon's ``mlp_bn``; with ``bias=False``,
      ``hidden_dim=512``, ``out_dim=64`` the ReLIC critic of the sigmoid method);
    - ``linear``: ``Linear(dim_in, out_dim)``.

    ``hidden_dim`` defaults to ``dim_in``; ``bias`` applies to every Linear layer.
    """
    if dim_in < 1:
        raise ValueError(f"`dim_in >= 1` must hold, but got dim_in={dim_in!r}")
    if out_dim < 1:
        raise ValueError(f"`out_dim >= 1` must hold, but got out_dim={out_dim!r}")
    if kind not in HEAD_KINDS:
        raise ValueError(f"`kind` must be one of {list(HEAD_KINDS)}, but got kind={kind!r}")
    if kind == "linear":
        if hidden_dim is not None:
            raise ValueError(f"`hidden_dim` must be None when kind='linear', but got hidden_dim={hidden_dim!r}")
        return nn.Sequential(nn.Linear(dim_in, out_dim, bias=bias))
    if hidden_dim is not None and hidden_dim < 1:
        raise ValueError(f"`hidden_dim >= 1` must hold, but got hidden_dim={hidden_dim!r}")
    hidden = dim_in if hidden_dim is None else hidden_dim
    norm = [nn.BatchNorm1d(hidden)] if kind == "mlp_bn" else []
    return nn.Sequential(nn.Linear(dim_in, hidden, bias=bias), *norm, nn.ReLU(inplace=True),
                         nn.Linear(hidden, out_dim, bias=bias))
