"""SCE: the loss against a naive double loop, InfoNCE at coeff=1 and a hand-checked case; the queue (wrap-around,
checkpoint, equal on two gloo workers), the key encoder (no gradient, cosine momentum), validation through the CLI,
an exact resume, and the search space."""

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
from trainables.loop import fit
from trainables.losses import sce_loss
from trainables.methods import get_method
from trainables.methods.sce import SCEModel
from trainables.nets import FeatureQueue, cosine_momentum
from trainables.optim import build_optimizer
from trainables.trial import TrialSpec

KW = dict(temperature=0.1, temperature_m=0.05, coeff=0.5)


# -- the loss ------------------------------------------------------------------------------------------------------------
def naive_sce_loss(q, k, queue, *, temperature, temperature_m, coeff):
    """METHODS.md's formula, anchor by anchor and candidate by candidate (candidates: own key, then the queue)."""
    q, k, queue = F.normalize(q, dim=1), F.normalize(k, dim=1), F.normalize(queue, dim=1)
    total = 0
    for i in range(q.shape[0]):
        candidates = [k[i]] + [queue[j] for j in range(queue.shape[0])]
        online = torch.stack([q[i] @ c / temperature for c in candidates])
        log_p = online - torch.logsumexp(online, 0)
        with torch.no_grad():
            rel = [0.0] + [math.exp(float(k[i] @ c) / temperature_m) for c in candidates[1:]]
            norm = sum(rel)
            w = [coeff * (j == 0) + (1 - coeff) * rel[j] / norm for j in range(len(candidates))]
        total = total - sum(w[j] * log_p[j] for j in range(len(candidates)))
    return total / q.shape[0]


def _inputs(b=5, d=4, n_queue=7, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, d, generator=g, dtype=dtype), torch.randn(b, d, generator=g, dtype=dtype),
            torch.randn(n_queue, d, generator=g, dtype=dtype))


@pytest.mark.parametrize("coeff", [0.0, 0.3, 0.5, 1.0])
@pytest.mark.parametrize(("temperature", "temperature_m"), [(0.1, 0.05), (0.5, 0.2)])
def test_loss_and_gradient_equal_naive_double_loop(coeff, temperature, temperature_m):
    q, k, queue = _inputs(seed=int(coeff * 10))
    kw = dict(temperature=temperature, temperature_m=temperature_m, coeff=coeff)
    q1, q2 = q.clone().requires_grad_(), q.clone().requires_grad_()
    got = sce_loss(q1, k, queue, **kw)
    expected = naive_sce_loss(q2, k, queue, **kw)
    assert got.ndim == 0 and got.dtype == torch.float64
    torch.testing.assert_close(got, expected)
    got.backward()
    expected.backward()
    torch.testing.assert_close(q1.grad, q2.grad)


def test_coeff_one_is_mocos_infonce():
    q, k, queue = _inputs(b=8, d=6, n_queue=16, seed=3, dtype=torch.float32)
    qn, kn, un = F.normalize(q, dim=1), F.normalize(k, dim=1), F.normalize(queue, dim=1)
    logits = torch.cat([(qn * kn).sum(1, keepdim=True), qn @ un.T], 1) / 0.2
    infonce = F.cross_entropy(logits, torch.zeros(8, dtype=torch.long))
    torch.testing.assert_close(sce_loss(q, k, queue, temperature=0.2, temperature_m=0.05, coeff=1.0), infonce)


def test_hand_checked_tiny_case():
    """One anchor, q = k = e1, queue = [e1, e2]: online logits [1, 1, 0] / tau, relational target over the queue
    softmax([1, 0] / tau_m)."""
    e1, e2 = torch.tensor([[1.0, 0.0]], dtype=torch.float64), torch.tensor([[0.0, 1.0]], dtype=torch.float64)
    tau, tau_m, lam = 0.5, 0.25, 0.5
    z = 2 * math.exp(1 / tau) + 1
    log_p = [1 / tau - math.log(z), 1 / tau - math.log(z), -math.log(z)]
    s1 = math.exp(1 / tau_m) / (math.exp(1 / tau_m) + 1)
    w = [lam, (1 - lam) * s1, (1 - lam) * (1 - s1)]
    expected = -sum(wi * lp for wi, lp in zip(w, log_p))
    got = sce_loss(e1 * 3, e1, torch.cat([e1, e2]) * 2, temperature=tau, temperature_m=tau_m, coeff=lam)
    assert got.item() == pytest.approx(expected, rel=1e-12)


