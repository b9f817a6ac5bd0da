"""Sigmoid contrastive learning on ReLIC: the loss against a naive double loop, the EMA target (no gradient, moves only
by EMA), exact resume of the gamma and beta schedules, multi-crop views, a digits run that beats an untrained
encoder, and invalid settings rejected by the CLI."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY
from ddp_helpers import run_workers
from method_contract import check_method_contract, data_batch, make_method, straight_and_resumed

from search.cli import main
from trainables import distributed
from trainables.config import ConfigError
from trainables.data import load_dataset
from trainables.losses import sigmoid_pairwise_loss
from trainables.methods import get_method
from trainables.methods.sigmoid import ReLICModel, multiview_sigmoid_loss
from trainables.optim import build_optimizer
from trainables.trial import TrialSpec


# -- the loss ------------------------------------------------------------------------------------------------------------
def naive_sigmoid_loss(x, x_prime, *, t, b, gamma=0.0, alpha=0.0, max_scale=5.0, threshold=None):
    """METHODS.md's formula, pair by pair, in float64."""
    x, x_prime = F.normalize(x.double(), dim=1), F.normalize(x_prime.double(), dim=1)
    n = x.shape[0]
    scale = min(math.exp(t), max_scale)
    logits = [[scale * float(x[i] @ x_prime[j]) + b for j in range(n)] for i in range(n)]
    total = 0.0
    for i in range(n):
        for j in range(n):
            y = 1.0 if i == j else -1.0
            p = 1.0 / (1.0 + math.exp(-y * logits[i][j]))
            penalty = (1.0 - p) ** gamma
            if threshold is not None:  # the seed's filtering: drop confident negatives, the rest unweighted
                if i != j and penalty <= threshold:
                    continue
                penalty = 1.0
            total += penalty * math.log(p)
    loss = -total / n
    if alpha:
        kl = 0.0
        for a in range(n):
            row_norm = math.log(sum(math.exp(v) for v in logits[a]))
            col_norm = sum(math.exp(logits[i][a]) for i in range(n))
            for c in range(n):
                target = math.exp(logits[c][a]) / col_norm  # softmax(logits, dim=0).T[a, c]
                kl += target * (math.log(target) - (logits[a][c] - row_norm))
        loss += alpha * kl / n
    return loss


def _pair(n=7, d=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randn(n, d, generator=g)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0, 2.0])
@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_loss_equals_naive_double_loop(gamma, alpha):
    x, xp = _pair(seed=int(gamma * 10 + alpha * 100))
    t, b = math.log(3.0), -2.0
    got = sigmoid_pairwise_loss(x, xp, log_temperature=torch.tensor(t), bias=torch.tensor(b), gamma=gamma, alpha=alpha)
    assert got.ndim == 0
    assert got.item() == pytest.approx(naive_sigmoid_loss(x, xp, t=t, b=b, gamma=gamma, alpha=alpha), rel=1e-5)


def test_kl_term_alone_and_scale_clamp():
    x, xp = _pair(n=6, seed=3)
    kw = dict(log_temperature=torch.tensor(math.log(20.0)), bias=torch.tensor(0.5), gamma=1.0)
    kl = sigmoid_pairwise_loss(x, xp, alpha=1.0, **kw) - sigmoid_pairwise_loss(x, xp, alpha=0.0, **kw)
    naive_kl = naive_sigmoid_loss(x, xp, t=math.log(20.0), b=0.5, gamma=1.0, alpha=1.0) - naive_sigmoid_loss(
        x, xp, t=math.log(20.0), b=0.5, gamma=1.0)
    assert kl.item() == pytest.approx(naive_kl, rel=1e-5) and kl.item() > 0  # e^t = 20 is clamped to 5 in both


def test_gamma_zero_is_the_plain_sigmoid_loss():
    x, xp = _pair(seed=4)
    logits = 5.0 * F.normalize(x, dim=1) @ F.normalize(xp, dim=1).T - 5.0
    labels = 2 * torch.eye(len(x)) - 1
    plain = -F.logsigmoid(labels * logits).sum() / len(x)
    got = sigmoid_pairwise_loss(x, xp, log_temperature=math.log(5.0), bias=-5.0)
    assert got.item() == pytest.approx(plain.item(), rel=1e-6)


