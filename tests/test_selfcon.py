"""SelfCon: exits on every family and size, gradient isolation, the loss against supcon_loss and a naive loop,
validation (also through the CLI, before Ray), the search space, and a short digits run."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest
import torch
import yaml
from conftest import TINY
from ddp_helpers import run_workers
from method_contract import check_method_contract, data_batch

from search.cli import main
from spaces import selfcon as selfcon_space
from trainables import distributed
from trainables.config import ConfigError
from trainables.data import load_dataset
from trainables.losses import supcon_loss
from trainables.methods import get_method
from trainables.methods.selfcon import SelfConConfig, selfcon_loss
from trainables.nets import EXIT_SIZES, MultiExitNet, build_backbone, exit_names
from trainables.trial import TrialSpec

WIDTH = 0.125
FAMILIES = {"resnet18": "resnet", "vgg13_bn": "vgg", "wrn16_8": "wrn", "effnet_small": "efficientnet"}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


# ---------------------------------------------------------------------------------------------------------------------
# Exits


@pytest.mark.parametrize("size", EXIT_SIZES)
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_one_feature_per_enabled_exit_plus_backbone(name: str, size: str) -> None:
    backbone = build_backbone(name, width=WIDTH)
    n = len(backbone.attach_points)
    for positions in ([True] * n, [i == n - 1 for i in range(n)]):
        net = MultiExitNet(backbone, positions, size=size, feat_dim=16).eval()
        x = torch.randn(3, 3, 16, 16)
        z = net(x)
        k = sum(positions)
        assert z.shape == (3, k + 1, 16)
        torch.testing.assert_close(z.norm(dim=2), torch.ones(3, k + 1))
        feats = net.features(x)
        assert list(feats) == ["backbone", *exit_names(k)]
        assert feats["backbone"].shape == (3, backbone.feature_dim)
        for exit_, key in zip(net.exits, exit_names(k)):
            expected = backbone.feature_dim
            assert feats[key].shape == (3, expected) == (3, exit_.feature_dim)


@pytest.mark.parametrize(("kind", "n_bn", "n_linear"), [("mlp", 0, 2), ("linear", 0, 1), ("mlp_bn", 1, 2)])
def test_head_kinds(kind: str, n_bn: int, n_linear: int) -> None:
    net = MultiExitNet(build_backbone("resnet18", width=WIDTH), [False, True, False], head=kind, feat_dim=16)
    for head in (net.head, net.exits[0].head):
        assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in head.modules()) == n_bn
        assert sum(isinstance(m, torch.nn.Linear) for m in head.modules()) == n_linear
    assert net(torch.randn(4, 3, 16, 16)).shape == (4, 2, 16)


def test_exit_names() -> None:
    assert exit_names(1) == ("exit",)
    assert exit_names(3) == ("exit1", "exit2", "exit3")
    net = MultiExitNet(build_backbone("resnet18", width=WIDTH), [True, False, True], size="fc")
    assert net.exit_points == ("layer1", "layer3") and net.exit_names == ("exit1", "exit2")


@pytest.mark.parametrize("size", EXIT_SIZES)
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_exit_gradients_reach_only_the_trunk_before_its_attach_point(name: str, size: str) -> None:
    backbone = build_backbone(name, width=WIDTH)
    net = MultiExitNet(backbone, [True] * len(backbone.attach_points), size=size, feat_dim=8)
    trunk_ptrs = {p.data_ptr() for p in net.backbone.parameters()}
    assert not trunk_ptrs & {p.data_ptr() for p in net.exits.parameters()}  # nothing shared
    x = torch.randn(4, 3, 16, 16)
    for k, exit_ in enumerate(net.exits):
        net.zero_grad(set_to_none=True)
        z = net(x)
        (z[:, k] * torch.randn_like(z[:, k])).sum().backward()
        cut = backbone.stage_names.index(exit_.attach_point)
        for index, stage in enumerate(backbone.stage_names):
            params = list(getattr(backbone, stage).parameters())
            assert _reached(params) if index <= cut else not _reached(params), stage
        assert not _reached(backbone.final.parameters()) and not _reached(net.head.parameters())
        assert all(p.grad is not None for p in exit_.parameters()) and _reached(exit_.head.parameters())
        assert not _reached(e for j, x in enumerate(net.exits) if j != k for e in x.parameters())


def _reached(params) -> bool:
    """Whether a non-zero gradient reached any of ``params`` (stacking the views gives the others zero gradients)."""
    return any(p.grad is not None and bool(p.grad.any()) for p in params)


# ---------------------------------------------------------------------------------------------------------------------
# Loss


def _naive(features: torch.Tensor, labels: torch.Tensor | None, tau: float, base: float, *, anchors, contrasts,
           skip_without_positive: bool = False) -> torch.Tensor:
    """Per-anchor SupCon over (sample, view) pairs: the reference formula written as loops."""
    n = features.shape[0]
    lab = labels if labels is not None else torch.arange(n)
    terms = []
    for i, v in anchors:
        others = [(j, u) for j, u in contrasts if (j, u) != (i, v)]
        logits = torch.stack([features[i, v] @ features[j, u] / tau for j, u in others])
        log_prob = logits - torch.logsumexp(logits, 0)
        pos = [t for t, (j, _) in enumerate(others) if lab[j] == lab[i]]
        if not pos:
            if not skip_without_positive:
                terms.append(torch.zeros(()))
            continue
        terms.append(-(tau / base) * log_prob[pos].mean())
    return torch.stack(terms).mean() if terms else torch.zeros(())


def _features(b: int = 12, w: int = 3, d: int = 8, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(b, w, d, generator=g), dim=2)


@pytest.mark.parametrize("with_labels", [True, False])
def test_loss_equals_supcon_on_stacked_features_and_a_naive_loop(with_labels: bool) -> None:
    f = _features()
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 3, 3, 4, 5, 6, 0]) if with_labels else None
    loss = selfcon_loss(f, labels, exit_views=[True, True, False], temperature=0.2)
    torch.testing.assert_close(loss, supcon_loss(f, labels, temperature=0.2))
    pairs = [(i, v) for i in range(12) for v in range(3)]
    torch.testing.assert_close(loss, _naive(f, labels, 0.2, 0.07, anchors=pairs, contrasts=pairs))


@pytest.mark.parametrize("with_labels", [True, False])
@pytest.mark.parametrize("n_aug", [1, 2])
def test_alpha_variant_formula(with_labels: bool, n_aug: int) -> None:
    """``L = S_F + alpha * S_G``: S_F on backbone views, over the anchors with a positive (SupCon-S); S_G anchored
    on exit views, contrasted against every vector."""
    v = 3  # two exits + backbone per augmented view
    f = _features(w=v * n_aug, seed=1)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 3, 3, 4, 5, 6, 0]) if with_labels else None
    exit_views = [k < v - 1 for _ in range(n_aug) for k in range(v)]
    loss = selfcon_loss(f, labels, exit_views=exit_views, alpha=0.7, temperature=0.2)
    backbone = [w for w, e in enumerate(exit_views) if not e]
    fb = f[:, backbone]
    b_pairs = [(i, u) for i in range(12) for u in range(n_aug)]
    s_f = _naive(fb, labels, 0.2, 0.07, anchors=b_pairs, contrasts=b_pairs, skip_without_positive=True)
    all_pairs = [(i, w) for i in range(12) for w in range(v * n_aug)]
    exit_pairs = [(i, w) for i, w in all_pairs if exit_views[w]]
    s_g = _naive(f, labels, 0.2, 0.07, anchors=exit_pairs, contrasts=all_pairs)
    torch.testing.assert_close(loss, s_f + 0.7 * s_g)


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_per_rank_losses_average_to_the_global_loss(alpha: float) -> None:
    """What DDP relies on: anchors split over two 'ranks' (anchor_index), contrasts global."""
    f = _features(seed=2)
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 3, 3, 4, 5, 6, 0])
    kw = dict(exit_views=[True, True, False], alpha=alpha, temperature=0.1)
    full = selfcon_loss(f, labels, **kw)
    halves = [selfcon_loss(f, labels, anchor_index=slice(r * 6, (r + 1) * 6), **kw) for r in range(2)]
    torch.testing.assert_close((halves[0] + halves[1]) / 2, full)


def _ddp_worker(rank: int) -> dict:
    """One of two gloo ranks: the method's recipe (gather with gradient, labels gathered, local anchors)."""
    features, labels = _features(b=8, seed=3).double(), torch.tensor([0, 1, 2, 0, 1, 3, 0, 2])
    out = {}
    for alpha in (0.0, 0.5):
        rows = slice(rank * 4, (rank + 1) * 4)
        local = features[rows].clone().requires_grad_()
        loss = selfcon_loss(distributed.gather_with_grad(local), distributed.gather(labels[rows]),
                            exit_views=[True, True, False], alpha=alpha, temperature=0.2,
                            anchor_index=distributed.local_rows(4))
        loss.backward()
        out[alpha] = (loss.detach(), local.grad / 2)  # DDP averages parameter gradients over the ranks
    return out


