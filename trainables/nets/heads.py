"""Projection heads that map a backbone feature to the space the contrastive loss compares."""

from __future__ import annotations

from typing import Literal

from torch import Tensor, nn

__all__ = ["HEAD_KINDS", "ProjectionHead"]

HeadKind = Literal["mlp", "linear"]
HEAD_KINDS: tuple[str, ...] = ("mlp", "linear")


class ProjectionHead(nn.Module):
    """Projection head ``h [B, dim_in] -> z [B, feat_dim]``, un-normalised (the caller L2-normalises for the loss).

    ``kind="mlp"``: ``Linear(dim_in, hidden_dim) -> ReLU -> Linear(hidden_dim, feat_dim)`` with ``hidden_dim``
    defaulting to ``dim_in`` (SupContrast's head); ``kind="linear"``: ``Linear(dim_in, feat_dim)``.
    """

    def __init__(
        self, dim_in: int, feat_dim: int = 128, *, kind: HeadKind = "mlp", hidden_dim: int | None = None
    ) -> None:
        super().__init__()
        if dim_in < 1:
            raise ValueError(f"`dim_in >= 1` must hold, but got dim_in={dim_in!r}")
        if feat_dim < 1:
            raise ValueError(f"`feat_dim >= 1` must hold, but got feat_dim={feat_dim!r}")
        if kind not in HEAD_KINDS:
            raise ValueError(f"`kind` must be one of {list(HEAD_KINDS)}, but got kind={kind!r}")
        if kind == "linear" and hidden_dim is not None:
            raise ValueError(f"`hidden_dim` must be None when kind='linear', but got hidden_dim={hidden_dim!r}")
        if hidden_dim is not None and hidden_dim < 1:
            raise ValueError(f"`hidden_dim >= 1` must hold, but got hidden_dim={hidden_dim!r}")
        self.dim_in = dim_in
        self.feat_dim = feat_dim
        self.kind = kind
        if kind == "linear":
            self.net: nn.Module = nn.Linear(dim_in, feat_dim)
        else:
            hidden = dim_in if hidden_dim is None else hidden_dim
            self.net = nn.Sequential(nn.Linear(dim_in, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, feat_dim))

    def forward(self, h: Tensor) -> Tensor:
        """``h [B, dim_in] -> [B, feat_dim]``."""
        return self.net(h)
