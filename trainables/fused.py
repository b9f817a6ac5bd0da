"""Fused trials: K configurations of one method and architecture trained as one model (horizontal fusion, HFTA).

Members share the method, backbone, width, batch size, epochs and every other setting that fixes tensor shapes or
control flow; they may differ in the per-member settings (:func:`per_member_fields`): the optimiser's scalars and
schedule (lr, momentum, weight decay, warm-up, decay, clipping), the seed (initialisation, data order and
augmentation), the evaluation's settings, and the method's float settings (temperature, coeff, crop scales, ...).

How (``torch.func``): every parameter and buffer is stacked over the members (``[K, ...]``), and one
``vmap(functional_call)`` runs the method's own ``loss(model, views, batch, step=...)`` for all members at once, so
a method never knows it is fused. Member k's float settings that differ are handed to its loss as 0-dim tensors in
a shallow copy of its config (equal ones stay Python floats); what ``loss`` stashes on the method (e.g. SCE's keys
to enqueue) comes out of the vmap stacked and is given back to member k's method. BatchNorm running statistics are
stacked buffers, updated in place per member. Each member also keeps an ordinary module whose parameters and buffers
are views of row k of the stacks: ``after_step`` (EMA targets, queues), ``eval_features``, the kNN monitor and the
probes run on it unfused, and see every fused update. Views are drawn per member with the member's own generator,
seeded as ``fit`` seeds it, so member k sees exactly the batches and views of its unfused trial.

The optimiser (:class:`FusedOptimizer`) is SGD, LARS or Adam on the stacks with per-member ``lr`` (each member's own
schedule), ``momentum`` and ``weight_decay`` vectors; LARS' trust ratio and gradient clipping use per-member norms.

Equivalence contract (tests/test_fused.py): after N steps every member's parameters, losses and metrics equal an
unfused ``fit`` of the same settings within float32 round-off (vmap batches convolutions as grouped convolutions,
which sum in another order): ``atol = rtol = 1e-4`` after 2 epochs of a tiny net on digits.
"""

from __future__ import annotations

import copy
import dataclasses
import time
import typing
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from trainables.config import ConfigError, TrainConfig
from trainables.data import ImageData
from trainables.loop import (
    Progress,
    Run,
    changed_fields,
    check_data,
    epoch_order,
    epoch_report,
    load_data,
    memory_format,
    peak_mem_mb,
    precision,
    read_batches,
    seed_everything,
)
from trainables.memory import MemoryGuard
from trainables.methods import Batch, Method, RunShape, get_method
from trainables.trial import TrialSpec

__all__ = ["FUSED_CHECKPOINT_VERSION", "FuseError", "FusedOptimizer", "FusedRun", "check_fusable", "fit_fused",
           "per_member_fields"]

FUSED_CHECKPOINT_VERSION = 1

#: TrainConfig settings a member may have of its own: the optimiser's scalars and schedule, the seed, evaluation.
TRAIN_PER_MEMBER = frozenset({
    "lr", "lr_scaling", "momentum", "weight_decay", "schedule", "lr_decay_epochs", "lr_decay_rate", "warmup_epochs",
    "warmup_from", "grad_clip", "seed", "knn_k", "knn_temperature", "probe_epochs", "probe_lr", "probe_weight_decay",
    "logreg_probe", "probe", "seed_probe_epochs", "seed_probe_batch_size", "seed_probe_lr",
})


class FuseError(ConfigError):
    """Trials that cannot be fused; the message names the differing field (a ConfigError: the CLI exits 2)."""


def per_member_fields(method: str) -> frozenset[str]:
    """The settings members of a fused ``method`` trial may differ in: :data:`TRAIN_PER_MEMBER` plus the method
    config's ``float`` fields (loss scalars and augmentation strengths; ints, bools and strings fix shapes or
    control flow and must be equal)."""
    config = get_method(method).Config
    hints = typing.get_type_hints(config)
    return TRAIN_PER_MEMBER | {f.name for f in dataclasses.fields(config) if hints.get(f.name) is float}


