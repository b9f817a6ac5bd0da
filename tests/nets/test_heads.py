"""Projection heads."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainables.nets import projection_head


@pytest.mark.parametrize(("kind", "hidden_dim", "n_linear", "n_bn"),
                         [("mlp", None, 2, 0), ("mlp", 32, 2, 0), ("mlp_bn", 32, 2, 1), ("linear", None, 1, 0)])
def test_projection_head(kind: str, hidden_dim: int | None, n_linear: int, n_bn: int) -> None:
    head = projection_head(24, 16, kind=kind, hidden_dim=hidden_dim)
    assert head(torch.randn(5, 24)).shape == (5, 16)
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == n_linear and all(m.bias is not None for m in linears)
    assert sum(isinstance(m, nn.BatchNorm1d) for m in head.modules()) == n_bn
    if kind != "linear":
        assert linears[0].out_features == (24 if hidden_dim is None else hidden_dim)


def test_projection_head_without_bias_is_the_relic_critic() -> None:
    linear1, bn, relu, linear2 = projection_head(24, 64, kind="mlp_bn", hidden_dim=512, bias=False)
    assert (linear1.in_features, linear1.out_features, linear2.out_features) == (24, 512, 64)
    assert linear1.bias is None and linear2.bias is None
    assert isinstance(bn, nn.BatchNorm1d) and isinstance(relu, nn.ReLU)


def test_projection_head_default_and_errors() -> None:
    assert projection_head(8)(torch.randn(3, 8)).shape == (3, 128)
    with pytest.raises(ValueError, match="`kind`"):
        projection_head(8, kind="conv")
    with pytest.raises(ValueError, match="`hidden_dim`"):
        projection_head(8, kind="linear", hidden_dim=4)
    with pytest.raises(ValueError, match="`dim_in"):
        projection_head(0)