@pytest.mark.parametrize("threshold", [0.05, 0.3])
def test_penalty_filtering_drops_confident_negatives(threshold):
    x, xp = _pair(n=8, seed=5)
    kw = dict(t=math.log(5.0), b=-1.0, gamma=2.0)
    got = sigmoid_pairwise_loss(x, xp, log_temperature=kw["t"], bias=kw["b"], gamma=2.0, filter_threshold=threshold)
    assert got.item() == pytest.approx(naive_sigmoid_loss(x, xp, **kw, threshold=threshold), rel=1e-5)


def test_loss_is_finite_for_extreme_logits_and_differentiable_in_t_and_b():
    x, xp = _pair(seed=6)
    t = torch.tensor(math.log(5.0), requires_grad=True)
    b = torch.tensor(-80.0, requires_grad=True)  # sigmoid underflows in float32; logsigmoid does not
    loss = sigmoid_pairwise_loss(x, xp, log_temperature=t, bias=b, gamma=1.0, alpha=1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(t.grad) and torch.isfinite(b.grad) and b.grad != 0


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [({"gamma": -1.0}, "gamma >= 0"), ({"alpha": -0.1}, "alpha >= 0"), ({"max_scale": 0.0}, "max_scale > 0")],
)
def test_loss_rejects_bad_arguments(kwargs, fragment):
    x, xp = _pair()
    with pytest.raises(ValueError, match=fragment):
        sigmoid_pairwise_loss(x, xp, log_temperature=0.0, bias=0.0, **kwargs)
    with pytest.raises(ValueError, match="shape"):
        sigmoid_pairwise_loss(x, xp[:3], log_temperature=0.0, bias=0.0)


# -- the multi-crop pairing, on one process and over two gloo workers ---------------------------------------------------
MV = dict(gamma=1.0, alpha=0.5)
N, V, G, D, WORLD = 8, 4, 2, 5, 2


def multiview_batch():
    g = torch.Generator().manual_seed(7)
    return torch.randn(N, V, D, generator=g, dtype=torch.float64), torch.randn(N, G, D, generator=g,
                                                                             dtype=torch.float64)


def test_multiview_loss_averages_every_target_global_view_against_every_other_view():
    online, target = multiview_batch()
    kw = dict(log_temperature=math.log(4.0), bias=-3.0, **MV)
    expected = [sigmoid_pairwise_loss(online[:, v], target[:, g], **kw) for g in range(G) for v in range(V) if v != g]
    assert len(expected) == G * (V - 1)
    got = multiview_sigmoid_loss(online, target, **kw)
    torch.testing.assert_close(got, torch.stack(expected).mean())
    with pytest.raises(ValueError, match="at least 2 views"):
        multiview_sigmoid_loss(online[:, :1], target[:, :1], **kw)


