"""Seed fidelity (issue 14): the published recipes and warm-up rules, exit sizes, losses and probes as the seed
repositories define them."""

from __future__ import annotations

import pytest

from trainables.config import ConfigError, TrainConfig
from trainables.methods import METHODS
from trainables.optim import lr_at
from trainables.trial import TrialSpec

# ---------------------------------------------------------------------------------------------------------------------
# 1. Recipes and warm-up


def _lr(spec: TrialSpec, epoch: float, steps_per_epoch: int = 10) -> float:
    t = spec.train
    return lr_at(int(epoch * steps_per_epoch), t, steps_per_epoch=steps_per_epoch,
                 total_steps=steps_per_epoch * t.epochs, peak=t.scaled_lr())


def test_supcon_recipe_is_the_readme_one_with_the_code_warmup() -> None:
    spec = TrialSpec.from_settings("supcon")
    t = spec.train
    assert (t.batch_size, t.lr, t.epochs, t.schedule, t.warmup_epochs, t.warmup_from) == (
        1024, 0.5, 1000, "cosine", 10.0, 0.01)
    assert _lr(spec, 0) == pytest.approx(0.01)
    eta_min = 0.5 * 0.1**3  # cosine floor lr * decay_rate^3; after warm-up the cosine value at epoch 10 of 1000
    import math
    assert _lr(spec, 10) == pytest.approx(eta_min + (0.5 - eta_min) * (1 + math.cos(math.pi * 10 / 1000)) / 2)
    assert _lr(spec, 10) == pytest.approx(0.5, abs=1e-3)
    assert _lr(spec, 5) == pytest.approx(0.01 + (_lr(spec, 10) - 0.01) / 2)


@pytest.mark.parametrize(("method", "batch", "warm"), [
    ("supcon", 256, 0.0), ("supcon", 257, 10.0), ("simclr", 512, 10.0), ("ce", 256, 0.0), ("ce", 1024, 10.0),
    ("selfcon", 512, 0.0), ("selfcon", 1023, 0.0), ("selfcon", 1024, 10.0), ("sigmoid", 1024, 0.0)])
def test_auto_warmup_is_the_seed_rule(method: str, batch: int, warm: float) -> None:
    spec = TrialSpec.from_settings(method, {"batch_size": batch})
    assert spec.train.warmup_epochs == warm
    assert _lr(spec, 0) == pytest.approx(0.01 if warm else spec.train.lr, rel=1e-3)


def test_supcon_at_batch_256_starts_at_the_peak_lr() -> None:
    assert _lr(TrialSpec.from_settings("supcon", {"batch_size": 256}), 0) == pytest.approx(0.5)


def test_explicit_warmup_overrides_the_rule_and_is_capped_at_half_a_short_run() -> None:
    assert TrialSpec.from_settings("supcon", {"warmup_epochs": 0}).train.warmup_epochs == 0
    assert TrialSpec.from_settings("selfcon", {"batch_size": 128, "warmup_epochs": 3}).train.warmup_epochs == 3
    assert TrialSpec.from_settings("supcon", {"epochs": 8}).train.warmup_epochs == 4
    with pytest.raises(ConfigError, match="warmup_epochs"):
        TrainConfig(warmup_epochs="sometimes")
    with pytest.raises(ValueError, match="warmup_epochs='auto'"):
        lr_at(0, TrainConfig(), steps_per_epoch=1, total_steps=1, peak=1.0)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_digits_presets_keep_their_schedule(method: str) -> None:
    """The digits presets (batch 128 / 64) stay without warm-up and with the preset's own lr, epochs and schedule."""
    preset = METHODS[method].presets["digits"]
    t = TrialSpec.from_settings(method, preset="digits").train
    assert t.warmup_epochs == 0
    assert (t.batch_size, t.lr, t.epochs) == (preset["batch_size"], preset["lr"], preset["epochs"])
    before = TrainConfig(**{k: v for k, v in {**METHODS[method].recipe, **preset}.items()
                            if k in TrainConfig.__dataclass_fields__} | {"warmup_epochs": 0.0})
    for step in (0, 1, 5, 50):
        kw = dict(steps_per_epoch=7, total_steps=7 * t.epochs, peak=t.scaled_lr())
        assert lr_at(step, t, **kw) == lr_at(step, before, **kw)


