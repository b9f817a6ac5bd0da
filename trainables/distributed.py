"""Rank helpers and an all-gather with gradient; without an initialised process group they act as a single process.

In-batch losses gather the projections of every rank (:func:`gather_with_grad`) so that negatives come from the
global batch, and each rank computes the loss of its own anchors (:func:`local_rows`). The backward of the gather
sums, into each rank's slice, the gradients every rank computed for it; DDP then averages the parameter gradients
over the ranks, which gives exactly the gradient of the mean of the per-rank losses, i.e. of the global loss.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["all_reduce_max", "all_reduce_mean", "gather", "gather_with_grad", "local_rows", "rank", "world_size"]


def _initialised() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    """Number of processes in the default group; 1 without an initialised process group."""
    return dist.get_world_size() if _initialised() else 1


def rank() -> int:
    """This process's rank in the default group; 0 without an initialised process group."""
    return dist.get_rank() if _initialised() else 0


def gather_with_grad(t: Tensor) -> Tensor:
    """Concatenate ``t`` from every rank along dim 0, keeping the gradient to each rank's own slice.

    ``t`` is ``[n, ...]`` with the same shape on every rank (drop the last incomplete batch); the result is
    ``[world_size * n, ...]`` in rank order, so this rank's rows are ``local_rows(n)``. Returns ``t`` itself when the
    world size is 1.
    """
    if world_size() == 1:
        return t
    from torch.distributed.nn.functional import all_gather

    # Recent torch releases flag this autograd-aware collective as deprecated in favour of a private module's
    # equivalent; it remains the public one, so silence the warning here only.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*nn\.functional\.all_gather is deprecated", category=FutureWarning)
        parts = all_gather(t)
    return _ContiguousGrad.apply(torch.cat(parts, dim=0))


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the incoming gradient contiguous.

    Losses often reach the gathered tensor through a transpose, so its gradient arrives with permuted strides. On
    backends without reduce-scatter (gloo), the all-gather's backward receives into ``empty_like`` buffers of that
    gradient, and gloo's scatter fills non-contiguous buffers in the wrong order, silently scrambling the gradient
    (pytorch/pytorch#192920, torch 2.14). A contiguous gradient keeps the buffers contiguous.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        return grad.contiguous()


def local_rows(n_local: int) -> slice:
    """This rank's rows ``[rank * n_local, (rank + 1) * n_local)`` in the output of :func:`gather_with_grad`."""
    if n_local < 0:
        raise ValueError(f"`n_local >= 0` must hold, but got n_local={n_local!r}")
    start = rank() * n_local
    return slice(start, start + n_local)


def all_reduce_mean(t: Tensor) -> Tensor:
    """Mean of ``t`` over the ranks, for metrics: a new detached tensor (integers become float); ``t`` is untouched.

    Every rank must call it with a tensor of the same shape, on the device its backend supports.
    """
    out = t.detach().clone() if t.is_floating_point() else t.detach().float()
    if world_size() > 1:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        out /= world_size()
    return out


def all_reduce_max(t: Tensor) -> Tensor:
    """Maximum of ``t`` over the ranks (a new detached tensor), e.g. the peak memory of the busiest worker."""
    out = t.detach().clone()
    if world_size() > 1:
        dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return out


@torch.no_grad()
def gather(t: Tensor) -> Tensor:
    """Concatenate ``t`` from every rank along dim 0 without gradient (labels, evaluation features)."""
    if world_size() == 1:
        return t
    parts = [torch.empty_like(t) for _ in range(world_size())]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts, dim=0)