def check_fusable(specs: Sequence[TrialSpec]) -> None:
    """Raise :class:`FuseError` naming the first setting that differs between members but must be shared."""
    if not specs:
        raise FuseError("`fuse` needs at least one member trial, but got none")
    first = specs[0]
    methods = sorted({s.method for s in specs})
    if len(methods) > 1:
        raise FuseError(f"fused trials must share `method`, but the members have method={', '.join(methods)}")
    if get_method(first.method).loss_draws_random:
        raise FuseError(f"method {first.method} cannot be fused: its loss draws random numbers, which "
                        "torch.func.vmap does not allow per member; run it without --fuse")
    train = first.train
    if train.compile:
        raise FuseError("`compile` must be false in a fused trial (torch.compile of vmap is not supported), "
                        "but got compile=True")
    if train.amp == "fp16":
        raise FuseError("`amp` must be off or bf16 in a fused trial (no per-member loss scaling), but got amp=fp16")
    own = per_member_fields(first.method)
    base = first.flat()
    for spec in specs[1:]:
        flat = spec.flat()
        for key in base:
            if key not in own and flat.get(key) != base[key]:
                raise FuseError(f"fused trials must share `{key}` (members may differ only in "
                                f"{', '.join(sorted(own))}), but got {key}={base[key]!r} and {key}={flat.get(key)!r}")


def _tensor_names(module: nn.Module) -> tuple[dict[str, str], dict[str, str]]:
    """``{name: canonical name}`` of every parameter and buffer, shared tensors mapped to their first name."""
    out: list[dict[str, str]] = []
    for named in (module.named_parameters, module.named_buffers):
        first: dict[int, str] = {}
        names: dict[str, str] = {}
        for name, t in named(remove_duplicate=False):
            names[name] = first.setdefault(id(t), name)
        out.append(names)
    return out[0], out[1]


def _set_tensor(module: nn.Module, name: str, value: Tensor, *, parameter: bool) -> None:
    owner, _, leaf = name.rpartition(".")
    sub = module.get_submodule(owner) if owner else module
    if parameter:
        sub._parameters[leaf] = nn.Parameter(value, requires_grad=False)
    else:
        sub._buffers[leaf] = value


