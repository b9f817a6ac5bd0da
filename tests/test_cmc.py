"""CMC: the NCE and softmax losses against naive loops, the memory banks (momentum update, no gradient, two workers
equal to one process), the fixed normalisation constant Z, the colour views, exact resume, and nce_k checked against
the dataset before launch."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import TINY
from ddp_helpers import run_workers
from method_contract import check_method_contract, data_batch, make_method, straight_and_resumed

from search.cli import main
from trainables.config import ConfigError
from trainables.data import load_dataset
from trainables.data.augment import to_lab, to_ycbcr
from trainables.losses import nce_loss, nce_softmax_loss
from trainables.methods.cmc import COLOR_SPACES
from trainables.trial import TrialSpec, prepare_trial

SMALL = {"width": 0.25, "encoder_width": 0.5, "nce_k": 64}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def make(data, **settings):
    return make_method("cmc", data, **{**SMALL, **settings})


# -- the losses ----------------------------------------------------------------------------------------------------------
def naive_nce(probs, n_data):
    """Paper eq. 12 / the reference's NCECriterion, term by term in float64."""
    b, k = probs.shape[0], probs.shape[1] - 1
    noise = k / n_data
    total = 0.0
    for i in range(b):
        pos = float(probs[i, 0])
        total += math.log(pos / (pos + noise + 1e-7))
        for j in range(1, k + 1):
            total += math.log(noise / (float(probs[i, j]) + noise + 1e-7))
    return -total / b


def naive_softmax(logits):
    total = 0.0
    for row in logits.tolist():
        total += -(row[0] - math.log(sum(math.exp(v) for v in row)))
    return total / len(logits)


@pytest.mark.parametrize(("b", "k", "n"), [(4, 7, 100), (1, 1, 2), (6, 32, 5000)])
def test_nce_loss_equals_naive_loop(b, k, n):
    g = torch.Generator().manual_seed(b * k)
    scores = torch.rand(b, 1 + k, generator=g, dtype=torch.float64) * 2 - 1
    probs = (scores / 0.07).exp() / ((scores / 0.07).exp().mean() * n)
    assert nce_loss(probs, n_data=n).item() == pytest.approx(naive_nce(probs, n), rel=1e-12)