def test_two_process_loss_and_gradient_match_single_process(tmp_path: Path) -> None:
    ranks = run_workers(_ddp_worker, tmp_path=tmp_path)
    features, labels = _features(b=8, seed=3).double().requires_grad_(), torch.tensor([0, 1, 2, 0, 1, 3, 0, 2])
    for alpha in (0.0, 0.5):
        expected = selfcon_loss(features, labels, exit_views=[True, True, False], alpha=alpha, temperature=0.2)
        (grad,) = torch.autograd.grad(expected, features)
        torch.testing.assert_close((ranks[0][alpha][0] + ranks[1][alpha][0]) / 2, expected.detach())
        torch.testing.assert_close(torch.cat([ranks[0][alpha][1], ranks[1][alpha][1]]), grad)


def test_loss_argument_errors() -> None:
    f = _features()
    with pytest.raises(ValueError, match="`exit_views` must hold one flag per view"):
        selfcon_loss(f, exit_views=[True, False])
    with pytest.raises(ValueError, match="`alpha >= 0`"):
        selfcon_loss(f, exit_views=[True, True, False], alpha=-1.0)
    with pytest.raises(ValueError, match="at least one exit and one backbone view"):
        selfcon_loss(f, exit_views=[False, False, False], alpha=1.0)


def _method(digits, **settings):
    spec = TrialSpec.from_settings("selfcon", {**TINY, "width": WIDTH, **settings})
    return get_method("selfcon")(spec.method_config, train=spec.train, data=digits)