class FusedOptimizer:
    """SGD, LARS or Adam of ``trainables.optim`` on stacked ``[K, ...]`` parameters, with per-member ``lr``,
    ``momentum`` and ``weight_decay`` (``[K]`` vectors).

    Each update is the unfused optimiser's, row by row: SGD ``b <- m b + (g + wd w)``, ``w <- w - lr b`` (every
    parameter decayed); LARS the same with ``g`` scaled by ``eta ||w_k|| / ||g_k||`` per member and tensor (1-d
    tensors: no decay, no trust ratio); Adam (betas 0.9, 0.999, eps 1e-8, L2 decay of >= 2-d tensors)."""

    def __init__(self, params: dict[str, Tensor], trains: Sequence[TrainConfig], *, member_ndim: dict[str, int],
                 eta: float = 0.001) -> None:
        self.kind = trains[0].optimizer
        self.params = params
        device = next(iter(params.values())).device
        self.momentum = torch.tensor([t.momentum for t in trains], device=device)
        self.weight_decay = torch.tensor([t.weight_decay for t in trains], device=device)
        self.eta = eta
        self.member_ndim = member_ndim
        self.state: dict[str, dict[str, Tensor]] = {}
        self.steps = 0

    @staticmethod
    def _col(v: Tensor, like: Tensor) -> Tensor:
        return v.view(-1, *([1] * (like.dim() - 1)))

    @torch.no_grad()
    def step(self, lr: Tensor) -> None:
        """One update with per-member learning rates ``lr [K]``."""
        self.steps += 1
        for name, p in self.params.items():
            if p.grad is None:
                continue
            g, col = p.grad, lambda v: self._col(v, p)  # noqa: B023
            decayed = self.kind == "sgd" or self.member_ndim[name] > 1
            if decayed:
                g = g + col(self.weight_decay) * p
            state = self.state.setdefault(name, {})
            if self.kind == "adam":
                b1, b2, eps = 0.9, 0.999, 1e-8
                m = state.setdefault("exp_avg", torch.zeros_like(p))
                v = state.setdefault("exp_avg_sq", torch.zeros_like(p))
                m.lerp_(g, 1 - b1)
                v.mul_(b2).addcmul_(g, g, value=1 - b2)
                step_size = (lr / (1 - b1**self.steps)).to(p.dtype)
                denom = (v.sqrt() / (1 - b2**self.steps) ** 0.5).add_(eps)
                p.add_(m / denom * col(-step_size))
                continue
            if self.kind == "lars" and decayed:
                dims = tuple(range(1, p.dim()))
                w_norm, g_norm = torch.linalg.vector_norm(p, dim=dims), torch.linalg.vector_norm(g, dim=dims)
                trust = torch.where((w_norm > 0) & (g_norm > 0), self.eta * w_norm / g_norm, torch.ones_like(w_norm))
                g = g * col(trust)
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = g.clone()
            else:
                buf.mul_(col(self.momentum)).add_(g)
            p.sub_(col(lr.to(p.dtype)) * buf)

    def zero_grad(self) -> None:
        for p in self.params.values():
            p.grad = None

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "state": {n: {k: v.clone() for k, v in s.items()} for n, s in self.state.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.steps = state["steps"]
        self.state = {n: {k: v.clone() for k, v in s.items()} for n, s in state["state"].items()}

    def keep(self, rows: Tensor) -> None:
        """Keep only members ``rows`` (after :meth:`FusedRun.drop`)."""
        self.momentum, self.weight_decay = self.momentum[rows], self.weight_decay[rows]
        self.state = {n: {k: v[rows] for k, v in s.items()} for n, s in self.state.items()}


class _LossCall(nn.Module):
    """The module ``functional_call`` swaps the stacked tensors into: forwards to ``method.loss(model, ...)``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, method: Method, views: list[Tensor], batch: Batch, step: int) -> tuple[Tensor, dict]:
        return method.loss(self.model, views, batch, step=step)


class FusedRun:
    """K member trials trained as one (see the module docstring). ``members[k]`` is member k's ``trainables.loop``
    run (spec, method, its own module aliasing row k of the stacks, progress, generator)."""

    def __init__(self, specs: Sequence[TrialSpec], *, data: ImageData | None = None,
                 device: torch.device | None = None, resume_state: dict[str, Any] | None = None) -> None:
        check_fusable(specs)
        train = specs[0].train
        device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if train.num_threads:
            torch.set_num_threads(train.num_threads)
        if train.deterministic:
            torch.use_deterministic_algorithms(True, warn_only=True)
        amp = precision(train, device)
        self.autocast_dtype = torch.bfloat16 if amp == "bf16" else None
        self.channels_last = memory_format(train, device) == "channels_last"
        self.device = device
        self.data = data = data or load_data(train)
        for spec in specs:
            check_data(spec, data)
        self.shape = shape = RunShape.of(train, num_samples=len(data.train))
        self.members: list[Run] = []
        for spec in specs:
            seed_everything(spec.train.seed)  # as fit: the seed, then the method builds (initialises) its model
            method = get_method(spec.method)(spec.method_config, train=spec.train, data=data)
            method.setup(shape)
            model = method.build().to(device)
            self.members.append(Run(spec, data, device, method, model, model, None, None, None, self.channels_last,
                                    shape, train.batch_size, spec.train.scaled_lr(), Progress(),
                                    torch.Generator(device=device), 0))
        self._call = _LossCall(copy.deepcopy(self.members[0].model))
        self._param_names, self._buffer_names = _tensor_names(self._call.model)
        template = dict(self._call.model.named_parameters())
        self.params = {n: torch.stack([dict(m.model.named_parameters())[n].detach() for m in self.members])
                       .requires_grad_(template[n].requires_grad) for n in template}
        self.buffers = {n: torch.stack([dict(m.model.named_buffers())[n] for m in self.members])
                        for n in dict(self._call.model.named_buffers())}
        self.optimizer = FusedOptimizer({n: p for n, p in self.params.items() if p.requires_grad},
                                        [m.spec.train for m in self.members],
                                        member_ndim={n: t.dim() for n, t in template.items()})
        own = per_member_fields(specs[0].method) - TRAIN_PER_MEMBER
        self._scalar_fields = sorted(f for f in own if len({getattr(s.method_config, f) for s in specs}) > 1)
        # TrainConfig numbers that differ reach the loss per member too (a loss reading member 0's would be wrong)
        self._train_fields = sorted(f for f in TRAIN_PER_MEMBER if len({getattr(s.train, f) for s in specs}) > 1
                                    and isinstance(getattr(train, f), (int, float))
                                    and not isinstance(getattr(train, f), bool))
        self._bind()
        self.step = 0
        self.memory = MemoryGuard(None)  # fit_fused's guard of the worker's memory limit
        self.diverged: dict[int, str] = {}  # member index -> its error, since its loss was first non-finite
        if resume_state is not None:
            self._restore(resume_state)

    # -- stacks <-> members ----------------------------------------------------------------------------------------------
    def _bind(self) -> None:
        """Point every member module's parameters and buffers at row k of the stacks."""
        for k, m in enumerate(self.members):
            for name, canon in self._param_names.items():
                _set_tensor(m.model, name, self.params[canon].detach()[k], parameter=True)
            for name, canon in self._buffer_names.items():
                _set_tensor(m.model, name, self.buffers[canon][k], parameter=False)
        self._scalars = {f: torch.tensor([getattr(m.method.config, f) for m in self.members], dtype=torch.float32,
                                         device=self.device) for f in self._scalar_fields}
        self._train_scalars = {f: torch.tensor([getattr(m.spec.train, f) for m in self.members], device=self.device)
                               for f in self._train_fields}

    def drop(self, members: Sequence[int]) -> None:
        """Remove members (indices into :attr:`members`) from the fused model; the rest train on unchanged."""
        gone = set(members)
        keep = [k for k in range(len(self.members)) if k not in gone]
        if not keep:
            raise ValueError("`members` must leave at least one member, but would drop all of them")
        self.diverged = {keep.index(i): e for i, e in self.diverged.items() if i in keep}
        rows = torch.tensor(keep, device=self.device)
        self.params = {n: p.detach()[rows].requires_grad_(p.requires_grad) for n, p in self.params.items()}
        self.buffers = {n: b[rows] for n, b in self.buffers.items()}
        self.optimizer.params = {n: p for n, p in self.params.items() if p.requires_grad}
        self.optimizer.keep(rows)
        self.members = [self.members[k] for k in keep]
        self._bind()

    # -- training --------------------------------------------------------------------------------------------------------
    def _method_with(self, scalars: dict[str, Tensor], train_scalars: dict[str, Tensor]) -> Method:
        """A shallow copy of member 0's method whose config (and TrainConfig) hold ``scalars`` (``train_scalars``):
        vmap's per-member 0-dim tensors of the settings that differ between members."""
        method = copy.copy(self.members[0].method)
        for attr, values in (("config", scalars), ("train", train_scalars)):
            if values:
                config = copy.copy(getattr(method, attr))
                for name, value in values.items():
                    object.__setattr__(config, name, value)
                setattr(method, attr, config)
        return method

    def _losses(self, views: list[Tensor], images: Tensor, labels: Tensor, indices: Tensor
                ) -> tuple[Tensor, dict[str, Tensor], dict[str, Tensor]]:
        """Every member's loss ``[K]``, logs ``{name: [K]}`` and what the loss stashed on the method ``{attr: [K, ...]}``."""
        step = self.step

        def one(params, buffers, scalars, train_scalars, views, images, labels, indices):
            method = self._method_with(scalars, train_scalars)
            before = dict(vars(method))
            loss, logs = torch.func.functional_call(self._call, (params, buffers),
                                                    (method, views, Batch(images, labels, indices), step))
            stash = {k: v for k, v in vars(method).items() if isinstance(v, Tensor) and before.get(k) is not v}
            return loss, {k: torch.as_tensor(v, dtype=torch.float32) for k, v in logs.items()}, stash

        params = {f"model.{n}": p for n, p in self.params.items()}
        buffers = {f"model.{n}": b for n, b in self.buffers.items()}
        try:
            return torch.func.vmap(one, randomness="error")(params, buffers, self._scalars, self._train_scalars, views,
                                                            images, labels, indices)
        except (RuntimeError, TypeError, ValueError) as e:
            per_member = self._scalar_fields + self._train_fields
            if not ("vmap" in str(e) or (per_member and not isinstance(e, RuntimeError))):
                raise
            differ = ", ".join(self._scalar_fields + self._train_fields) or "(none)"
            raise FuseError(f"method {self.members[0].spec.method} cannot be fused: its loss does not run under "
                            f"torch.func.vmap (settings given per member: {differ}): {e}") from e

    def _lrs(self) -> Tensor:
        return torch.tensor([m.lr(self.step) for m in self.members], dtype=torch.float64, device=self.device)

    def _clip(self) -> None:
        clip = torch.tensor([m.spec.train.grad_clip for m in self.members], device=self.device)
        if not clip.any():
            return
        grads = [p.grad for p in self.optimizer.params.values() if p.grad is not None]
        norms = torch.stack([torch.linalg.vector_norm(g.flatten(1), dim=1) for g in grads], dim=1)  # [K, tensors]
        coef = (clip / (torch.linalg.vector_norm(norms, dim=1) + 1e-6)).clamp(max=1.0)
        coef = torch.where(clip > 0, coef, torch.ones_like(coef))
        for g in grads:
            g.mul_(FusedOptimizer._col(coef, g))

    def train_step(self, batches: Sequence[Batch], *, epoch: int = 0) -> tuple[Tensor, dict[str, Tensor]]:
        """One fused optimiser step on member k's ``batches[k]`` (views drawn from member k's generator); returns the
        losses ``[K]`` and logs ``{name: [K]}`` (detached)."""
        k = len(self.members)
        with torch.no_grad():
            member_views = [m.method.views(b.images, m.generator) for m, b in zip(self.members, batches)]
            views = [torch.stack(vs) for vs in zip(*member_views)]
            if self.channels_last:
                views = [v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 else v for v in views]
        stacked = [torch.stack([getattr(b, f) for b in batches]) for f in ("images", "labels", "indices")]
        autocast = (torch.autocast(self.device.type, dtype=self.autocast_dtype) if self.autocast_dtype
                    else torch.autocast(self.device.type, enabled=False))
        with autocast:
            losses, logs, stash = self._losses(views, *stacked)
        for i in range(k):
            if i not in self.diverged and not torch.isfinite(losses[i]):
                self.diverged[i] = (f"FloatingPointError: loss is {losses[i].item()} at epoch {epoch}, step "
                                    f"{self.step}: the trial diverged (lower lr or temperature)")
        if len(self.diverged) == k:
            raise FloatingPointError(self.diverged[0].removeprefix("FloatingPointError: "))
        self.optimizer.zero_grad()
        # a diverged member trains on (its rows of the stacks alone turn non-finite) until the epoch ends and
        # fit_fused drops it; the others' gradients never mix with its
        losses.sum().backward()
        self._clip()
        self.optimizer.step(self._lrs())
        self.step += 1
        for i, m in enumerate(self.members):
            for attr, value in stash.items():
                setattr(m.method, attr, value[i])
            m.progress.step = self.step
            m.method.after_step(m.model, step=self.step)
        return losses.detach().float(), {name: v.detach().float() for name, v in logs.items()}

    def train_epoch(self, epoch: int) -> list[dict[str, Any]]:
        """One epoch of fused optimiser steps; returns each member's training metrics (as ``fit`` reports them)."""
        data, k = self.data, len(self.members)
        seeds = [m.spec.train.seed for m in self.members]
        for m in self.members:  # fit's per-epoch seeding of the augmentation generator (rank 0)
            m.generator.manual_seed(int(np.random.SeedSequence([m.spec.train.seed, epoch, 0]).generate_state(1)[0]))
        per_seed = {s: read_batches(data.train.images, data.train.labels,
                                    epoch_order(len(data.train), s, epoch, self.members[0].per_worker),
                                    self.members[0].per_worker, self.device) for s in dict.fromkeys(seeds)}
        loss_sum = torch.zeros(k, device=self.device)
        log_sums: dict[str, Tensor] = {}
        t0 = time.perf_counter()
        for step_batches in zip(*per_seed.values()):
            by_seed = dict(zip(per_seed, step_batches))
            losses, logs = self.train_step([by_seed[s] for s in seeds], epoch=epoch)
            self.memory.check(f"epoch {epoch}, step {self.step}")
            loss_sum += losses
            for name, v in logs.items():
                log_sums[name] = log_sums.get(name, 0.0) + v
        train_time = time.perf_counter() - t0
        steps = self.shape.steps_per_epoch
        return [{"train_loss": (loss_sum[i] / steps).item(),
                 **{name: (v[i] / steps).item() for name, v in log_sums.items()},
                 "current_lr": m.lr(self.step - 1),
                 "epoch_time_s": train_time,
                 "images_per_s": steps * m.spec.train.batch_size / train_time,
                 "peak_mem_mb": peak_mem_mb(self.device),
                 "fused_members": k}
                for i, m in enumerate(self.members)]

    def report(self, epoch: int, trained: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Each member's report of ``epoch`` (its own kNN monitor, probes at the end, bests), as ``fit`` makes it; a
        diverged member's is its training metrics and ``error``, unevaluated."""
        out = []
        for i, (m, t) in enumerate(zip(self.members, trained)):
            m.progress.epoch = epoch
            out.append({"epoch": epoch, **t, "error": self.diverged[i]} if i in self.diverged
                       else epoch_report(m, epoch, t))
        return out

    # -- checkpoints -----------------------------------------------------------------------------------------------------
    def state(self) -> dict[str, Any]:
        """Everything a resume of the surviving members needs (stacks, optimiser, methods, progress, RNG)."""
        return {
            "version": FUSED_CHECKPOINT_VERSION,
            "specs": [m.spec.flat() for m in self.members],
            "params": {n: p.detach().clone() for n, p in self.params.items()},
            "buffers": {n: b.clone() for n, b in self.buffers.items()},
            "optimizer": self.optimizer.state_dict(),
            "methods": [m.method.state_dict() for m in self.members],
            "progress": [{"epoch": m.progress.epoch, "step": m.progress.step, "best": dict(m.progress.best)}
                         for m in self.members],
            "step": self.step,
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state()},
        }

    def _restore(self, state: dict[str, Any]) -> None:
        if state.get("version") != FUSED_CHECKPOINT_VERSION:
            raise ValueError(f"fused checkpoint version {state.get('version')!r} is not {FUSED_CHECKPOINT_VERSION}")
        if len(state["specs"]) != len(self.members):
            raise ValueError(f"the checkpoint holds {len(state['specs'])} members, but {len(self.members)} were given")
        for k, (saved, m) in enumerate(zip(state["specs"], self.members)):
            changed = changed_fields(saved, m.spec)
            if changed:
                raise ValueError(f"member {k} of the checkpoint was written by a different configuration "
                                 f"(fields {', '.join(changed)})")
        with torch.no_grad():
            for n, p in self.params.items():
                p.copy_(state["params"][n])
            for n, b in self.buffers.items():
                b.copy_(state["buffers"][n])
        self.optimizer.load_state_dict(state["optimizer"])
        for m, s, p in zip(self.members, state["methods"], state["progress"]):
            m.method.load_state_dict(s)
            m.progress.epoch, m.progress.step, m.progress.best = p["epoch"], p["step"], dict(p["best"])
        self.step = state["step"]
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])

    @property
    def epoch(self) -> int:
        return self.members[0].progress.epoch


