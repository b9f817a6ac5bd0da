"""Optimisers (SGD, LARS, Adam) and the per-step learning-rate schedule (warm-up + cosine / step / constant)."""

from __future__ import annotations

import math

import torch
from torch import nn

from trainables.config import TrainConfig

__all__ = ["LARS", "build_optimizer", "lr_at"]


class LARS(torch.optim.Optimizer):
    """SGD with momentum and layer-wise trust ratio (You et al. 2017): the update of each parameter tensor ``w`` is
    scaled by ``eta * ||w|| / (||g|| + wd * ||w||)``. Groups with ``lars_exclude=True`` (biases, norms) get neither
    the trust ratio nor weight decay, as in SimCLR and SCE."""

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 0.001):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta,
                                      lars_exclude=False))

    @torch.no_grad()
    def step(self, closure=None):
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if not group["lars_exclude"]:
                    g = g.add(p, alpha=group["weight_decay"])
                    w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(g)
                    trust = torch.where((w_norm > 0) & (g_norm > 0), group["eta"] * w_norm / g_norm,
                                        torch.ones_like(w_norm))
                    g = g.mul(trust)
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = g.clone()
                else:
                    buf.mul_(group["momentum"]).add_(g)
                p.add_(buf, alpha=-group["lr"])
        return loss


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Weights in one group; biases and normalisation parameters (1-d tensors) in another, without weight decay
    under LARS and Adam."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0, "lars_exclude": True}]


def build_optimizer(model: nn.Module, train: TrainConfig) -> torch.optim.Optimizer:
    """The optimiser TrainConfig names. SGD decays every parameter, as the SupContrast reference does."""
    lr = train.scaled_lr()
    if train.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=train.momentum, weight_decay=train.weight_decay)
    if train.optimizer == "lars":
        return LARS(_param_groups(model, train.weight_decay), lr=lr, momentum=train.momentum)
    groups = _param_groups(model, train.weight_decay)
    for g in groups:
        g.pop("lars_exclude", None)
    return torch.optim.Adam(groups, lr=lr)  # L2 weight decay, as the sigmoid seed's Adam


def lr_at(step: int, train: TrainConfig, *, steps_per_epoch: int, total_steps: int, peak: float) -> float:
    """Learning rate of optimiser step ``step`` (0-based).

    Warm-up: linear from ``warmup_from`` to the schedule's value at the end of warm-up (SupContrast). Cosine:
    ``eta_min + (peak - eta_min) * (1 + cos(pi * t / T)) / 2`` with ``eta_min = peak * lr_decay_rate**3`` (the
    reference's choice). Step: ``peak * lr_decay_rate ** (number of lr_decay_epochs passed)``. ``warmup_epochs``
    must be a number: ``TrialSpec`` resolves ``"auto"`` with the method's rule.
    """
    if train.warmup_epochs == "auto":
        raise ValueError("`warmup_epochs` must be resolved to a number (TrialSpec.from_settings applies the method's "
                         "rule), but got warmup_epochs='auto'")
    def scheduled(s: int) -> float:
        if train.schedule == "constant":
            return peak
        if train.schedule == "step":
            epoch = s // steps_per_epoch
            return peak * train.lr_decay_rate ** sum(epoch >= e for e in train.lr_decay_epochs)
        eta_min = peak * train.lr_decay_rate**3
        return eta_min + (peak - eta_min) * (1 + math.cos(math.pi * s / max(1, total_steps))) / 2

    warm = int(round(train.warmup_epochs * steps_per_epoch))
    if step < warm:
        target = scheduled(warm)
        return train.warmup_from + (target - train.warmup_from) * step / warm
    return scheduled(step)