@pytest.mark.parametrize("settings", [{}, {"labels": False}, {"selfcon_pos": [True, True, False], "alpha": 0.5}])
def test_method_loss_is_the_loss_of_the_model_outputs(digits, settings) -> None:
    method = _method(digits, **settings)
    model = method.build()
    batch = data_batch(digits)
    labels = batch.labels
    views = method.views(batch.images, torch.Generator().manual_seed(0))
    assert len(views) == 1
    loss, _ = method.loss(model, views, batch, step=0)
    z = model(views[0])  # BatchNorm in train mode: the same batch gives the same outputs
    cfg = method.config
    expected = selfcon_loss(z, labels if cfg.labels else None, exit_views=[True] * (z.shape[1] - 1) + [False],
                            alpha=cfg.alpha, temperature=cfg.temperature)
    torch.testing.assert_close(loss, expected)
    if cfg.alpha == 0:
        torch.testing.assert_close(loss, supcon_loss(z, labels if cfg.labels else None, temperature=0.1))


def test_multiview_matches_the_reference_layout(digits) -> None:
    """SelfCon-M: [B, 2V] views per image equals the reference's [2B, V] batch with repeated labels."""
    method = _method(digits, multiview=True)
    model = method.build()
    batch = data_batch(digits)
    labels = batch.labels
    views = method.views(batch.images, torch.Generator().manual_seed(0))
    assert len(views) == 2
    loss, _ = method.loss(model, views, batch, step=0)
    z = model(torch.cat(views))  # [2B, V, D]
    torch.testing.assert_close(loss, supcon_loss(z, torch.cat([labels, labels]), temperature=0.1))


@pytest.mark.parametrize("settings", [{"labels": False, "multiview": True}, {"selfcon_pos": [True, True, True],
                                                                         "alpha": 0.5, "head": "mlp_bn"}])
def test_variants_pass_the_method_contract(digits, settings) -> None:
    check_method_contract("selfcon", digits, width=WIDTH, **settings)


def test_declared_final_metrics_follow_the_exit_count() -> None:
    from trainables.methods.selfcon import SelfCon

    assert SelfCon.metrics(SelfConConfig(selfcon_pos=(False, True, False))).final == ("exit_top1", "ensemble_top1")
    assert SelfCon.metrics(SelfConConfig(selfcon_pos=(True, False, True))).final == (
        "exit1_top1", "exit2_top1", "ensemble_top1")
    assert {"exit_top1", "exit1_top1", "exit3_top1", "ensemble_top1"} <= set(SelfCon.metrics().final)


def test_eval_features_name_the_exits(digits) -> None:
    x = torch.randn(5, 3, 16, 16)
    one = _method(digits)
    assert set(one.eval_features(one.build().eval(), x)) == {"backbone", "exit"}
    two = _method(digits, selfcon_pos=[True, False, True])
    assert list(two.eval_features(two.build().eval(), x)) == ["backbone", "exit1", "exit2"]


# ---------------------------------------------------------------------------------------------------------------------
# Validation


