"""gather_with_grad + supcon_loss over two gloo processes equal the single-process loss and gradient."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F
from ddp_helpers import run_workers

from trainables import distributed
from trainables.losses import supcon_loss

WORLD_SIZE = 2
BATCH, VIEWS, DIM = 8, 2, 6
TEMPERATURE = 0.2


def make_batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    features = F.normalize(torch.randn(BATCH, VIEWS, DIM, generator=generator, dtype=torch.float64), dim=-1)
    labels = torch.tensor([0, 1, 2, 0, 1, 3, 0, 2])  # classes span both ranks; class 3 has a single sample
    return features, labels


def transposed_weights(rank: int) -> torch.Tensor:
    """Per-rank weights ``[4, 3]`` with permuted strides."""
    return (torch.arange(12.0).view(3, 4) + 100 * (rank + 1)).T


def worker(rank: int) -> dict:
    features, labels = make_batch()
    n_local = BATCH // WORLD_SIZE
    rows = slice(rank * n_local, (rank + 1) * n_local)
    local = features[rows].clone().requires_grad_()
    gathered = distributed.gather_with_grad(local)
    gathered_labels = distributed.gather_with_grad(labels[rows])
    loss = supcon_loss(gathered, gathered_labels, temperature=TEMPERATURE, anchor_index=distributed.local_rows(n_local))
    # all_gather's backward sums every rank's gradient into the owner's slice; DDP then averages over ranks.
    loss.backward()

    # A gradient with permuted strides reaching the gather (gloo scrambled it: pytorch/pytorch#192920).
    probe = torch.zeros(2, 3, requires_grad=True)
    (distributed.gather_with_grad(probe) * transposed_weights(rank)).sum().backward()
    return {
        "world_size": distributed.world_size(),
        "rank": distributed.rank(),
        "local_rows": (distributed.local_rows(n_local).start, distributed.local_rows(n_local).stop),
        "gathered": gathered.detach(),
        "loss": loss.detach(),
        "grad": local.grad / WORLD_SIZE,
        "mean_rank": distributed.all_reduce_mean(torch.tensor(float(rank))),
        "probe_grad": probe.grad,
    }


def test_two_process_loss_and_gradient_match_single_process(tmp_path: Path) -> None:
    results = run_workers(worker, tmp_path=tmp_path, world_size=WORLD_SIZE)

    features, labels = make_batch()
    features.requires_grad_()
    expected_loss = supcon_loss(features, labels, temperature=TEMPERATURE)
    (expected_grad,) = torch.autograd.grad(expected_loss, features)

    n_local = BATCH // WORLD_SIZE
    for rank, result in enumerate(results):
        assert (result["world_size"], result["rank"]) == (WORLD_SIZE, rank)
        assert result["local_rows"] == (rank * n_local, (rank + 1) * n_local)
        torch.testing.assert_close(result["gathered"], features.detach())
        torch.testing.assert_close(result["grad"], expected_grad[rank * n_local : (rank + 1) * n_local])
        assert result["mean_rank"].item() == 0.5
        probe_rows = slice(2 * rank, 2 * rank + 2)
        expected_probe = sum(transposed_weights(r)[probe_rows] for r in range(WORLD_SIZE))
        torch.testing.assert_close(result["probe_grad"], expected_probe)
    torch.testing.assert_close(torch.stack([r["loss"] for r in results]).mean(), expected_loss.detach())


def test_helpers_without_process_group() -> None:
    assert not dist.is_initialized()
    assert distributed.world_size() == 1
    assert distributed.rank() == 0
    assert distributed.local_rows(5) == slice(0, 5)
    t = torch.randn(3, 2, requires_grad=True)
    assert distributed.gather_with_grad(t) is t
    metric = torch.tensor([1, 2])
    mean = distributed.all_reduce_mean(metric)
    assert mean.dtype == torch.float32 and mean.tolist() == [1.0, 2.0]
    reduced = distributed.all_reduce_mean(t)
    assert reduced is not t and not reduced.requires_grad