def _ddp_worker(rank: int) -> dict:
    online, target = multiview_batch()
    rows = slice(rank * N // WORLD, (rank + 1) * N // WORLD)
    local = online[rows].clone().requires_grad_()
    t = torch.tensor(math.log(4.0), dtype=torch.float64, requires_grad=True)
    b = torch.tensor(-3.0, dtype=torch.float64, requires_grad=True)
    loss = multiview_sigmoid_loss(distributed.gather_with_grad(local), distributed.gather(target[rows]),
                                  log_temperature=t, bias=b, **MV)
    loss.backward()
    return {"loss": loss.detach(), "online": local.grad, "t": t.grad, "b": b.grad}


def test_two_workers_compute_the_global_loss_and_its_gradient(tmp_path):
    """Every worker's loss is the global batch's loss. The gather's backward gives each worker ``WORLD`` times the
    global gradient of its own rows (every worker's loss reaches them) and the global gradient of ``t`` and ``b``;
    DDP's average over workers of the parameter gradients is then exactly the global loss's gradient."""
    results = run_workers(_ddp_worker, tmp_path=tmp_path, world_size=WORLD)
    online, target = multiview_batch()
    online.requires_grad_()
    t = torch.tensor(math.log(4.0), dtype=torch.float64, requires_grad=True)
    b = torch.tensor(-3.0, dtype=torch.float64, requires_grad=True)
    expected = multiview_sigmoid_loss(online, target, log_temperature=t, bias=b, **MV)
    d_online, d_t, d_b = torch.autograd.grad(expected, (online, t, b))
    for rank in range(WORLD):
        result = results[rank]
        rows = slice(rank * N // WORLD, (rank + 1) * N // WORLD)
        torch.testing.assert_close(result["loss"], expected.detach())
        torch.testing.assert_close(result["online"], WORLD * d_online[rows])
        torch.testing.assert_close(result["t"], d_t)
        torch.testing.assert_close(result["b"], d_b)


# -- the method ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


SMALL = {"width": 0.125, "num_local_views": 2}


def make(data, **settings):
    return make_method("sigmoid", data, **{**SMALL, **settings})


def target_params(model: ReLICModel) -> dict[str, torch.Tensor]:
    named = [*model.target_backbone.module.named_parameters("backbone"),
             *model.target_head.module.named_parameters("head")]
    return {k: v.detach().clone() for k, v in named}


def online_params(model: ReLICModel) -> dict[str, torch.Tensor]:
    return {k: v.detach() for k, v in [*model.backbone.named_parameters("backbone"),
                                       *model.head.named_parameters("head")]}


def test_model_head_parameters_and_multicrop_views(digits):
    method, spec = make(digits, num_local_views=3)
    model = method.build()
    assert spec.train.optimizer == "adam" and spec.train.lr == 3e-4 and spec.train.weight_decay == 1e-5
    assert spec.train.schedule == "constant" and spec.train.logreg_probe is True
    linear1, bn, _, linear2 = model.head
    assert (linear1.in_features, linear1.out_features, linear2.out_features) == (model.backbone.feature_dim, 512, 64)
    assert linear1.bias is None and linear2.bias is None and isinstance(bn, torch.nn.BatchNorm1d)
    assert model.log_temperature.item() == pytest.approx(math.log(5.0)) and model.bias.item() == -5.0
    assert all(not p.requires_grad for p in [*model.target_backbone.parameters(), *model.target_head.parameters()])
    optimised = {id(p) for g in build_optimizer(model, spec.train).param_groups for p in g["params"]}
    assert id(model.log_temperature) in optimised and id(model.bias) in optimised
    assert not optimised & {id(p) for p in model.target_backbone.parameters()}
    views = method.views(data_batch(digits).images, torch.Generator().manual_seed(0))
    assert [tuple(v.shape[-2:]) for v in views] == [(16, 16)] * 2 + [(6, 6)] * 3  # int(16 * 3 / 7) = 6
    assert [a.scale for a in method.augmentations()] == [(0.1, 1.0)] * 2 + [(0.05, 1.0)] * 3  # the seed's crops
    assert make(digits, crop_scale_min=0.5, local_crop_scale_min=0.3)[0].augmentations()[-1].scale == (0.3, 1.0)
    projections = model(views)
    assert [tuple(z.shape) for z in projections] == [(16, 64)] * 5


def test_target_gets_no_gradient_and_moves_only_by_ema(digits):
    method, spec = make(digits, ema_start_step=0, beta=0.9)
    model = method.build()
    optimizer = build_optimizer(model, spec.train)
    batch = data_batch(digits)
    before = target_params(model)
    for step in range(2):
        views = method.views(batch.images, torch.Generator().manual_seed(step))
        loss, logs = method.loss(model, views, batch, step=step)
        optimizer.zero_grad()
        loss.backward()
        assert all(p.grad is None for p in [*model.target_backbone.parameters(), *model.target_head.parameters()])
        assert model.log_temperature.grad is not None and model.bias.grad is not None
        assert sum(p.grad.abs().sum() for p in model.backbone.parameters()) > 0
        assert set(logs) == {"logit_scale", "logit_bias", "instance_top1"}
        optimizer.step()
        for k, v in target_params(model).items():  # neither the forward pass nor the optimiser moved the target
            assert torch.equal(v, before[k]), k
        beta = method.ema_beta(step + 1)
        assert 0.9 <= beta < 1
        online = online_params(model)
        method.after_step(model, step=step + 1)
        moved = target_params(model)
        for k, v in before.items():
            assert torch.allclose(moved[k], torch.lerp(v, online[k], 1 - beta), atol=1e-7), k
        assert any(not torch.equal(moved[k], before[k]) for k in before)
        before = moved


def test_target_is_a_copy_during_warm_up_and_frozen_with_beta_one(digits):
    batch = data_batch(digits)
    method, spec = make(digits, ema_start_step=1)
    model = method.build()
    optimizer = build_optimizer(model, spec.train)
    loss, _ = method.loss(model, method.views(batch.images, torch.Generator().manual_seed(0)), batch, step=0)
    loss.backward()
    optimizer.step()
    method.after_step(model, step=1)  # step <= ema_start_step: the target becomes the online network
    assert model.target_backbone.module.state_dict().keys() == model.backbone.state_dict().keys()
    for online, target in ((model.backbone, model.target_backbone), (model.head, model.target_head)):
        assert all(torch.equal(v, target.module.state_dict()[k]) for k, v in online.state_dict().items())  # buffers

    method, spec = make(digits, ema_start_step=0, beta=1.0)
    model = method.build()
    optimizer = build_optimizer(model, spec.train)
    start = target_params(model)
    for step in range(3):
        loss, _ = method.loss(model, method.views(batch.images, torch.Generator().manual_seed(step)), batch,
                              step=step)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        method.after_step(model, step=step + 1)
        assert method.ema_beta(step + 1) == 1.0
    end = target_params(model)
    assert all(torch.equal(v, end[k]) for k, v in start.items())
    assert not torch.equal(model.backbone.stem[0].weight, model.target_backbone.module.stem[0].weight)


def test_eval_features_come_from_the_target_backbone(digits):
    method, _ = make(digits, ema_start_step=0)
    model = method.build()
    with torch.no_grad():
        model.backbone.stem[0].weight.mul_(2.0)  # online and target now differ
    model.eval()
    x = method.views(data_batch(digits).images, torch.Generator().manual_seed(0))[0]
    with torch.no_grad():
        feats = method.eval_features(model, x)["backbone"]
        assert torch.equal(feats, model.target_backbone(x))
        assert not torch.equal(feats, model.backbone(x))


RESUME = {**TINY, "width": 0.125, "epochs": 3, "deterministic": True, "num_threads": 1, "probe_epochs": 5,
          "logreg_probe": False, "num_local_views": 1, "use_gamma_scaling": True, "gamma_scaling_steps": 20,
          "beta": 0.9, "gamma": 2.0}


def test_resume_mid_schedule_continues_gamma_and_beta_exactly(digits):
    spec = TrialSpec.from_settings("sigmoid", RESUME)
    straight, first, second = straight_and_resumed(spec, digits)
    assert first.state["method"] == {} and first.state["progress"]["step"] == first.metrics[-1]["step"] == 9

    resumed = first.metrics + second.metrics
    assert [m["epoch"] for m in resumed] == [1, 2, 3]
    for ours, theirs in zip(resumed, straight.metrics):
        for key in ("step", "gamma", "ema_beta", "train_loss", "logit_scale", "logit_bias", "knn_top1"):
            assert ours[key] == theirs[key], (key, ours[key], theirs[key])
    gammas = [m["gamma"] for m in straight.metrics]
    # 9 steps per epoch (1197 images // 128): the checkpoint of epoch 1 is at step 9 of T = 20.
    assert 2.0 > gammas[0] > gammas[1] > 0.0 and gammas[2] == 0.0
    betas = [m["ema_beta"] for m in straight.metrics]
    assert 0.9 < betas[0] < betas[1] < betas[2] == pytest.approx(1.0)  # the cosine reaches 1 at the last step
    for name, tensor in straight.state["model"].items():
        assert torch.equal(tensor, second.state["model"][name]), name
    assert second.state["method"] == straight.state["method"]


def test_schedules_are_functions_of_the_loop_step_and_the_method_keeps_no_state(digits):
    method, _ = make(digits, use_gamma_scaling=True, gamma_scaling_steps=100, gamma=1.0)
    method.after_step(method.build(), step=50)
    assert method.epoch_logs(step=50)["gamma"] == pytest.approx(0.5)
    assert method.epoch_logs(step=0)["gamma"] == 1.0 and method.epoch_logs(step=100)["gamma"] == 0.0
    assert method.ema_beta(method.shape.total_steps) == pytest.approx(1.0)
    assert method.state_dict() == {}
    with pytest.raises(ValueError, match="keeps no state"):
        method.load_state_dict({"step": 3})


@pytest.mark.parametrize("settings", [{"num_local_views": 0, "ema_start_step": 0, "ema_every_n_steps": 2},
                                      {"use_penalty_filtering": True, "filtering_warmup_steps": 0, "alpha": 0.0}])
def test_variants_pass_the_method_contract(digits, settings):
    check_method_contract("sigmoid", digits, **{**SMALL, **settings})


def test_renamed_settings():
    spec = TrialSpec.from_settings("sigmoid", {"init_logit_scale": 10.0, "ema_start_step": 3, "ema_every_n_steps": 2})
    assert (spec.method_config.init_logit_scale, spec.method_config.ema_start_step) == (10.0, 3)
    for old in ("init_temperature", "update_beta_after_step", "update_beta_every_n_steps"):
        with pytest.raises(ConfigError, match=old):
            TrialSpec.from_settings("sigmoid", {old: 1})


# -- validation through the CLI ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("settings", "fragment"),
    [
        (["use_gamma_scaling=true", "gamma_scaling_steps=0"], "gamma_scaling_steps > 0"),
        (["beta=1.5"], "0.0 <= beta <= 1.0"),
        (["beta=-0.1"], "0.0 <= beta <= 1.0"),
        (["local_size_ratio=0.05"], "local_size_ratio"),
        (["num_global_views=0"], "num_global_views"),
        (["num_global_views=1", "num_local_views=0"], "num_global_views + num_local_views >= 2"),
        (["gamma_schedule=step"], "`gamma_schedule` must be one of cosine, linear, constant"),
    ],
)
def test_invalid_settings_exit_2_with_the_message(settings, fragment, capsys):
    import ray

    args = [a for s in settings for a in ("--set", s)]
    assert main(["train", "sigmoid", "--dataset", "digits", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert fragment in err and len(err.splitlines()) == 1, err
    assert not ray.is_initialized()


def test_local_views_at_a_valid_ratio_and_scaling_off_are_accepted(digits):
    spec = TrialSpec.from_settings("sigmoid", {"local_size_ratio": 0.2, "num_local_views": 2})  # int(16 * 0.2) = 3 px
    assert [a.size for a in get_method("sigmoid")(spec.method_config, train=spec.train, data=digits).augmentations()
            ] == [16, 16, 3, 3]
    spec = TrialSpec.from_settings("sigmoid", {"use_gamma_scaling": False, "gamma_scaling_steps": 0})  # unused when off
    assert (spec.method_config.use_gamma_scaling, spec.method_config.gamma_scaling_steps) == (False, 0)
    spec = TrialSpec.from_settings("sigmoid", {"local_size_ratio": 0.01, "num_local_views": 0, "num_global_views": 2})
    assert spec.method_config.num_local_views == 0 and spec.method_config.local_size_ratio == 0.01


# -- the search space ----------------------------------------------------------------------------------------------------
def test_space_samples_valid_trials_with_a_conditional_schedule():
    import optuna

    from spaces import compare, load_space

    space = load_space("sigmoid")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for point in space.points_to_evaluate:
        study.enqueue_trial(point)
    seen_on = seen_off = False
    for index in range(40):
        trial = study.ask()
        out = space.space(trial, {})
        assert out == {"method": "sigmoid"}
        params = trial.params
        if index == 0:
            assert params == space.points_to_evaluate[0]
        if params["use_gamma_scaling"]:
            seen_on = True
            assert {"gamma_scaling_steps", "gamma_schedule"} <= set(params)
        else:
            seen_off = True
            assert not {"gamma_scaling_steps", "gamma_schedule"} & set(params)
        assert {"gamma", "alpha", "beta", "lr", "num_local_views"} <= set(params)
        TrialSpec.from_settings(out["method"], params)
        study.tell(trial, 0.0)
    assert seen_on and seen_off

    fixed = {"num_global_views": 1, "use_gamma_scaling": False}
    trial = study.ask()
    space.space(trial, fixed)
    assert "use_gamma_scaling" not in trial.params and trial.params["num_local_views"] >= 1
    assert "sigmoid" in compare.available()