# ---------------------------------------------------------------------------------------------------------------------
# 2-3. SelfCon exits: the reference's parameter counts (raymin0223/self-contrastive-learning, networks/*_big.py)
#
# An exit's parameters are the reference's ``selfcon_layer[idx]`` plus its ``sub_heads`` entry, the MLP
# ``Linear(512e, 512e) -> ReLU -> Linear(512e, 128)`` (e = block expansion): HEAD = 512*512+512 + 512*128+128 = 328,320
# (ResNet-50: 2048*2048+2048 + 2048*128+128 = 4,458,624). Conv(i, o, k) = i*o*k*k (+ o with a bias), BN(c) = 2c.
# - fc: ``nn.Linear(channels[idx] * expansion, channels[-1] * expansion)`` after pooling: i*o + o.
# - ResNet BasicBlock(i, p, s): conv(i,p,3) + BN(p) + conv(p,p,3) + BN(p) [+ conv(i,p,1) + BN(p) if s != 1 or i != p];
#   B(128,256,2) = 919,040, B(256,256,1) = 1,180,672, B(256,512,2) = 3,673,088, B(512,512,1) = 4,720,640.
#   same after layer2 (num_blocks [2,2]): all four = 10,493,440; small (int(n/2) = 1 each): B(128,256,2) + B(256,512,2).
# - VGG (bias convs, BN for _bn): cb(i, o) = 9io + o + 2o: cb(64,128) = 74,112, cb(128,128) = 147,840,
#   cb(128,256) = 295,680, cb(256,256) = 590,592, cb(256,512) = 1,181,184, cb(512,512) = 2,360,832.
#   ``same``: 3 convs per block for cfg D (vgg16), 2 otherwise; ``small``: 1.
# - WRN wide_basic(i, p, s) (bias convs): BN(i) + conv(i,p,3)+p + BN(p) + conv(p,p,3)+p [+ conv(i,p,1)+p]:
#   wb(128,256,2) = 919,040, wb(256,256,1) = 1,181,184, wb(256,512,2) = 3,673,088, wb(512,512,1) = 4,721,664; the
#   tail has no closing BN. small: int((n+1)/2) = 1 block per stage.
# - EfficientNet, any size: Conv1x1(80, 512, no bias) 40,960 + BN 1,024 + Linear(512, 512) 262,656 = 304,640.
HEAD = 328_320
SEED_EXIT_PARAMS = {
    ("resnet18", "layer1", "fc"): 64 * 512 + 512 + HEAD,  # 361,600
    ("resnet18", "layer2", "fc"): 128 * 512 + 512 + HEAD,  # 394,368
    ("resnet18", "layer3", "fc"): 256 * 512 + 512 + HEAD,  # 459,904
    ("resnet18", "layer2", "small"): 919_040 + 3_673_088 + HEAD,  # 4,920,448
    ("resnet18", "layer2", "same"): 919_040 + 1_180_672 + 3_673_088 + 4_720_640 + HEAD,  # 10,821,760
    ("resnet50", "layer2", "fc"): 512 * 2048 + 2048 + 4_458_624,  # 5,509,248
    ("vgg13_bn", "block2", "fc"): 128 * 512 + 512 + HEAD,  # 394,368
    ("vgg13_bn", "block2", "small"): 295_680 + 1_181_184 + 2_360_832 + HEAD,  # 4,166,016
    ("vgg13_bn", "block2", "same"): 295_680 + 590_592 + 1_181_184 + 3 * 2_360_832 + HEAD,  # 9,478,272
    ("vgg16_bn", "block1", "same"): (74_112 + 2 * 147_840 + 295_680 + 2 * 590_592 + 1_181_184 + 2 * 2_360_832
                                     + 3 * 2_360_832 + HEAD),  # 15,160,320
    ("wrn16_8", "layer1", "fc"): 128 * 512 + 512 + HEAD,  # 394,368
    ("wrn16_8", "layer2", "fc"): 256 * 512 + 512 + HEAD,  # 459,904
    ("wrn16_8", "layer1", "small"): 919_040 + 3_673_088 + HEAD,  # 4,920,448
    ("wrn16_8", "layer1", "same"): 919_040 + 1_181_184 + 3_673_088 + 4_721_664 + HEAD,  # 10,823,296
    ("effnet_small", "stage4", "fc"): 304_640 + HEAD,  # 632,960
    ("effnet_small", "stage4", "small"): 304_640 + HEAD,
    ("effnet_small", "stage4", "same"): 304_640 + HEAD,
}


@pytest.fixture(scope="module")
def full_width_backbones():
    from trainables.nets import build_backbone

    return {name: build_backbone(name) for name in {k[0] for k in SEED_EXIT_PARAMS}}