@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        ({"selfcon_pos": [True, True, True, True]},
         "`selfcon_pos` must be 3 true/false flag(s) for backbone=resnet18, one per attach point (layer1, layer2, "
         "layer3), at least one true, e.g. selfcon_pos=[false,true,false]; got selfcon_pos=[true,true,true,true]"),
        ({"selfcon_pos": [False, False, False]}, "at least one true"),
        ({"backbone": "vgg16", "selfcon_arch": "vgg"}, "`selfcon_pos` must be 4 true/false flag(s) for backbone=vgg16"),
        ({"backbone": "wrn16_8", "selfcon_arch": "wrn", "selfcon_pos": [True]}, "e.g. selfcon_pos=[true,false]"),
        ({"backbone": "effnet_small", "selfcon_pos": [True]}, "`selfcon_arch` must be efficientnet for backbone="),
        ({"selfcon_arch": "vgg"}, "`selfcon_arch` must be resnet for backbone=resnet18"),
        ({"selfcon_arch": "mlp"}, "`selfcon_arch` must be one of resnet, vgg, wrn, efficientnet"),
        ({"selfcon_size": "large"}, "`selfcon_size` must be one of fc, small, same"),
        ({"alpha": -0.5}, "alpha"),
        ({"selfcon_pos": [1, 0, 0]}, "`selfcon_pos` must be true or false"),
    ],
)
def test_invalid_settings_name_the_field_and_allowed_values(settings, fragment) -> None:
    with pytest.raises(ConfigError) as e:
        TrialSpec.from_settings("selfcon", settings)
    assert fragment in str(e.value), str(e.value)


def test_valid_settings_for_every_family() -> None:
    for backbone, family in FAMILIES.items():
        n = len(build_backbone(backbone, width=WIDTH).attach_points)
        spec = TrialSpec.from_settings("selfcon", {"backbone": backbone, "selfcon_arch": family,
                                                   "selfcon_pos": [True] * n})
        assert spec.method_config.selfcon_pos == (True,) * n
    assert SelfConConfig().selfcon_pos == (False, True, False)


def test_cli_rejects_wrong_positions_with_exit_2_before_ray(capsys) -> None:
    import ray

    assert main(["train", "selfcon", "--set", "selfcon_pos=[true,true,true,true]"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert "`selfcon_pos` must be 3 true/false flag(s) for backbone=resnet18" in err
    assert "e.g. selfcon_pos=[false,true,false]" in err
    assert not ray.is_initialized()


# ---------------------------------------------------------------------------------------------------------------------
# Space


@pytest.mark.parametrize(("backbone", "family", "count"),
                         [("resnet50", "resnet", 7), ("vgg13", "vgg", 15), ("wrn16_8", "wrn", 3),
                          ("effnet_small", "efficientnet", 1)])
def test_space_offers_every_valid_position_set(backbone: str, family: str, count: int) -> None:
    choices = selfcon_space.position_choices(backbone)
    assert len(choices) == len(set(choices)) == count == 2 ** len(yaml.safe_load(choices[0])) - 1
    for choice in choices:
        trial = optuna.trial.FixedTrial({"temperature": 0.1, "lr": 0.5, "selfcon_pos": choice,
                                         "selfcon_size": "small", "alpha": 0.0})
        settings = {**selfcon_space.space(trial, {"backbone": backbone}), **trial.params, "backbone": backbone}
        assert settings["selfcon_arch"] == family
        settings["selfcon_pos"] = yaml.safe_load(settings["selfcon_pos"])  # what the sweep does for list settings
        TrialSpec.from_settings(settings.pop("method"), settings)


def test_space_first_point_is_the_readme_recipe() -> None:
    (point,) = selfcon_space.POINTS_TO_EVALUATE
    study = optuna.create_study()
    study.enqueue_trial(point)
    trial = study.ask()
    constants = selfcon_space.space(trial, {})
    assert constants == {"method": "selfcon", "selfcon_arch": "resnet"}
    assert trial.params == point
    assert yaml.safe_load(point["selfcon_pos"]) == [False, True, False] and point["selfcon_size"] == "fc"
    assert math.isclose(point["lr"], 0.5) and math.isclose(point["temperature"], 0.1)


def test_space_skips_fixed_settings() -> None:
    trial = optuna.create_study().ask()
    out = selfcon_space.params(trial, {"selfcon_size": "same", "selfcon_arch": "resnet", "alpha": 0.0})
    assert out == {} and {"selfcon_size", "alpha"}.isdisjoint(trial.params)