def test_nce_softmax_loss_equals_naive_loop():
    logits = torch.randn(5, 9, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 4
    assert nce_softmax_loss(logits).item() == pytest.approx(naive_softmax(logits), rel=1e-12)
    assert nce_softmax_loss(torch.zeros(3, 17, dtype=torch.float64)).item() == pytest.approx(math.log(17))


@pytest.mark.parametrize(("call", "fragment"), [
    (lambda: nce_loss(torch.rand(4), n_data=10), "`probs` must have shape"),
    (lambda: nce_loss(torch.rand(4, 1), n_data=10), "`probs` must have shape"),
    (lambda: nce_loss(torch.rand(4, 3), n_data=0), "`n_data >= 1`"),
    (lambda: nce_softmax_loss(torch.rand(2, 3, 4)), "`logits` must have shape"),
])
def test_losses_reject_bad_shapes(call, fragment):
    with pytest.raises(ValueError, match=fragment):
        call()


# -- views ---------------------------------------------------------------------------------------------------------------
def test_lab_and_ycbcr_views_split_the_converted_normalised_channels(digits):
    # The conversions' known pixel values are tests/test_augment.py::test_lab_known_values / test_ycbcr_known_values.
    rgb = torch.tensor([[1.0, 1, 1], [1, 0, 0], [0.5, 0.5, 0.5]]).T.reshape(1, 3, 3, 1)
    for name, convert in (("lab", to_lab), ("ycbcr", to_ycbcr)):
        method, _ = make(digits, color_space=name)
        views = method._split(rgb)
        space = COLOR_SPACES[name]
        assert [v.shape[1] for v in views] == [1, 2]
        expected = (convert(rgb) - torch.tensor(space.mean).view(1, 3, 1, 1)) / torch.tensor(space.std).view(1, 3, 1, 1)
        assert torch.allclose(torch.cat(views, 1), expected, atol=1e-5)
    method, _ = make(digits)
    l_view, ab_view = method._split(rgb)
    assert l_view[0, 0, :, 0].tolist() == pytest.approx([1.0, (53.24 - 50) / 50, (53.39 - 50) / 50], abs=1e-3)
    assert ab_view[0, 0, 1, 0].item() == pytest.approx((80.09 - 6.025) / 92.208, abs=1e-3)


def test_training_views_are_crops_of_one_image_and_eval_undoes_the_dataset_normalisation(digits):
    method, _ = make(digits)
    batch = data_batch(digits, 8)
    l_view, ab_view = method.views(batch.images, torch.Generator().manual_seed(0))
    assert l_view.shape == (8, 1, 16, 16) and ab_view.shape == (8, 2, 16, 16)
    model = method.build().eval()
    mean = torch.tensor(digits.mean).view(1, -1, 1, 1)
    std = torch.tensor(digits.std).view(1, -1, 1, 1)
    x = (batch.images.float() / 255 - mean) / std
    feats = method.eval_features(model, x)
    l_direct, ab_direct = method._split(batch.images.float() / 255)
    with torch.no_grad():
        assert torch.allclose(feats["view_l"], model.encoders[0].backbone(l_direct), atol=1e-5)
        assert torch.allclose(feats["view_ab"], model.encoders[1].backbone(ab_direct), atol=1e-5)
    assert torch.equal(feats["backbone"], torch.cat([feats["view_l"], feats["view_ab"]], 1))


# -- banks, Z, negatives -------------------------------------------------------------------------------------------------
def test_bank_update_equals_row_by_row_reference_and_gets_no_gradient(digits):
    method, _ = make(digits, nce_m=0.7)
    model = method.build()
    before = [bank.memory.clone() for bank in model.banks]
    batch = data_batch(digits, 16, start=100)
    views = method.views(batch.images, torch.Generator().manual_seed(0))
    loss, _ = method.loss(model, views, batch, step=0)
    loss.backward()
    assert all(not b.requires_grad and b.grad is None for b in model.buffers())
    assert {"banks.0.memory", "banks.1.memory", "z"} <= set(model.state_dict())
    feats = [f.detach() for f in method._pending[1]]
    method.after_step(model, step=1)
    for v, bank in enumerate(model.banks):
        expected = before[v].clone()
        for row, i in enumerate(batch.indices.tolist()):
            mixed = 0.7 * before[v][i] + 0.3 * feats[v][row]
            expected[i] = mixed / mixed.norm()
        assert torch.allclose(bank.memory, expected, atol=1e-6)
        untouched = torch.ones(len(expected), dtype=torch.bool)
        untouched[batch.indices] = False
        assert torch.equal(bank.memory[untouched], before[v][untouched])


def test_negatives_are_uniform_over_the_other_rows_and_a_function_of_the_step(digits):
    method, _ = make(digits, nce_k=4000)
    indices = torch.tensor([0, 5, 1196])
    idx = method.sample_indices(indices, step=3)
    assert idx.shape == (3, 4001) and torch.equal(idx[:, 0], indices)
    assert ((idx[:, 1:] != indices.view(-1, 1)) & (idx[:, 1:] >= 0) & (idx[:, 1:] < 1197)).all()
    assert torch.equal(idx, method.sample_indices(indices, step=3))
    assert not torch.equal(idx, method.sample_indices(indices, step=4))


def test_z_is_fixed_from_the_first_batch_as_the_reference(digits):
    method, _ = make(digits)
    model = method.build()
    assert (model.z < 0).all()
    batch = data_batch(digits, 16)
    views = method.views(batch.images, torch.Generator().manual_seed(0))
    with torch.no_grad():
        feats = model(views)
        idx = method.sample_indices(batch.indices, step=0)
        expected = [(torch.bmm(model.banks[o].memory[idx], feats[a].unsqueeze(2)).squeeze(2) / 0.07).exp().mean()
                    * 1197 for a, o in ((0, 1), (1, 0))]
    method.loss(model, views, batch, step=0)
    method.after_step(model, step=1)
    assert torch.allclose(model.z, torch.stack(expected), rtol=1e-5)
    z = model.z.clone()
    method.loss(model, method.views(data_batch(digits, 16, start=16).images, torch.Generator()), batch, step=1)
    assert torch.equal(model.z, z)


def test_softmax_variant_keeps_z_unset(digits):
    method, _ = make(digits, softmax=True)
    model = method.build()
    batch = data_batch(digits, 16)
    loss, logs = method.loss(model, method.views(batch.images, torch.Generator().manual_seed(0)), batch, step=0)
    assert (model.z < 0).all() and torch.isfinite(loss) and 0 < logs["pos_prob"] < 1


@pytest.mark.parametrize("settings", [{"softmax": True}, {"color_space": "ycbcr", "feat_dim": 16},
                                      {"color_space": "rgb", "nce_m": 0.0},
                                      {"color_space": "ycbcr", "view_split": "channels", "view_mode": "full"}])
def test_variants_pass_the_method_contract(digits, settings):
    check_method_contract("cmc", digits, **{**SMALL, **settings})


# -- more than two views -------------------------------------------------------------------------------------------------
def test_view_modes_pick_the_core_view_pairs_or_the_full_graph():
    two = TrialSpec.from_settings("cmc").method_config
    assert two.view_pairs == TrialSpec.from_settings("cmc", {"view_mode": "full"}).method_config.view_pairs == ((0, 1),)
    assert two.directions == ((0, 1), (1, 0))  # the two-view order of Z's entries is unchanged
    core = TrialSpec.from_settings("cmc", {"view_split": "channels"}).method_config
    full = TrialSpec.from_settings("cmc", {"view_split": "channels", "view_mode": "full"}).method_config
    assert core.view_pairs == ((0, 1), (0, 2)) and full.view_pairs == ((0, 1), (0, 2), (1, 2))
    assert full.directions == ((0, 1), (1, 0), (0, 2), (2, 0), (1, 2), (2, 1))


@pytest.mark.parametrize("softmax", [False, True])
@pytest.mark.parametrize(("mode", "pairs"), [("core", [(0, 1), (0, 2)]), ("full", [(0, 1), (0, 2), (1, 2)])])
def test_more_views_sum_both_directions_of_every_pair_like_a_naive_loop(digits, mode, pairs, softmax):
    """YCbCr split into Y, Cb, Cr: the loss equals a naive sum over the pairs of the mode, both directions each, with
    a Z per direction from the first batch (NCE)."""
    method, _ = make(digits, color_space="ycbcr", view_split="channels", view_mode=mode, softmax=softmax)
    model = method.build()
    assert len(model.encoders) == len(model.banks) == 3 and model.z.shape == (2 * len(pairs),)
    batch = data_batch(digits, 8)
    views = method.views(batch.images, torch.Generator().manual_seed(0))
    assert [v.shape[1] for v in views] == [1, 1, 1]
    loss, logs = method.loss(model, views, batch, step=3)
    with torch.no_grad():
        feats = [f.double() for f in model(views)]
    idx = method.sample_indices(batch.indices, step=3).tolist()
    expected, pos_prob, d = 0.0, 0.0, 0
    for i, j in pairs:
        for anchor, other in ((i, j), (j, i)):
            memory = model.banks[other].memory.double()
            logits = torch.tensor([[float(feats[anchor][r] @ memory[k]) / 0.07 for k in row]
                                   for r, row in enumerate(idx)],
                                  dtype=torch.float64)
            if softmax:
                expected += naive_softmax(logits)
                pos_prob += logits.softmax(1)[:, 0].mean().item()
            else:
                z = logits.exp().mean().item() * 1197
                assert model.z[d].item() == pytest.approx(z, rel=1e-5)
                expected += naive_nce(logits.exp() / z, 1197)
                pos_prob += (logits.exp()[:, 0] / z).mean().item()
            d += 1
    assert d == len(method.config.directions)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert float(logs["pos_prob"]) == pytest.approx(pos_prob / d, rel=1e-4)
    old = [bank.memory[batch.indices].double() for bank in model.banks]
    method.after_step(model, step=4)  # every view's bank moves towards its new features
    for bank, m, f in zip(model.banks, old, feats, strict=True):
        new = torch.nn.functional.normalize(0.5 * m + 0.5 * f, dim=1)
        assert torch.allclose(bank.memory[batch.indices].double(), new, atol=1e-5)


# -- AlexNet halves ------------------------------------------------------------------------------------------------------
def reference_alexnet_half_params(in_channels, feat_dim=128):
    """Parameters of HobbitLong/CMC's ``alexnet_half``, layer by layer: bias-free convs + BN, fc6/fc7 + BN1d, fc8."""
    convs = in_channels * 48 * 11 * 11 + 48 * 128 * 5 * 5 + 128 * 192 * 9 + 192 * 192 * 9 + 192 * 128 * 9
    bn2d = 2 * (48 + 128 + 192 + 192 + 128)
    fcs = (256 * 6 * 6 // 2) * 2048 + 2048 + 2 * 2048 + 2048 * 2048 + 2048 + 2 * 2048
    return convs + bn2d + fcs + 2048 * feat_dim + feat_dim


def test_alexnet_halves_have_the_reference_parameter_count(digits):
    method, _ = make(digits, encoder="alexnet", width=1.0, encoder_width=0.5, feat_dim=128)
    model = method.build()
    counts = [sum(p.numel() for p in encoder.parameters()) for encoder in model.encoders]
    assert counts == [reference_alexnet_half_params(1), reference_alexnet_half_params(2)] == [14_840_976, 14_846_784]
    assert [encoder.backbone.feature_dim for encoder in model.encoders] == [2048, 2048]
    full, _ = make(digits, encoder="alexnet", width=1.0, encoder_width=1.0)  # width 1: full AlexNet's layers (+ BN)
    full_params = (96 * 121 + 96 * 256 * 25 + 256 * 384 * 9 + 384 * 384 * 9 + 384 * 256 * 9 + 2 * (96 + 256 + 384 + 384
                   + 256) + 256 * 36 * 4096 + 4096 + 2 * 4096 + 4096 * 4096 + 4096 + 2 * 4096)
    assert sum(p.numel() for p in full.build().encoders[0].backbone.parameters()) == full_params


def test_alexnet_halves_train_on_64_px_views_and_refuse_small_images(digits):
    from trainables.nets.alexnet import AlexNetHalf

    torch.manual_seed(0)
    half = AlexNetHalf(1)
    half.eval()
    assert half.features(torch.randn(1, 1, 224, 224)).shape[-2:] == (6, 6)  # the reference's 6 x 6: pooling is a no-op
    with pytest.raises(ValueError, match="at least 63 px"):
        half(torch.randn(2, 1, 32, 32))
    method, _ = make(digits, encoder="alexnet", width=0.25, encoder_width=0.5, softmax=True)
    model = method.build()
    batch = data_batch(digits, 4)
    views = [torch.randn(4, 1, 64, 64), torch.randn(4, 2, 64, 64)]
    loss, _ = method.loss(model, views, batch, step=0)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoders.parameters())
    with pytest.raises(ConfigError, match="`encoder=alexnet` needs images of at least 63 px"):
        prepare_trial("cmc", {"encoder": "alexnet", "nce_k": 64})


def _bank_worker(rank, settings, world):
    from trainables import distributed

    data = load_dataset("digits")
    torch.manual_seed(0)
    method, _ = make(data, **settings)
    model = method.build().eval()  # per-sample BatchNorm: each worker's features equal the single process's
    per = 32 // world
    batch = data_batch(data, per, start=200 + rank * per)
    views = method.views(batch.images, torch.Generator().manual_seed(rank))
    loss, _ = method.loss(model, views, batch, step=0)
    method.after_step(model, step=1)
    return {"banks": [b.memory.clone() for b in model.banks], "z": model.z.clone(),
            "views": [v.clone() for v in views], "world": distributed.world_size()}


def test_two_workers_update_the_banks_as_one_process_with_the_global_batch(digits, tmp_path):
    results = run_workers(_bank_worker, SMALL, 2, tmp_path=tmp_path)
    assert [r["world"] for r in results] == [2, 2]
    for v in range(2):
        assert torch.equal(results[0]["banks"][v], results[1]["banks"][v])
    assert torch.equal(results[0]["z"], results[1]["z"])  # the mean over the workers' first batches
    # One process with the global batch of 32 (the same crops: each worker's views are recomputed here).
    torch.manual_seed(0)
    method, _ = make(digits, **SMALL)
    model = method.build().eval()
    batch = data_batch(digits, 32, start=200)
    views = [torch.cat([r["views"][v] for r in results]) for v in range(2)]
    method.loss(model, views, batch, step=0)
    method.after_step(model, step=1)
    for v in range(2):
        assert torch.allclose(results[0]["banks"][v], model.banks[v].memory, atol=1e-6)


# -- resume --------------------------------------------------------------------------------------------------------------
RESUME = {**TINY, "width": 0.125, "epochs": 2, "deterministic": True, "num_threads": 1, "probe_epochs": 5,
          "logreg_probe": False, "nce_k": 256, "schedule": "cosine", "lr_decay_epochs": ()}


def test_resume_is_bit_exact_and_keeps_z(digits):
    spec = TrialSpec.from_settings("cmc", RESUME)
    straight, first, second = straight_and_resumed(spec, digits)
    z = first.state["model"]["z"].clone()
    assert (z > 0).all() and first.state["method"] == {}

    resumed = first.metrics + second.metrics
    assert [m["epoch"] for m in resumed] == [1, 2]
    for ours, theirs in zip(resumed, straight.metrics):
        for key in ("step", "train_loss", "pos_prob", "knn_top1"):
            assert ours[key] == theirs[key], (key, ours[key], theirs[key])
    assert torch.equal(second.state["model"]["z"], z)  # not recomputed from the resumed run's first batch
    for name, tensor in straight.state["model"].items():
        assert torch.equal(tensor, second.state["model"][name]), name


# -- validation ----------------------------------------------------------------------------------------------------------
def test_nce_k_must_be_smaller_than_the_training_set():
    with pytest.raises(ConfigError, match="`nce_k` must be smaller than the 1197 training images of digits"):
        prepare_trial("cmc", {"nce_k": 1197})
    prepare_trial("cmc", {"nce_k": 1196})


@pytest.mark.parametrize(("settings", "fragment"), [
    (["nce_k=5000"], "nce_k=5000"),
    (["nce_t=0"], "0.0 < nce_t"),
    (["nce_m=1.0"], "0.0 <= nce_m < 1.0"),
    (["color_space=hsv"], "`color_space` must be one of lab, ycbcr, rgb"),
    (["view_mode=ring"], "`view_mode` must be one of core, full"),
    (["encoder=alexnet", "nce_k=64"], "`encoder=alexnet` needs images of at least 63 px, but digits has 16 px"),
])
def test_invalid_settings_exit_2_before_ray(settings, fragment, capsys):
    import ray

    args = [a for s in settings for a in ("--set", s)]
    assert main(["train", "cmc", "--dataset", "digits", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err, err
    assert len(err.splitlines()) == 1, err
    assert not ray.is_initialized()


def test_space_samples_valid_settings_and_starts_from_the_reference():
    import optuna

    from spaces import load_space

    space = load_space("cmc")
    assert space.points_to_evaluate[0] == {"nce_k": 16384, "nce_t": 0.07, "nce_m": 0.5, "softmax": False, "lr": 0.03}
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(10):
        trial = study.ask()
        assert space.space(trial, {"dataset": "digits"}) == {"method": "cmc"}
        assert trial.params["nce_k"] < 1197
        TrialSpec.from_settings("cmc", trial.params)
        study.tell(trial, 0.0)


def test_presets_validate():
    assert TrialSpec.from_settings("cmc", preset="stl10").method_config.nce_t == 0.1
    spec = TrialSpec.from_settings("cmc", preset="imagenet100")
    assert spec.method_config.softmax and spec.method_config.nce_k == 4096
    default = TrialSpec.from_settings("cmc")
    assert default.train.lr_decay_epochs == (120, 160, 200) and default.train.epochs == 240