def fit_fused(
    specs: Sequence[TrialSpec],
    *,
    prune: Callable[[list[dict[str, Any]]], Sequence[int]] | None = None,
    report: Callable[[list[dict[str, Any]], Callable[[], dict[str, Any]]], None] | None = None,
    resume_state: dict[str, Any] | None = None,
    data: ImageData | None = None,
    device: torch.device | None = None,
    stop_after_epoch: int | None = None,
    memory_limit_mb: float | None = None,
) -> list[dict[str, Any]]:
    """Train the members of ``specs`` fused; returns each member's last metrics (in the order of ``specs``; a dropped
    member's are its last report's). ``memory_limit_mb``: as ``trainables.loop.fit``'s, for the fused process.

    Every epoch, the surviving members' reports (each with ``member``, its index in ``specs``) go first to
    ``prune(metrics)``, which may return members (indices into ``specs``) to drop: early stopping per member, the
    others go on (a drop at the last epoch changes nothing). A member whose loss turned non-finite is dropped at the
    end of that epoch with its ``error`` (``FloatingPointError: ...``), unevaluated; only when every member diverged
    does the run raise. Then ``report(metrics, state)`` gets the reports (dropped ones marked ``dropped: True``) and
    ``state()``, which builds the fused checkpoint state of the survivors (``member_ids``: their indices; ``{}`` when
    none is left). ``resume_state`` is such a state; ``specs`` are then still all the members, dropped ones included.
    """
    ids = list(range(len(specs)))
    if resume_state is not None:
        ids = [int(i) for i in resume_state.get("member_ids", ids)]
    with MemoryGuard(memory_limit_mb) as guard:
        run = FusedRun([specs[i] for i in ids], data=data, device=device, resume_state=resume_state)
        run.memory = guard
        return _fused_epochs(run, specs, ids, prune=prune, report=report, stop_after_epoch=stop_after_epoch)


def _fused_epochs(run: FusedRun, specs: Sequence[TrialSpec], ids: list[int], *, prune, report,
                  stop_after_epoch: int | None) -> list[dict[str, Any]]:
    last: dict[int, dict[str, Any]] = {}
    for epoch in range(run.epoch + 1, specs[0].train.epochs + 1):
        metrics = run.report(epoch, run.train_epoch(epoch))
        run.memory.check(f"epoch {epoch}'s evaluation")
        for i, mtr in zip(ids, metrics):
            mtr["member"] = i
            last[i] = mtr
        stop = set(prune(metrics) or ()) & set(ids) if prune is not None and epoch < specs[0].train.epochs else set()
        stop |= {ids[i] for i in run.diverged}
        if stop and stop != set(ids):
            run.drop([ids.index(i) for i in stop])
        for mtr in metrics:
            if mtr["member"] in stop:
                mtr["dropped"] = True
        ids = [i for i in ids if i not in stop]
        if report is not None:
            report(metrics, lambda ids=tuple(ids): {**run.state(), "member_ids": list(ids)} if ids else {})
        if not ids or stop_after_epoch is not None and epoch >= stop_after_epoch:
            break
    return [last[i] for i in sorted(last)]
