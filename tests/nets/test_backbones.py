"""Every registered backbone (ResNet, VGG, WRN, EfficientNet): shapes at both stems, taps, registry facts, tails,
errors; and the family-specific layouts. Tiny widths on CPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from trainables.nets import (
    BACKBONES,
    FAMILIES,
    Bottleneck,
    MultiExitNet,
    ResNet,
    backbone_info,
    build_backbone,
    register_backbone,
)
from trainables.nets.efficientnet import MBConv

WIDTH = 0.125  # base widths 8, 16, 32, 64
ALL = sorted(BACKBONES)
#: One backbone per family (the other depths share the code), with its expected attach-point count.
FAMILY_NETS = {"resnet18": ("resnet", 3), "vgg16_bn": ("vgg", 4), "wrn16_8": ("wrn", 2),
               "effnet_small": ("efficientnet", 1)}
RESNETS = {"resnet18": 1, "resnet34": 1, "resnet50": 4, "resnet101": 4}  # name -> block expansion


def test_registry_lists_every_family_and_keeps_resnets_first() -> None:
    assert tuple(BACKBONES) == ("resnet18", "resnet34", "resnet50", "resnet101", "vgg13", "vgg13_bn", "vgg16",
                                "vgg16_bn", "wrn16_8", "effnet_small")
    assert {backbone_info(n).family for n in BACKBONES} == set(FAMILIES)


@pytest.mark.parametrize("name", ALL)
def test_registered_facts_match_the_built_network(name: str) -> None:
    net = build_backbone(name, width=WIDTH)
    info = backbone_info(name)
    assert (net.family, net.attach_points) == (info.family, info.attach_points)
    assert set(net.attach_points) < set(net.stage_names)  # the last stage is never an attach point
    assert list(net.stage_channels) == list(net.stage_names)


@pytest.mark.parametrize("name", sorted(FAMILY_NETS))
def test_family_and_attach_points(name: str) -> None:
    family, n_attach = FAMILY_NETS[name]
    net = build_backbone(name, width=WIDTH)
    assert net.family == family and len(net.attach_points) == n_attach
    assert net.feature_dim == 64  # 512 * 0.125 for every family


@pytest.mark.parametrize(("stem", "size"), [("cifar", 16), ("imagenet", 64)])
@pytest.mark.parametrize("name", ALL)
def test_shapes_and_taps(name: str, stem: str, size: int) -> None:
    net = build_backbone(name, stem=stem, width=WIDTH).eval()
    x = torch.randn(2, 3, size, size)
    pooled, maps = net.forward_features(x, taps=net.stage_names)
    assert pooled.shape == (2, net.feature_dim)
    torch.testing.assert_close(pooled, net(x))
    assert list(maps) == list(net.stage_names)
    sides = []
    for name_, feature_map in maps.items():
        assert feature_map.shape[:2] == (2, net.stage_channels[name_])
        sides.append(feature_map.shape[-1])
    assert sides == sorted(sides, reverse=True) and sides[-1] >= 1  # resolution only shrinks, never vanishes
    assert net.forward_features(x, taps=net.attach_points[:1])[1].keys() == {net.attach_points[0]}


@pytest.mark.parametrize(("name", "down"), [("resnet18", 4), ("wrn16_8", 4), ("effnet_small", 4), ("vgg13", 1)])
def test_imagenet_stem_down_samples_more(name: str, down: int) -> None:
    """The imagenet stem divides the resolution of the first attach point by ``down`` more than the cifar stem
    (VGG has no stem: both build the same network)."""
    x = torch.randn(1, 3, 64, 64)
    side = {}
    for stem in ("cifar", "imagenet"):
        net = build_backbone(name, stem=stem, width=WIDTH).eval()
        point = net.attach_points[0]
        side[stem] = net.forward_features(x, taps=(point,))[1][point].shape[-1]
    assert side["cifar"] == side["imagenet"] * down


@pytest.mark.parametrize("name", ALL)
def test_in_channels(name: str) -> None:
    net = build_backbone(name, width=WIDTH, in_channels=1)
    assert net(torch.randn(2, 1, 16, 16)).shape == (2, net.feature_dim)


@pytest.mark.parametrize("stem", ["cifar", "imagenet"])
@pytest.mark.parametrize("name", sorted(RESNETS))
def test_resnet_widths(name: str, stem: str) -> None:
    net = build_backbone(name, stem=stem, width=WIDTH)
    expansion = RESNETS[name]
    assert net.feature_dim == 64 * expansion
    assert net.stage_channels == {
        "layer1": 8 * expansion,
        "layer2": 16 * expansion,
        "layer3": 32 * expansion,
        "layer4": 64 * expansion,
    }
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, net.feature_dim)


@pytest.mark.parametrize(("stem", "sizes"), [("cifar", (16, 8, 4, 2)), ("imagenet", (4, 2, 1, 1))])
def test_resnet_taps(stem: str, sizes: tuple[int, ...]) -> None:
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


def test_resnet_stages_and_attach_points() -> None:
    net = build_backbone("resnet50", width=WIDTH)
    assert isinstance(net, ResNet)
    assert net.stage_names == ("layer1", "layer2", "layer3", "layer4")
    assert net.attach_points == ("layer1", "layer2", "layer3")
    names = {name for name, _ in net.named_children()}
    assert {"stem", *net.stage_names} <= names


def test_resnet_minimum_width() -> None:
    net = build_backbone("resnet18", in_channels=1, width=0.001)
    assert net.stage_channels == {name: 1 for name in net.stage_names}
    assert net(torch.randn(2, 1, 8, 8)).shape == (2, 1)


def test_vgg_variants() -> None:
    def convs(net: nn.Module) -> int:
        return sum(isinstance(m, nn.Conv2d) for m in net.modules())

    assert convs(build_backbone("vgg13", width=WIDTH)) == 10
    assert convs(build_backbone("vgg16", width=WIDTH)) == 13
    assert not any(isinstance(m, nn.BatchNorm2d) for m in build_backbone("vgg16", width=WIDTH).modules())
    assert sum(isinstance(m, nn.BatchNorm2d) for m in build_backbone("vgg16_bn", width=WIDTH).modules()) == 13


def test_wrn16_8_layout() -> None:
    net = build_backbone("wrn16_8")
    assert net.stage_channels == {"layer1": 128, "layer2": 256, "layer3": 512}
    assert [len(getattr(net, s)) for s in net.stage_names] == [2, 2, 2]


def test_effnet_small_layout() -> None:
    net = build_backbone("effnet_small")
    assert net.attach_points == ("stage4",) and net.stage_channels["stage4"] == 80 and net.feature_dim == 512
    assert [len(getattr(net, s)) for s in net.stage_names] == [1, 2, 2, 3, 3, 4, 1]


@pytest.mark.parametrize("size", ["small", "same"])
@pytest.mark.parametrize("name", sorted(FAMILY_NETS) + ["resnet50", "vgg13"])
def test_tails_are_fresh_copies_of_the_remaining_stages(name: str, size: str) -> None:
    net = build_backbone(name, width=WIDTH).eval()
    trunk = {p.data_ptr() for p in net.parameters()}
    x = torch.randn(2, 3, 16, 16)
    for point in net.attach_points:
        tail, channels = net.build_tail(point, size=size)
        assert not trunk & {p.data_ptr() for p in tail.parameters()}
        later = net.stage_names[net.stage_names.index(point) + 1:]
        assert [n for n, _ in tail.named_children() if n != "final"] == list(later)
        fmap = net.forward_features(x, taps=(point,))[1][point]
        out = tail.eval()(fmap)
        assert out.shape[:2] == (2, channels) and channels == net.feature_dim
        for stage in later:
            trunk_depth, tail_depth = _depth(getattr(net, stage)), _depth(getattr(tail, stage))
            expected = trunk_depth if size == "same" else max(1, trunk_depth // 2)
            if net.family == "vgg":  # the reference: small = 1 conv, same = 3 convs for VGG-16 (cfg D), 2 otherwise
                expected = 1 if size == "small" else (3 if name.startswith("vgg16") else 2)
            assert tail_depth == expected
            if size == "same" and trunk_depth == expected:  # same architecture (and fresh initial weights)
                shapes = [p.shape for p in getattr(net, stage).parameters()]
                assert shapes == [p.shape for p in getattr(tail, stage).parameters()]


def _depth(stage: nn.Module) -> int:
    """Blocks of a stage (convs for a VGG block)."""
    convs = [m for m in stage.children() if isinstance(m, nn.Conv2d)]
    return len(convs) if convs else len(stage)


def test_same_tail_is_not_a_copy_of_the_trunk_weights() -> None:
    net = build_backbone("resnet18", width=WIDTH)
    tail, _ = net.build_tail("layer2", size="same")
    assert not torch.equal(tail.layer3[0].conv1.weight, net.layer3[0].conv1.weight)


def test_zero_init_residual() -> None:
    net = build_backbone("resnet50", width=WIDTH, zero_init_residual=True)
    blocks = [m for m in net.modules() if isinstance(m, Bottleneck)]
    assert blocks and all(torch.count_nonzero(block.bn3.weight) == 0 for block in blocks)
    assert torch.count_nonzero(build_backbone("resnet50", width=WIDTH).layer1[0].bn3.weight) > 0
    net = build_backbone("effnet_small", width=WIDTH, zero_init_residual=True)
    residual = [m for m in net.modules() if isinstance(m, MBConv) and m.residual]
    assert residual and all(torch.count_nonzero(m.last_bn.weight) == 0 for m in residual)
    for name in ("vgg16", "wrn16_8"):
        with pytest.raises(ValueError, match="`zero_init_residual` must be False"):
            build_backbone(name, zero_init_residual=True)


@pytest.mark.parametrize("name", ALL)
@pytest.mark.parametrize(("kwargs", "argument"), [({"stem": "tiny"}, "stem"), ({"width": 0.0}, "width"),
                                                  ({"in_channels": 0}, "in_channels")])
def test_bad_arguments(name: str, kwargs: dict, argument: str) -> None:
    with pytest.raises(ValueError, match=rf"`{argument}"):
        build_backbone(name, **kwargs)


def test_bad_taps() -> None:
    with pytest.raises(ValueError, match=r"`taps`.*'fc'"):
        build_backbone("resnet18", width=WIDTH).forward_features(torch.randn(2, 3, 8, 8), taps=("fc",))


def test_bad_tail_arguments() -> None:
    net = build_backbone("vgg13", width=WIDTH)
    with pytest.raises(ValueError, match=r"`after` must be one of \['block1'.*got after='block5'"):
        net.build_tail("block5", size="same")
    with pytest.raises(ValueError, match=r"`size` must be one of \['small', 'same'\]"):
        net.build_tail("block1", size="fc")


def test_backbone_info_and_registration_errors() -> None:
    with pytest.raises(ValueError, match=r"`backbone` must be one of .*got backbone='vgg19'"):
        backbone_info("vgg19")
    with pytest.raises(ValueError, match=r"`backbone` must be one of .*'resnet18'.*got backbone='resnet19'"):
        build_backbone("resnet19")
    with pytest.raises(ValueError, match=r"`family` must be one of"):
        register_backbone("mine", family="transformer")
    with pytest.raises(ValueError, match="already registered"):
        register_backbone("wrn16_8", family="wrn")(lambda **_: nn.Identity())
    with pytest.raises(ValueError, match="resnet18"):
        register_backbone("resnet18")(lambda **_: nn.Identity())


def test_multi_exit_net_rejects_bad_positions() -> None:
    net = build_backbone("wrn16_8", width=WIDTH)
    for positions in ([True], [False, False], [True, True, True]):
        with pytest.raises(ValueError, match=r"`positions` must be 2 booleans .*layer1, layer2"):
            MultiExitNet(net, positions)
