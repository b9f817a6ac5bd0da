"""Projection heads."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainables.nets import ProjectionHead


@pytest.mark.parametrize(("kind", "hidden_dim", "n_linear"), [("mlp", None, 2), ("mlp", 32, 2), ("linear", None, 1)])
def test_projection_head(kind: str, hidden_dim: int | None, n_linear: int) -> None:
    head = ProjectionHead(24, 16, kind=kind, hidden_dim=hidden_dim)
    assert head(torch.randn(5, 24)).shape == (5, 16)
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == n_linear
    if kind == "mlp":
        assert linears[0].out_features == (24 if hidden_dim is None else hidden_dim)


def test_projection_head_default_and_errors() -> None:
    assert ProjectionHead(8)(torch.randn(3, 8)).shape == (3, 128)
    with pytest.raises(ValueError, match="`kind`"):
        ProjectionHead(8, kind="conv")
    with pytest.raises(ValueError, match="`hidden_dim`"):
        ProjectionHead(8, kind="linear", hidden_dim=4)
    with pytest.raises(ValueError, match="`dim_in"):
        ProjectionHead(0)