def test_target_has_no_gradient_and_only_q_is_trained():
    q, k, queue = _inputs(seed=5)
    q.requires_grad_()
    k.requires_grad_()
    queue.requires_grad_()
    loss = sce_loss(q, k, queue, **KW)
    loss.backward()
    assert q.grad is not None and q.grad.abs().sum() > 0
    assert k.grad is None and queue.grad is None  # keys and queue are constants of the loss (the key encoder's output)
    # Against a target built by hand from the same keys: the gradient w.r.t. q is that of a fixed-target cross-entropy.
    qn, kn, un = (F.normalize(t.detach(), dim=1) for t in (q, k, queue))
    with torch.no_grad():
        target = torch.cat([torch.full((len(q), 1), 0.5, dtype=q.dtype), 0.5 * torch.softmax(kn @ un.T / 0.05, 1)], 1)
    q2 = q.detach().clone().requires_grad_()
    q2n = F.normalize(q2, dim=1)
    logits = torch.cat([(q2n * kn).sum(1, keepdim=True), q2n @ un.T], 1) / 0.1
    (-(target * logits.log_softmax(1)).sum(1).mean()).backward()
    torch.testing.assert_close(q.grad, q2.grad)


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [({"temperature": 0.0}, "temperature > 0"), ({"temperature_m": -1.0}, "temperature_m > 0"),
     ({"coeff": 1.5}, "0 <= coeff <= 1"), ({"coeff": -0.1}, "0 <= coeff <= 1")],
)
def test_loss_rejects_bad_arguments(kwargs, fragment):
    q, k, queue = _inputs()
    with pytest.raises(ValueError, match=fragment):
        sce_loss(q, k, queue, **{**KW, **kwargs})
    with pytest.raises(ValueError, match="`q` and `k`"):
        sce_loss(q, k[:2], queue, **KW)
    with pytest.raises(ValueError, match="`queue`"):
        sce_loss(q, k, queue[:, :2], **KW)


# -- DDP: local loss per worker, gathered keys enqueued --------------------------------------------------------------------
N, D, Q, WORLD = 8, 5, 24, 2


