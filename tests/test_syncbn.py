"""GlobalBatchNorm over two gloo workers equals plain BatchNorm over the union of their batches."""

from __future__ import annotations

from pathlib import Path

import torch
from ddp_helpers import run_workers
from torch import nn

from trainables.nets.syncbn import GlobalBatchNorm, convert_sync_batchnorm

WORLD, N, C = 2, 6, 3


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(N * WORLD, C, 4, 4, generator=g, dtype=torch.float64) * 3 + 1, \
        torch.randn(N * WORLD, C, 4, 4, generator=g, dtype=torch.float64)


def make_bn() -> nn.Module:
    bn = nn.BatchNorm2d(C).double()
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, 2.0, 0.5]))
        bn.bias.copy_(torch.tensor([0.0, -1.0, 0.3]))
    return bn


def worker(rank: int) -> dict:
    x, w = batch()
    rows = slice(rank * N, (rank + 1) * N)
    local = x[rows].clone().requires_grad_()
    bn = convert_sync_batchnorm(nn.Sequential(make_bn()), torch.device("cpu"))
    assert isinstance(bn[0], GlobalBatchNorm)
    y = bn(local)
    (y * w[rows]).sum().backward()  # the sum over ranks of these losses is the single-process loss
    return {"y": y.detach(), "grad_x": local.grad, "grad_w": bn[0].weight.grad,
            "running_mean": bn[0].running_mean, "running_var": bn[0].running_var}


def test_global_batchnorm_matches_single_process(tmp_path: Path) -> None:
    parts = run_workers(worker, tmp_path=tmp_path, world_size=WORLD)
    x, w = batch()
    x.requires_grad_()
    bn = make_bn()
    y = bn(x)
    (y * w).sum().backward()
    torch.testing.assert_close(torch.cat([p["y"] for p in parts]), y.detach())
    torch.testing.assert_close(torch.cat([p["grad_x"] for p in parts]), x.grad)
    # each rank holds the gradient of its own loss; DDP would sum (average) them
    torch.testing.assert_close(parts[0]["grad_w"] + parts[1]["grad_w"], bn.weight.grad)
    for p in parts:
        torch.testing.assert_close(p["running_mean"], bn.running_mean)
        torch.testing.assert_close(p["running_var"], bn.running_var)


def test_global_batchnorm_is_plain_batchnorm_without_process_group() -> None:
    x, _ = batch()
    ref = make_bn()
    gbn = convert_sync_batchnorm(make_bn(), torch.device("cpu"))
    torch.testing.assert_close(gbn(x), ref(x))
    gbn.eval(), ref.eval()
    torch.testing.assert_close(gbn(x), ref(x))