@pytest.mark.parametrize(("name", "point", "size"), sorted(SEED_EXIT_PARAMS))
def test_exit_parameter_counts_are_the_seeds(full_width_backbones, name: str, point: str, size: str) -> None:
    import torch

    from trainables.nets import build_exit

    backbone = full_width_backbones[name]
    exit_ = build_exit(backbone, point, size=size)
    assert sum(p.numel() for p in exit_.parameters()) == SEED_EXIT_PARAMS[name, point, size]
    # The probed exit feature has the backbone's width (ResNet-18: 512, not layer2's 128).
    assert exit_.feature_dim == backbone.feature_dim
    with torch.no_grad():
        x = torch.randn(2, backbone.stage_channels[point], 4, 4)
        assert exit_.eval().features(x).shape == (2, backbone.feature_dim)


def test_wrn_is_the_seeds_wide_basic() -> None:
    """WRN-16-8 trunk: biases, dropout 0.3 in train mode, stride on conv2 (the reference's ``wide_basic``)."""
    import torch

    from trainables.nets import build_backbone

    net = build_backbone("wrn16_8")
    block = net.layer2[0]
    assert block.conv1.stride == (1, 1) and block.conv2.stride == (2, 2) and block.conv1.bias is not None
    assert block.dropout.p == 0.3
    # The reference's Wide_ResNet(16, 8, 0.3): conv3x3(3,16)+16 = 448; layer1 wb(16,128,1) 168,608 + wb(128,128,1)
    # 295,680; layer2 919,040 + 1,181,184; layer3 3,673,088 + 4,721,664; bn1(512) 1,024.
    assert sum(p.numel() for p in net.parameters()) == 10_960_736
    net.train()
    x = torch.randn(2, 3, 8, 8)
    torch.manual_seed(0)
    a = net(x)
    torch.manual_seed(1)
    assert not torch.equal(a, net(x))  # dropout is active in train mode
    net.eval()
    torch.testing.assert_close(net(x), net(x))


# ---------------------------------------------------------------------------------------------------------------------
# 4. Sigmoid loss with penalty filtering (filipbasara0/sigmoid-contrastive-loss, scl/scl.py ``scl_loss``)


def test_filtered_sigmoid_loss_is_the_seeds_unweighted_sum_over_kept_pairs() -> None:
    import math

    import torch
    import torch.nn.functional as F

    from trainables.losses import sigmoid_pairwise_loss

    g = torch.Generator().manual_seed(0)
    x, xp = torch.randn(8, 6, generator=g), torch.randn(8, 6, generator=g)
    t, b, gamma, threshold = math.log(5.0), -1.0, 1.0, 0.05
    # The seed, line by line: the mask keeps positives and negatives with penalty > threshold, then
    # loss = -sum(logsigmoid(selected_labels * selected_logits)) / n (no penalty weight).
    n = 8
    labels = 2 * torch.eye(n) - 1
    logits = F.normalize(x, dim=-1) @ F.normalize(xp, dim=-1).T * 5.0 + b
    penalty = (1 - torch.sigmoid(labels * logits)) ** gamma
    keep = torch.eye(n, dtype=torch.bool) | (penalty > threshold)
    seed = -F.logsigmoid(labels[keep] * logits[keep]).sum() / n
    got = sigmoid_pairwise_loss(x, xp, log_temperature=t, bias=b, gamma=gamma, filter_threshold=threshold)
    assert got.item() == pytest.approx(seed.item(), rel=1e-6)
    weighted = -(penalty * F.logsigmoid(labels * logits))[keep].sum() / n
    assert got.item() != pytest.approx(weighted.item(), rel=1e-2)  # the focal weight is gone


def test_filtering_starts_after_the_warmup_step(monkeypatch) -> None:
    """The seed filters when ``global_step > filtering_warmup_steps`` (global_step = steps completed)."""
    import torch
    from method_contract import data_batch, make_method

    import trainables.methods.sigmoid as sigmoid_module
    from trainables.data import load_dataset

    data = load_dataset("digits")
    method, _ = make_method("sigmoid", data, width=0.125, num_local_views=0, use_penalty_filtering=True,
                            filtering_warmup_steps=3)
    seen = []
    real = sigmoid_module.sigmoid_pairwise_loss
    monkeypatch.setattr(sigmoid_module, "sigmoid_pairwise_loss",
                        lambda *a, **kw: seen.append(kw["filter_threshold"]) or real(*a, **kw))
    model = method.build()
    batch = data_batch(data, 8)
    views = method.views(batch.images, torch.Generator().manual_seed(0))
    for step in (3, 4):
        seen.clear()
        method.loss(model, views, batch, step=step)
        assert set(seen) == ({None} if step == 3 else {0.05})