def _ddp_worker(rank: int) -> dict:
    q, k, queue_rows = _inputs(b=N, d=D, n_queue=Q, seed=11)
    rows = slice(rank * N // WORLD, (rank + 1) * N // WORLD)
    queue = FeatureQueue(Q, D).double()
    queue.features.copy_(F.normalize(queue_rows, dim=1))
    local = q[rows].clone().requires_grad_()
    loss = sce_loss(local, k[rows], queue(), **KW)
    loss.backward()
    queue.enqueue(distributed.gather(k[rows]))
    return {"loss": loss.detach(), "grad": local.grad, "queue": queue.features.clone(), "ptr": queue.ptr.clone()}


def test_two_workers_give_the_global_loss_gradient_and_queue(tmp_path):
    """The mean of the workers' losses is the global loss; each worker's gradient of its rows is WORLD times the
    global one (DDP's average of the parameter gradients then equals the global gradient); both queues end equal to
    the one-process queue after enqueueing the global batch's keys."""
    results = run_workers(_ddp_worker, tmp_path=tmp_path, world_size=WORLD)
    q, k, queue_rows = _inputs(b=N, d=D, n_queue=Q, seed=11)
    q.requires_grad_()
    queue = FeatureQueue(Q, D).double()
    queue.features.copy_(F.normalize(queue_rows, dim=1))
    expected = sce_loss(q, k, queue(), **KW)
    (grad,) = torch.autograd.grad(expected, q)
    queue.enqueue(k)
    torch.testing.assert_close(sum(r["loss"] for r in results) / WORLD, expected.detach())
    for rank, result in enumerate(results):
        rows = slice(rank * N // WORLD, (rank + 1) * N // WORLD)
        torch.testing.assert_close(result["grad"], WORLD * grad[rows])
        assert torch.equal(result["queue"], queue.features) and torch.equal(result["ptr"], queue.ptr)


def _method_ddp_worker(rank: int) -> dict:
    data = load_dataset("digits")
    torch.manual_seed(0)
    method, _ = make_method("sce", data, **SMALL, queue_size=128, batch_size=16)
    model = method.build()
    batch = data_batch(data, 8, start=8 * rank)
    views = method.views(batch.images, torch.Generator().manual_seed(rank))
    loss, _ = method.loss(model, views, batch, step=0)
    loss.backward()
    local_keys = torch.cat(model.keys(views[:2]))  # the same key encoder, the same views: the keys loss computed
    method.after_step(model, step=1)
    return {"queue": model.queue.features.clone(), "ptr": model.queue.ptr.clone(), "keys": local_keys}


def test_method_enqueues_the_same_global_keys_on_every_worker(tmp_path):
    results = run_workers(_method_ddp_worker, tmp_path=tmp_path, world_size=WORLD)
    assert torch.equal(results[0]["queue"], results[1]["queue"]) and int(results[0]["ptr"]) == 32
    # view-major, then rank order: [view 0 of rank 0, view 0 of rank 1, view 1 of rank 0, view 1 of rank 1]
    halves = [r["keys"].chunk(2) for r in results]
    expected = torch.cat([halves[0][0], halves[1][0], halves[0][1], halves[1][1]])
    torch.testing.assert_close(F.normalize(results[0]["queue"][:32], dim=1), F.normalize(expected.float(), dim=1))


# -- the method ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


SMALL = {"width": 0.125, "feat_dim": 32, "proj_hidden_dim": 64, "pred_hidden_dim": 64}


def make(data, **settings):
    return make_method("sce", data, **{**SMALL, **settings})


def key_params(model: SCEModel) -> dict[str, torch.Tensor]:
    named = [*model.key_backbone.module.named_parameters("backbone"),
             *model.key_projector.module.named_parameters("projector")]
    return {k: v.detach().clone() for k, v in named}


def online_params(model: SCEModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in [*model.backbone.named_parameters("backbone"),
                                               *model.projector.named_parameters("projector")]}


def _step(method, model, optimizer, batch, step):
    views = method.views(batch.images, torch.Generator().manual_seed(step))
    loss, logs = method.loss(model, views, batch, step=step)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss, logs


def test_model_recipe_and_views(digits):
    method, spec = make(digits, num_local_views=2)
    model = method.build()
    assert (spec.train.optimizer, spec.train.lr, spec.train.weight_decay, spec.train.warmup_epochs) == (
        "sgd", 0.06, 5e-4, 5.0)
    assert spec.method_config.initial_momentum == 0.99 and spec.method_config.symmetric
    assert model.predictor[0].in_features == model.projector[-1].out_features == 32
    # Frozen: SGD skips them (no gradient, so no weight decay either); the key encoder test checks they do not move.
    assert not any(p.requires_grad for p in [*model.key_backbone.parameters(), *model.key_projector.parameters()])
    views = method.views(data_batch(digits).images, torch.Generator().manual_seed(0))
    assert [tuple(v.shape[-2:]) for v in views] == [(16, 16)] * 2 + [(6, 6)] * 2
    assert [tuple(z.shape) for z in model(views)] == [(16, 32)] * 4


def test_queue_wraps_around_and_survives_a_checkpoint(digits):
    method, spec = make(digits, queue_size=128, batch_size=16)  # 2 x 16 keys a step: wraps after 4 steps
    model = method.build()
    optimizer = build_optimizer(model, spec.train)
    batch = data_batch(digits)
    pushed = []
    for step in range(5):
        _step(method, model, optimizer, batch, step)
        pushed.append(method._pending_keys.clone())
        method.after_step(model, step=step + 1)
    assert int(model.queue.ptr) == (5 * 32) % 128 == 32
    assert torch.equal(model.queue.features[:32], pushed[4])  # the 5th step overwrote the oldest rows
    assert torch.equal(model.queue.features[32:64], pushed[1])
    assert {"queue.features", "queue.ptr", "key_backbone.module.stem.0.weight"} <= set(model.state_dict())
    restored = make(digits, queue_size=128, batch_size=16)[0].build()
    restored.load_state_dict(model.state_dict())
    assert torch.equal(restored.queue.features, model.queue.features) and int(restored.queue.ptr) == 32


def test_key_encoder_gets_no_gradient_and_follows_the_cosine_schedule(digits):
    method, spec = make(digits, initial_momentum=0.9)
    model = method.build()
    optimizer = build_optimizer(model, spec.train)
    batch = data_batch(digits)
    total = method.shape.total_steps
    for step in (0, total // 2):
        before = key_params(model)
        _, logs = _step(method, model, optimizer, batch, step)
        assert set(logs) == {"instance_top1"}
        assert all(p.grad is None for p in [*model.key_backbone.parameters(), *model.key_projector.parameters()])
        assert all(torch.equal(v, before[k]) for k, v in key_params(model).items())  # only after_step moves it
        online = online_params(model)
        m = cosine_momentum(step + 1, total, 0.9)
        assert m == method.key_momentum(step + 1) == method.epoch_logs(step=step + 1)["key_momentum"]
        method.after_step(model, step=step + 1)
        moved = key_params(model)
        for k, v in before.items():
            torch.testing.assert_close(moved[k], torch.lerp(v, online[k], 1 - m), rtol=0, atol=1e-7)
    assert method.key_momentum(0) == 0.9 and method.key_momentum(total // 2) == pytest.approx(0.95)
    assert method.key_momentum(total) == 1.0 and method.state_dict() == {}


def test_eval_features_are_the_online_backbone(digits):
    method, _ = make(digits)
    model = method.build().eval()
    with torch.no_grad():
        model.key_backbone.module.stem[0].weight.mul_(2.0)
        x = method.views(data_batch(digits).images, torch.Generator().manual_seed(0))[0]
        assert torch.equal(method.eval_features(model, x)["backbone"], model.backbone(x))


@pytest.mark.parametrize("settings", [{"symmetric": False, "queue_size": 256}, {"predictor": False},
                                      {"num_local_views": 2, "coeff": 1.0},
                                      {"queue_size": 256, "batch_size": 128}])
def test_variants_pass_the_method_contract(digits, settings):
    check_method_contract("sce", digits, **{**SMALL, **settings})


# -- validation ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("settings", "fragment"),
    [({"queue_size": 1000}, "queue_size"), ({"queue_size": 128, "batch_size": 128}, "at least one step's 256 keys"),
     ({"coeff": 1.5}, "coeff"), ({"temperature": 0.0}, "temperature"), ({"temperature_m": -1.0}, "temperature_m"),
     ({"num_local_views": 1, "local_size_ratio": 0.05}, "local_size_ratio")],
)
def test_validation_names_the_field(settings, fragment):
    with pytest.raises(ConfigError, match=fragment):
        TrialSpec.from_settings("sce", {"batch_size": 256, **settings})
    TrialSpec.from_settings("sce", {"queue_size": 128, "batch_size": 128, "symmetric": False})


def test_queue_must_be_smaller_than_the_training_set(digits, capsys):
    import ray

    spec = TrialSpec.from_settings("sce", {**TINY, "queue_size": 1280})  # digits: 1197 training images
    with pytest.raises(ConfigError, match="`queue_size` must be smaller than the 1197 training images"):
        fit(spec, data=digits)
    assert main(["train", "sce", "--set", "batch_size=128", "--set", "queue_size=1280"]) == 2  # before launch
    err = capsys.readouterr().err.strip()
    assert "`queue_size` must be smaller than the 1197 training images" in err and len(err.splitlines()) == 1, err
    assert not ray.is_initialized()


def test_cli_rejects_a_queue_that_is_not_a_multiple_of_the_batch(capsys):
    import ray

    assert main(["train", "sce", "--set", "queue_size=1000"]) == 2
    err = capsys.readouterr().err.strip()
    assert "queue_size" in err and "batch_size=256" in err and len(err.splitlines()) == 1, err
    assert not ray.is_initialized()


def test_presets():
    cifar = TrialSpec.from_settings("sce", preset="cifar10")
    assert (cifar.train.dataset, cifar.train.epochs, cifar.train.batch_size, cifar.train.lr) == ("cifar10", 200, 256, 0.06)
    assert cifar.method_config.queue_size == 4096 and cifar.train.warmup_epochs == 5.0
    imagenet = TrialSpec.from_settings("sce", preset="imagenet")
    assert imagenet.train.optimizer == "lars" and imagenet.train.scaled_lr() == pytest.approx(0.3 * 4096 / 256)
    assert imagenet.method_config.queue_size == 65536 and imagenet.method_config.temperature_m == 0.07
    digits = TrialSpec.from_settings("sce", preset="digits")
    assert digits.method_config.queue_size % digits.train.batch_size == 0 and digits.method_config.queue_size < 1197


# -- exact resume ----------------------------------------------------------------------------------------------------------
RESUME = {**TINY, **SMALL, "epochs": 3, "deterministic": True, "num_threads": 1, "probe_epochs": 5,
          "logreg_probe": False, "queue_size": 512, "warmup_epochs": 1.0}


def test_resume_continues_queue_and_momentum_exactly(digits):
    spec = TrialSpec.from_settings("sce", RESUME)
    straight, first, second = straight_and_resumed(spec, digits, until=2)
    assert first.state["method"] == {} and int(first.state["model"]["queue.ptr"]) == (9 * 256) % 512
    resumed = first.metrics + second.metrics
    assert [m["epoch"] for m in resumed] == [1, 2]
    for ours, theirs in zip(resumed, straight.metrics):
        for key in ("step", "key_momentum", "instance_top1", "train_loss", "knn_top1"):
            assert ours[key] == theirs[key], (key, ours[key], theirs[key])
    for name, tensor in straight.state["model"].items():
        assert torch.equal(tensor, second.state["model"][name]), name


# -- the search space ----------------------------------------------------------------------------------------------------
def test_space_samples_valid_trials_and_starts_with_the_seed_recipe():
    import optuna

    from spaces import compare, load_space

    space = load_space("sce")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for point in space.points_to_evaluate:
        study.enqueue_trial(point)
    for index in range(20):
        trial = study.ask()
        assert space.space(trial, {}) == {"method": "sce"}
        if index == 0:
            assert trial.params == space.points_to_evaluate[0]
        assert {"temperature", "temperature_m", "coeff", "initial_momentum", "queue_size", "lr"} <= set(trial.params)
        TrialSpec.from_settings("sce", {**trial.params, "dataset": "cifar10"})
        study.tell(trial, 0.0)
    assert "sce" in compare.available() and get_method("sce").name == "sce"
