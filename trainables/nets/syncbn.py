"""Batch normalisation whose statistics span every DDP worker, on any device.

``torch.nn.SyncBatchNorm`` runs only on GPUs; :class:`GlobalBatchNorm` computes the same thing with one autograd-aware
``all_reduce`` of ``[sum, sum of squares, count]`` per layer, so it also synchronises CPU (gloo) workers.
:func:`convert_sync_batchnorm` picks the native layer on CUDA and this one elsewhere.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn
from torch import Tensor, nn

__all__ = ["GlobalBatchNorm", "convert_sync_batchnorm"]


class GlobalBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm over the union of every worker's batch (input [N, C] or [N, C, *]).

    ``mean = sum_r S1_r / n``, ``var = sum_r S2_r / n - mean^2`` with ``n = sum_r N_r``; the running variance is
    updated with the unbiased ``var * n / (n - 1)``, as BatchNorm does. Gradients flow through the reduction.
    """

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected an input of at least 2 dimensions [N, C, ...], got shape {tuple(x.shape)}")

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return super().forward(x)
        self._check_input_dim(x)
        dims = [0, *range(2, x.dim())]
        xf = x if x.dtype == torch.float64 else x.float()  # statistics in at least float32
        count = torch.tensor([xf.numel() / xf.shape[1]], device=x.device, dtype=torch.float32)
        stats = torch.cat([xf.sum(dims), (xf * xf).sum(dims), count])
        with warnings.catch_warnings():  # the public autograd-aware collective is flagged deprecated in torch 2.14
            warnings.filterwarnings("ignore", message=r".*all_reduce is deprecated", category=FutureWarning)
            stats = dist_fn.all_reduce(stats)  # autograd-aware: gradients of the global statistics reach every worker
        c = x.shape[1]
        n = stats[-1]
        mean = stats[:c] / n
        var = (stats[c:2 * c] / n - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                m = self.momentum if self.momentum is not None else 0.1
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), m)
                self.running_var.lerp_((var * n / (n - 1).clamp_min(1)).to(self.running_var.dtype), m)
                self.num_batches_tracked += 1
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(x.dtype)


def convert_sync_batchnorm(module: nn.Module, device: torch.device) -> nn.Module:
    """Replace every BatchNorm layer with a synchronised one: ``nn.SyncBatchNorm`` on CUDA, GlobalBatchNorm
    elsewhere. Parameters and running statistics are carried over."""
    if device.type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        new = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
        reference = next(iter(module.state_dict().values()), None)
        if reference is not None and reference.is_floating_point():
            new.to(device=reference.device, dtype=reference.dtype)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new
    for name, child in module.named_children():
        module.add_module(name, convert_sync_batchnorm(child, device))
    return module
