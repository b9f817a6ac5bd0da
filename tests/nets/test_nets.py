"""Backbone shapes, taps, registry errors and projection heads, at tiny widths on CPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainables.nets import (
    BACKBONES,
    Bottleneck,
    ResNet,
    build_backbone,
    projection_head,
    register_backbone,
)

DEPTHS = {"resnet18": 1, "resnet34": 1, "resnet50": 4, "resnet101": 4}  # name -> block expansion
WIDTH = 0.125  # base widths 8, 16, 32, 64


def test_registry_lists_every_depth() -> None:
    assert set(DEPTHS) <= set(BACKBONES)


@pytest.mark.parametrize("stem", ["cifar", "imagenet"])
@pytest.mark.parametrize("name", sorted(DEPTHS))
def test_output_shape(name: str, stem: str) -> None:
    net = build_backbone(name, stem=stem, width=WIDTH)
    expansion = DEPTHS[name]
    assert net.feature_dim == 64 * expansion
    assert net.stage_channels == {
        "layer1": 8 * expansion,
        "layer2": 16 * expansion,
        "layer3": 32 * expansion,
        "layer4": 64 * expansion,
    }
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, net.feature_dim)


@pytest.mark.parametrize(("stem", "sizes"), [("cifar", (16, 8, 4, 2)), ("imagenet", (4, 2, 1, 1))])
def test_forward_features_taps(stem: str, sizes: tuple[int, ...]) -> None:
    net = build_backbone("resnet18", stem=stem, width=WIDTH).eval()
    x = torch.randn(2, 3, 16, 16)
    pooled, maps = net.forward_features(x, taps=net.stage_names)
    assert list(maps) == list(net.stage_names)
    for (name, feature_map), size in zip(maps.items(), sizes):
        assert feature_map.shape == (2, net.stage_channels[name], size, size)
    torch.testing.assert_close(pooled, net(x))
    torch.testing.assert_close(pooled, maps["layer4"].mean(dim=(2, 3)))
    assert net.forward_features(x, taps=("layer2",))[1].keys() == {"layer2"}
    assert net.forward_features(x)[1] == {}


def test_named_stages_and_attach_points() -> None:
    net = build_backbone("resnet50", width=WIDTH)
    assert isinstance(net, ResNet)
    assert net.stage_names == ("layer1", "layer2", "layer3", "layer4")
    assert net.attach_points == ("layer1", "layer2", "layer3")
    names = {name for name, _ in net.named_children()}
    assert {"stem", *net.stage_names} <= names


def test_in_channels_and_minimum_width() -> None:
    net = build_backbone("resnet18", in_channels=1, width=0.001)
    assert net.stage_channels == {name: 1 for name in net.stage_names}
    assert net(torch.randn(2, 1, 8, 8)).shape == (2, 1)


def test_zero_init_residual() -> None:
    net = build_backbone("resnet50", width=WIDTH, zero_init_residual=True)
    blocks = [m for m in net.modules() if isinstance(m, Bottleneck)]
    assert blocks and all(torch.count_nonzero(block.bn3.weight) == 0 for block in blocks)
    assert torch.count_nonzero(build_backbone("resnet50", width=WIDTH).layer1[0].bn3.weight) > 0


def test_bad_backbone_name_lists_choices() -> None:
    with pytest.raises(ValueError, match=r"`backbone` must be one of .*'resnet18'.*got backbone='resnet19'"):
        build_backbone("resnet19")


@pytest.mark.parametrize(
    ("kwargs", "argument"), [({"stem": "tiny"}, "stem"), ({"width": 0.0}, "width"), ({"in_channels": 0}, "in_channels")]
)
def test_bad_backbone_arguments(kwargs: dict, argument: str) -> None:
    with pytest.raises(ValueError, match=rf"`{argument}"):
        build_backbone("resnet18", **kwargs)


def test_bad_taps() -> None:
    with pytest.raises(ValueError, match=r"`taps`.*'fc'"):
        build_backbone("resnet18", width=WIDTH).forward_features(torch.randn(2, 3, 8, 8), taps=("fc",))


def test_register_duplicate_name() -> None:
    with pytest.raises(ValueError, match="resnet18"):
        register_backbone("resnet18")(lambda **_: nn.Identity())


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
