"""Building blocks of methods with state: a momentum (EMA) target, its schedule, a feature queue and a memory bank.

None of them receives gradients: their tensors are buffers (or parameters with ``requires_grad=False``), updated
under ``torch.no_grad``, and saved with the model's ``state_dict`` so checkpoints hold them.

Under DDP every worker must hold equal copies. A method passes ``enqueue``/``update`` the keys, indices and features
already gathered over all workers (``trainables.distributed.gather``), so every worker applies the same global update
and the copies stay equal without broadcasting the (large) buffers.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn

from trainables.schedules import cosine_decay

__all__ = ["FeatureQueue", "MemoryBank", "MomentumTarget", "cosine_momentum"]


def cosine_momentum(step: int, total_steps: int, start: float, end: float = 1.0) -> float:
    """BYOL's momentum schedule, a pure function of the step::

        m_k = end - (end - start) * (cos(pi * k / K) + 1) / 2,   K = total_steps,   m_k = end for k >= K
    """
    return end - (end - start) * cosine_decay(step, total_steps)


class MomentumTarget(nn.Module):
    """A frozen copy of an online module, moved towards it by EMA: ``forward`` runs the copy (``self.module``).

    ``update(online, m)``: ``theta_target <- m * theta_target + (1 - m) * theta_online`` for every parameter (one
    ``torch._foreach_lerp_``); BatchNorm running statistics are the target's own, updated by its forward passes.
    ``copy_from(online)``: the target becomes an exact copy (parameters and buffers).
    """

    def __init__(self, online: nn.Module) -> None:
        super().__init__()
        self.module = copy.deepcopy(online).requires_grad_(False)

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    @torch.no_grad()
    def update(self, online: nn.Module, momentum: float) -> None:
        """``target <- momentum * target + (1 - momentum) * online``, parameters only."""
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"`0 <= momentum <= 1` must hold, but got momentum={momentum!r}")
        target, source = list(self.module.parameters()), list(online.parameters())
        if len(target) != len(source):
            raise ValueError(f"`online` must have the target's {len(target)} parameters, but has {len(source)}")
        torch._foreach_lerp_(target, source, 1.0 - momentum)

    @torch.no_grad()
    def copy_from(self, online: nn.Module) -> None:
        """Make the target an exact copy of ``online`` (parameters and buffers)."""
        self.module.load_state_dict(online.state_dict())


class FeatureQueue(nn.Module):
    """FIFO queue of the last ``size`` keys ``[size, dim]`` (MoCo, SCE), as buffers ``features`` and ``ptr``.

    Starts with L2-normalised Gaussian rows drawn from ``seed`` (equal on every worker). ``enqueue(keys [K, dim])``
    overwrites rows ``ptr, ..., ptr + K - 1`` modulo ``size`` (wrapping around) and advances ``ptr`` by ``K``.
    """

    features: Tensor
    ptr: Tensor

    def __init__(self, size: int, dim: int, *, seed: int = 0) -> None:
        super().__init__()
        if size < 1 or dim < 1:
            raise ValueError(f"`size >= 1` and `dim >= 1` must hold, but got size={size!r}, dim={dim!r}")
        init = torch.randn(size, dim, generator=torch.Generator().manual_seed(seed))
        self.register_buffer("features", nn.functional.normalize(init, dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    @property
    def size(self) -> int:
        return self.features.shape[0]

    @torch.no_grad()
    def enqueue(self, keys: Tensor) -> None:
        """Append ``keys [K, dim]`` (the keys of the global batch, gathered over all workers), ``K <= size``."""
        if keys.ndim != 2 or keys.shape[1] != self.features.shape[1] or keys.shape[0] > self.size:
            raise ValueError(f"`keys` must have shape [K <= {self.size}, {self.features.shape[1]}], but got shape "
                             f"{tuple(keys.shape)}")
        rows = (self.ptr + torch.arange(keys.shape[0], device=self.ptr.device)) % self.size
        self.features.index_copy_(0, rows.to(self.features.device), keys.detach().to(self.features.dtype))
        self.ptr.copy_((self.ptr + keys.shape[0]) % self.size)

    def forward(self) -> Tensor:
        """The queue's rows ``[size, dim]``, without gradient (their order is irrelevant to a contrastive loss)."""
        return self.features.detach()


class MemoryBank(nn.Module):
    """One ``dim``-vector per training sample (CMC, instance discrimination), as the buffer ``memory [n, dim]``.

    Initialised uniform in ``[-s, s]``, ``s = 1 / sqrt(dim / 3)``, from ``seed`` (equal on every worker), as the CMC
    reference. ``update(indices, features)`` applies, for each sample ``i`` of the global batch (distinct indices)::

        m_i <- normalize(momentum * m_i + (1 - momentum) * f_i)
    """

    memory: Tensor

    def __init__(self, n: int, dim: int, momentum: float = 0.5, *, seed: int = 0) -> None:
        super().__init__()
        if n < 1 or dim < 1:
            raise ValueError(f"`n >= 1` and `dim >= 1` must hold, but got n={n!r}, dim={dim!r}")
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"`0 <= momentum <= 1` must hold, but got momentum={momentum!r}")
        self.momentum = float(momentum)
        s = 1.0 / math.sqrt(dim / 3)
        init = torch.rand(n, dim, generator=torch.Generator().manual_seed(seed)) * (2 * s) - s
        self.register_buffer("memory", init)

    @torch.no_grad()
    def update(self, indices: Tensor, features: Tensor) -> None:
        """``indices [B]`` (int64 dataset rows) and ``features [B, dim]`` of the global batch (gathered)."""
        if indices.ndim != 1 or features.shape != (indices.shape[0], self.memory.shape[1]):
            raise ValueError(f"`indices` [B] and `features` [B, {self.memory.shape[1]}] must hold, but got shapes "
                             f"{tuple(indices.shape)} and {tuple(features.shape)}")
        idx = indices.to(self.memory.device)
        mixed = torch.lerp(features.detach().to(self.memory.dtype), self.memory[idx], self.momentum)
        self.memory.index_copy_(0, idx, nn.functional.normalize(mixed, dim=1))

    @torch.no_grad()
    def sample_negatives(self, batch_size: int, k: int, *, generator: torch.Generator | None = None) -> Tensor:
        """``[batch_size, k, dim]`` rows drawn uniformly (with replacement) from the bank, as CMC's NCE negatives."""
        if k < 1 or batch_size < 1:
            raise ValueError(f"`batch_size >= 1` and `k >= 1` must hold, but got batch_size={batch_size!r}, k={k!r}")
        idx = torch.randint(self.memory.shape[0], (batch_size, k), generator=generator, device=self.memory.device)
        return self.memory[idx]
