"""nets.momentum: the EMA target and its schedule, the feature queue and the memory bank, on one process and over two
gloo workers (every worker applies the same global update, so all copies stay equal without a broadcast)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from ddp_helpers import run_workers
from torch import nn

from trainables import distributed
from trainables.nets import FeatureQueue, MemoryBank, MomentumTarget, cosine_momentum

WORLD, LOCAL, DIM, N_BANK, QUEUE = 2, 3, 4, 10, 8


# -- EMA target ----------------------------------------------------------------------------------------------------------
def online_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2))


def test_target_is_a_frozen_copy_that_no_gradient_reaches():
    online = online_net()
    target = MomentumTarget(online)
    assert all(not p.requires_grad for p in target.parameters())
    assert all(torch.equal(a, b) for a, b in zip(online.state_dict().values(), target.module.state_dict().values()))
    x = torch.randn(5, 4)
    (online(x).sum() + target(x).sum()).backward()
    assert all(p.grad is None for p in target.parameters())
    assert all(p.grad is not None for p in online.parameters())


@pytest.mark.parametrize("m", [0.0, 0.9, 1.0])
def test_update_matches_the_formula_and_copy_from_copies_buffers(m):
    online = online_net()
    target = MomentumTarget(online)
    with torch.no_grad():
        for p in online.parameters():
            p.add_(torch.randn_like(p))
        online[1].running_mean.fill_(3.0)
    before = [p.clone() for p in target.parameters()]
    target.update(online, m)
    for t, b, o in zip(target.parameters(), before, online.parameters()):
        torch.testing.assert_close(t, m * b + (1 - m) * o)
    assert torch.equal(target.module[1].running_mean, torch.zeros(6))  # statistics are the target's own
    target.copy_from(online)
    assert all(torch.equal(a, b) for a, b in zip(online.state_dict().values(), target.module.state_dict().values()))
    with pytest.raises(ValueError, match="0 <= momentum <= 1"):
        target.update(online, 1.5)


def test_cosine_momentum():
    assert cosine_momentum(0, 100, 0.99) == pytest.approx(0.99)
    assert cosine_momentum(50, 100, 0.99) == pytest.approx(0.995)
    assert cosine_momentum(100, 100, 0.99) == cosine_momentum(300, 100, 0.99) == pytest.approx(1.0)
    assert cosine_momentum(25, 100, 0.5, 0.7) == pytest.approx(0.7 - 0.2 * (math.cos(math.pi / 4) + 1) / 2)
    values = [cosine_momentum(k, 20, 0.9) for k in range(21)]
    assert values == sorted(values)
    with pytest.raises(ValueError, match="total_steps >= 1"):
        cosine_momentum(1, 0, 0.9)
    with pytest.raises(ValueError, match="step >= 0"):
        cosine_momentum(-1, 10, 0.9)


# -- queue -----------------------------------------------------------------------------------------------------------------
def test_queue_wraps_around_and_round_trips_through_a_checkpoint():
    queue = FeatureQueue(5, 3, seed=1)
    assert torch.allclose(queue.features.norm(dim=1), torch.ones(5)) and queue.ptr.item() == 0
    first, second = torch.arange(9.0).view(3, 3), 100 + torch.arange(12.0).view(4, 3)
    start = queue.features.clone()
    queue.enqueue(first)
    queue.enqueue(second)  # rows 3, 4, then 0, 1
    expected = start.clone()
    expected[[0, 1, 2]] = first
    expected[[3, 4, 0, 1]] = second
    assert torch.equal(queue.features, expected) and queue.ptr.item() == 2
    queue.enqueue(torch.zeros(5, 3))  # a whole queue's worth: every row, pointer back where it was
    assert torch.equal(queue.features, torch.zeros(5, 3)) and queue.ptr.item() == 2

    model = nn.Module()
    model.queue = queue
    state = model.state_dict()
    assert set(state) == {"queue.features", "queue.ptr"}
    other = nn.Module()
    other.queue = FeatureQueue(5, 3, seed=2)
    other.load_state_dict(state)
    keys = torch.ones(2, 3)
    queue.enqueue(keys)
    other.queue.enqueue(keys)
    assert torch.equal(other.queue.features, queue.features) and other.queue.ptr.item() == queue.ptr.item() == 4
    with pytest.raises(ValueError, match="K <= 5"):
        queue.enqueue(torch.zeros(6, 3))


# -- memory bank -------------------------------------------------------------------------------------------------------
def test_bank_initialisation_and_update_against_a_row_by_row_reference():
    bank = MemoryBank(N_BANK, DIM, momentum=0.5, seed=3)
    s = 1 / math.sqrt(DIM / 3)
    assert bank.memory.abs().max() <= s and bank.memory.min() < 0 < bank.memory.max()
    assert torch.equal(bank.memory, MemoryBank(N_BANK, DIM, seed=3).memory)
    indices, features = torch.tensor([7, 2, 4]), torch.randn(3, DIM)
    expected = bank.memory.clone()
    for i, f in zip(indices.tolist(), features):
        row = 0.5 * expected[i] + 0.5 * f
        expected[i] = row / row.norm()
    bank.update(indices, features)
    torch.testing.assert_close(bank.memory, expected)
    negatives = bank.sample_negatives(3, 5, generator=torch.Generator().manual_seed(0))
    assert negatives.shape == (3, 5, DIM)
    assert all(any(torch.equal(v, row) for row in bank.memory) for v in negatives.reshape(-1, DIM))
    with pytest.raises(ValueError, match="indices"):
        bank.update(indices, features[:2])


def test_no_gradient_reaches_queue_or_bank():
    queue, bank = FeatureQueue(4, DIM), MemoryBank(N_BANK, DIM)
    keys = torch.randn(2, DIM, requires_grad=True)
    queue.enqueue(keys * 2)
    bank.update(torch.tensor([0, 1]), keys * 2)
    assert not list(queue.parameters()) and not list(bank.parameters())
    for buffer in (queue.features, queue.ptr, bank.memory):
        assert not buffer.requires_grad and buffer.grad_fn is None
    (queue().sum() + bank.memory.sum() + keys.sum()).backward()  # the buffers are constants of any loss
    assert torch.equal(keys.grad, torch.ones_like(keys))


# -- two gloo workers ----------------------------------------------------------------------------------------------------
def global_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(10 + step)
    return torch.randperm(N_BANK, generator=g)[: WORLD * LOCAL], F.normalize(torch.randn(WORLD * LOCAL, DIM,
                                                                                         generator=g), dim=1)


def _ddp_worker(rank: int) -> dict:
    queue, bank = FeatureQueue(QUEUE, DIM, seed=5), MemoryBank(N_BANK, DIM, momentum=0.5, seed=5)
    rows = slice(rank * LOCAL, (rank + 1) * LOCAL)
    for step in range(3):  # 3 * 6 keys through an 8-row queue: it wraps around
        indices, features = global_batch(step)
        keys = distributed.gather(features[rows])
        queue.enqueue(keys)
        bank.update(distributed.gather(indices[rows]), keys)
    return {"queue": queue.state_dict(), "bank": bank.state_dict()}


def test_two_workers_end_with_identical_queue_and_bank_equal_to_one_process(tmp_path: Path):
    results = run_workers(_ddp_worker, tmp_path=tmp_path, world_size=WORLD)
    queue, bank = FeatureQueue(QUEUE, DIM, seed=5), MemoryBank(N_BANK, DIM, momentum=0.5, seed=5)
    for step in range(3):
        indices, features = global_batch(step)
        queue.enqueue(features)
        bank.update(indices, features)
    for result in results:
        for key, value in queue.state_dict().items():
            assert torch.equal(result["queue"][key], value), key
        assert torch.equal(result["bank"]["memory"], bank.memory)
    assert queue.ptr.item() == (3 * WORLD * LOCAL) % QUEUE