# ---------------------------------------------------------------------------------------------------------------------
# 5. SupCon with one view (SupCon-S): the mean over anchors that have a positive


def _naive_supcon(features, labels, tau: float, base_tau: float) -> float:
    """SupContrast's SupConLoss pair by pair: the mean over anchors with at least one positive."""
    import math

    b, v, _ = features.shape
    z = features.transpose(0, 1).reshape(b * v, -1).double()
    lab = labels.repeat(v)
    terms = []
    for i in range(b * v):
        others = [a for a in range(b * v) if a != i]
        log_norm = math.log(sum(math.exp(float(z[i] @ z[a]) / tau) for a in others))
        pos = [p for p in others if lab[p] == lab[i]]
        if pos:
            terms.append(-sum(float(z[i] @ z[p]) / tau - log_norm for p in pos) / len(pos))
    return (tau / base_tau) * sum(terms) / len(terms)


def test_supcon_one_view_averages_over_anchors_with_a_positive() -> None:
    import torch
    import torch.nn.functional as F

    from trainables.losses import supcon_loss

    g = torch.Generator().manual_seed(0)
    feats = F.normalize(torch.randn(10, 1, 8, generator=g), dim=2)
    labels = torch.tensor([0, 0, 1, 2, 3, 3, 3, 4, 5, 6])  # 5 of 10 anchors have a positive
    got = supcon_loss(feats, labels, temperature=0.1)
    assert got.item() == pytest.approx(_naive_supcon(feats, labels, 0.1, 0.07), rel=1e-5)
    # Under DDP-style anchor splits the mean of the per-rank losses is still the global loss.
    halves = [supcon_loss(feats, labels, temperature=0.1, anchor_index=slice(k * 5, k * 5 + 5)) for k in (0, 1)]
    assert (halves[0] + halves[1]).item() / 2 == pytest.approx(got.item(), rel=1e-5)


def test_supcon_without_any_positive_is_zero_with_zero_gradient() -> None:
    import torch

    feats = torch.nn.functional.normalize(torch.randn(4, 1, 8), dim=2).requires_grad_(True)
    from trainables.losses import supcon_loss

    loss = supcon_loss(feats, torch.arange(4))
    loss.backward()
    assert loss.item() == 0.0 and torch.equal(feats.grad, torch.zeros_like(feats))


# ---------------------------------------------------------------------------------------------------------------------
# 6. SelfCon's ensemble averages the probes' logits


def test_selfcon_ensemble_averages_logits_not_probabilities(monkeypatch) -> None:
    import torch
    from method_contract import make_method

    import trainables.loop as loop
    from trainables.data import load_dataset

    data = load_dataset("digits")
    method, spec = make_method("selfcon", data, width=0.125, probe_epochs=1)
    calls = []

    def crafted_probe(train_x, train_y, eval_sets, **kw):
        """Per row with label y: logits a (backbone) and b (exit) on classes (y+1, y, y+2), -50 elsewhere. The mean
        logit picks y; the mean softmax picks y+1."""
        which = len(calls)
        calls.append(which)
        out = {}
        for name, (_x, y) in eval_sets.items():
            c = data.num_classes
            logits = torch.full((len(y), c), -50.0)
            rows = torch.arange(len(y))
            for offset, (a, b) in zip((1, 0, 2), ((0.0, 2.0), (5.0, 0.0), (5.0, -6.0))):
                logits[rows, (y + offset) % c] = a if which == 0 else b
            out[name] = logits
        return out

    monkeypatch.setattr(loop, "linear_probe", crafted_probe)
    metrics = loop._evaluate(method, method.build(), data, spec.train, torch.device("cpu"), final=True)
    assert calls == [0, 1]
    assert metrics["ensemble_top1"] == 1.0  # the mean of probabilities would give 0.0


# ---------------------------------------------------------------------------------------------------------------------
# 7. probe=seed: the seeds' own linear evaluation, under its own metric names


def test_seed_probe_metrics_are_declared_only_with_probe_seed() -> None:
    from trainables.metrics import reported_metrics

    supcon = TrialSpec.from_settings("supcon", {"probe": "seed"})
    assert "seed_linear_top1" in reported_metrics("supcon", supcon.method_config, supcon.train).final
    assert "seed_linear_top1" not in reported_metrics("supcon", supcon.method_config).final
    fast = TrialSpec.from_settings("supcon")
    assert "seed_linear_top1" not in reported_metrics("supcon", fast.method_config, fast.train).final
    assert "seed_logreg_top1" in reported_metrics("sigmoid").final  # config=None: every name some setting reports
    with pytest.raises(ConfigError, match="probe"):
        TrialSpec.from_settings("supcon", {"probe": "slow"})


@pytest.mark.parametrize(("method", "lr"), [("supcon", 5.0), ("simclr", 1.0), ("selfcon", 3.0), ("ce", 0.1)])
def test_seed_probe_uses_the_methods_seed_lr_and_protocol(monkeypatch, method: str, lr: float) -> None:
    import torch
    from method_contract import make_method

    import trainables.loop as loop
    from trainables.data import load_dataset

    data = load_dataset("digits")
    m, spec = make_method(method, data, width=0.125, probe_epochs=1, probe="seed", seed_probe_epochs=2)
    seen = {}

    def spy(*args, **kw):  # the protocol itself is tested below; here only what the loop passes to it
        seen.update(kw)
        return 0.5

    monkeypatch.setattr(loop, "seed_linear_probe", spy)
    metrics = loop._evaluate(m, m.build(), data, spec.train, torch.device("cpu"), final=True)
    assert (seen["lr"], seen["batch_size"], seen["epochs"]) == (lr, 512, 2)
    assert metrics["seed_linear_top1"] == 0.5


def test_seed_linear_probe_learns_separable_features() -> None:
    """The protocol itself: augmented batches through a frozen encoder, step decay, warm-up above batch 256."""
    import numpy as np
    import torch

    from trainables.probe import seed_linear_probe

    rng = np.random.default_rng(0)
    labels = torch.from_numpy(rng.integers(0, 2, 64))
    images = np.zeros((64, 1, 4, 4), dtype=np.uint8)
    images[labels.numpy() == 1] = 255
    encode = lambda x: x.flatten(1)  # noqa: E731
    identity = lambda x, *_: x.float() / 255  # noqa: E731
    top = seed_linear_probe(encode, identity, identity, images, labels, images, labels, num_classes=2, epochs=20,
                            batch_size=16, lr=1.0, device=torch.device("cpu"))
    assert top == 1.0


def test_sigmoid_seed_probe_is_calibrated_logistic_regression() -> None:
    import torch
    from method_contract import make_method

    import trainables.loop as loop
    from trainables.data import load_dataset

    data = load_dataset("digits")
    m, spec = make_method("sigmoid", data, width=0.125, probe_epochs=1, probe="seed", num_local_views=0)
    metrics = loop._evaluate(m, m.build(), data, spec.train, torch.device("cpu"), final=True)
    assert "seed_linear_top1" not in metrics and 0.0 <= metrics["seed_logreg_top1"] <= 1.0


# ---------------------------------------------------------------------------------------------------------------------
# 8. The sigmoid seed's frozen backbone BatchNorm, as an option (freeze_backbone_bn)


def test_freeze_backbone_bn_keeps_the_online_running_stats_during_fit() -> None:
    import torch
    from method_contract import data_batch, make_method

    from trainables.data import load_dataset
    from trainables.loop import RecordingReporter, fit

    settings = {"dataset": "digits", "width": 0.125, "batch_size": 64, "epochs": 1, "num_local_views": 0,
                "probe_epochs": 1, "logreg_probe": False}
    reporter = RecordingReporter()
    fit(TrialSpec.from_settings("sigmoid", {**settings, "freeze_backbone_bn": True}), reporter=reporter,
        device=torch.device("cpu"))
    stats = {k: v for k, v in reporter.state["model"].items()
             if k.startswith("backbone.") and k.endswith(("running_mean", "running_var"))}
    assert stats and all(torch.equal(v, torch.zeros_like(v) if k.endswith("mean") else torch.ones_like(v))
                         for k, v in stats.items())
    # Without the flag (default) a training forward moves them.
    data = load_dataset("digits")
    method, _ = make_method("sigmoid", data, **settings)
    model = method.build().train()
    batch = data_batch(data, 8)
    method.loss(model, method.views(batch.images, torch.Generator().manual_seed(0)), batch, step=0)
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in model.state_dict().items()
               if k.startswith("backbone.") and k.endswith("running_mean"))
