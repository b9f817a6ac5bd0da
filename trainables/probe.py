"""Evaluation of frozen features: kNN monitor, linear probe, logistic-regression probe, exit ensembles.

Features are extracted once per evaluation (no augmentation), sharded over the DDP workers and gathered, so every
probe below works on plain ``[N, D]`` tensors. Accuracies are fractions in [0, 1].
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from trainables import distributed
from trainables.data.augment import eval_transform

__all__ = ["calibrated_logreg_probe", "ensemble_logits", "extract_features", "knn_top1", "linear_probe", "logreg_probe",
           "seed_linear_probe", "top1"]


@torch.no_grad()
def extract_features(
    fn: Callable[[Tensor], Mapping[str, Tensor]],
    images: np.ndarray,
    *,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    batch_size: int,
    device: torch.device,
) -> dict[str, Tensor]:
    """Run ``fn`` (eval mode, no augmentation) over uint8 ``images [N,C,H,W]``; returns ``{name: [N, D]}`` on CPU.

    Under DDP each worker processes an equal, contiguous shard (the last padded) and the shards are gathered, so
    every worker ends with the features of all N images in order.
    """
    n = len(images)
    world, rank = distributed.world_size(), distributed.rank()
    per_rank = math.ceil(n / world)
    start, stop = rank * per_rank, min((rank + 1) * per_rank, n)
    chunks: dict[str, list[Tensor]] = {}
    for i in range(start, max(start, stop), batch_size):
        batch = torch.from_numpy(np.array(images[i:min(i + batch_size, stop)])).to(device)
        for name, f in fn(eval_transform(batch, mean=mean, std=std)).items():
            chunks.setdefault(name, []).append(f.float())
    if not chunks:  # an empty shard (more workers than images): ask the model for the feature names and widths
        probe_batch = torch.from_numpy(np.array(images[:1])).to(device)
        chunks = {k: [v.float()[:0]] for k, v in fn(eval_transform(probe_batch, mean=mean, std=std)).items()}
    out = {}
    for name, parts in chunks.items():
        local = torch.cat(parts)
        if world > 1:
            padded = local.new_zeros((per_rank, local.shape[1]))
            padded[: len(local)] = local
            local = distributed.gather(padded)[:n]
        out[name] = local.cpu()
    return out


@torch.no_grad()
def knn_top1(
    bank: Tensor,
    bank_labels: Tensor,
    query: Tensor,
    query_labels: Tensor,
    *,
    num_classes: int,
    k: int = 200,
    temperature: float = 0.1,
    chunk_size: int = 1024,
) -> float:
    """Weighted kNN top-1 accuracy (Wu et al. 2018): cosine similarity to the k nearest bank features, each neighbour
    voting for its class with weight ``exp(sim / temperature)``.

    Shapes: bank [N, D], bank_labels [N], query [M, D], query_labels [M]. ``k`` is capped at N.
    """
    bank = F.normalize(bank.float(), dim=1)
    query = F.normalize(query.float(), dim=1)
    k = min(k, len(bank))
    correct = 0
    for i in range(0, len(query), chunk_size):
        sim = query[i:i + chunk_size] @ bank.T  # [m, N]
        top_sim, top_idx = sim.topk(k, dim=1)
        votes = torch.zeros(len(sim), num_classes, dtype=sim.dtype)
        votes.scatter_add_(1, bank_labels[top_idx], (top_sim / temperature).exp())
        correct += (votes.argmax(1) == query_labels[i:i + chunk_size]).sum().item()
    return correct / max(1, len(query))


def linear_probe(
    train_features: Tensor,
    train_labels: Tensor,
    eval_sets: Mapping[str, tuple[Tensor, Tensor]],
    *,
    num_classes: int,
    epochs: int = 100,
    lr: float = 0.1,
    weight_decay: float = 0.0,
    batch_size: int = 256,
    seed: int = 0,
) -> dict[str, Tensor]:
    """Train a linear classifier on frozen features with SGD (momentum 0.9, cosine lr); return each eval set's logits.

    Features are standardised with the training set's mean and std first, which makes one ``lr`` work across
    backbones and feature scales. Shapes: train_features [N, D], train_labels [N]; eval_sets maps a name to
    (features [M, D], labels [M]); the result maps the same names to logits [M, num_classes].
    """
    mu = train_features.mean(0, keepdim=True)
    sd = train_features.std(0, keepdim=True).clamp_min(1e-6)
    x = (train_features - mu) / sd
    gen = torch.Generator().manual_seed(seed)
    head = torch.nn.Linear(x.shape[1], num_classes)
    with torch.no_grad():
        head.weight.normal_(0.0, 0.01, generator=gen)
        head.bias.zero_()
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    steps_per_epoch = max(1, math.ceil(len(x) / batch_size))
    total = max(1, epochs * steps_per_epoch)
    step = 0
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch_size):
            idx = perm[i:i + batch_size]
            for g in opt.param_groups:
                g["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / total))
            loss = F.cross_entropy(head(x[idx]), train_labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
    with torch.no_grad():
        return {name: head((f - mu) / sd) for name, (f, _) in eval_sets.items()}


def ensemble_logits(logits: Sequence[Tensor]) -> Tensor:
    """SelfCon's exit ensemble: the mean of the probes' logits, ``[K] x [N, C] -> [N, C]`` (the reference averages
    logits, not softmax probabilities)."""
    if not logits:
        raise ValueError("`logits` must hold at least one [N, C] tensor, but got none")
    return torch.stack(list(logits)).mean(0)


def top1(logits: Tensor, labels: Tensor) -> float:
    """Fraction of rows whose arg-max equals the label."""
    return (logits.argmax(1) == labels).float().mean().item() if len(labels) else 0.0


def logreg_probe(
    train_features: Tensor,
    train_labels: Tensor,
    eval_sets: Mapping[str, tuple[Tensor, Tensor]],
    *,
    max_iter: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """scikit-learn logistic regression on L2-normalised features (the sigmoid seed's evaluation); top-1 per set."""
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(max_iter=max_iter, random_state=seed)
    clf.fit(F.normalize(train_features.float(), dim=1).numpy(), train_labels.numpy())
    return {
        name: float((clf.predict(F.normalize(f.float(), dim=1).numpy()) == y.numpy()).mean()) if len(y) else 0.0
        for name, (f, y) in eval_sets.items()
    }


def calibrated_logreg_probe(
    train_features: Tensor,
    train_labels: Tensor,
    eval_sets: Mapping[str, tuple[Tensor, Tensor]],
) -> dict[str, float]:
    """The sigmoid seed's evaluation (``scl/stl10_eval.py``): ``CalibratedClassifierCV(LogisticRegression(
    max_iter=100))`` fitted on L2-normalised features of every training image; top-1 per set."""
    from sklearn.calibration import CalibratedClassifierCV
    from sklearn.linear_model import LogisticRegression

    clf = CalibratedClassifierCV(LogisticRegression(max_iter=100))
    clf.fit(F.normalize(train_features.float(), dim=1).numpy(), train_labels.numpy())
    return {
        name: float((clf.predict(F.normalize(f.float(), dim=1).numpy()) == y.numpy()).mean()) if len(y) else 0.0
        for name, (f, y) in eval_sets.items()
    }


def seed_linear_probe(
    encode: Callable[[Tensor], Tensor],
    augment: Callable[[Tensor, torch.Generator], Tensor],
    normalize: Callable[[Tensor], Tensor],
    train_images: np.ndarray,
    train_labels: Tensor,
    test_images: np.ndarray,
    test_labels: Tensor,
    *,
    num_classes: int,
    epochs: int,
    batch_size: int,
    lr: float,
    device: torch.device,
    seed: int = 0,
    decay_at: tuple[float, ...] = (0.6, 0.75, 0.9),
    decay_rate: float = 0.2,
    momentum: float = 0.9,
    warmup_epochs: float = 10.0,
    warmup_from: float = 0.01,
) -> float:
    """SupContrast's ``main_linear.py`` protocol; returns the last epoch's test top-1.

    Each epoch, every training image is augmented anew (``augment``: crop + flip) and passed through the frozen
    encoder ``encode`` (``[B, C, H, W] -> [B, D]``, in eval mode, no gradient); a linear layer ``D -> num_classes``
    is trained with cross-entropy by SGD (``momentum``, no weight decay). Learning rate: ``lr * decay_rate ** k``
    after the ``k``-th of the epochs ``decay_at * epochs`` (the seed's 60, 75, 90 of 100), with a linear warm-up
    from ``warmup_from`` over ``min(warmup_epochs, epochs / 2)`` epochs when ``batch_size > 256`` (the seed's rule).
    Test images are only normalised (``normalize``: uint8 -> float).
    """
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"`epochs >= 1` and `batch_size >= 1` must hold, but got epochs={epochs}, "
                         f"batch_size={batch_size}")
    generator = torch.Generator(device=device).manual_seed(seed)
    order_rng = np.random.default_rng(seed)
    n = len(train_images)
    steps = max(1, math.ceil(n / batch_size))
    warm = min(warmup_epochs, epochs / 2) * steps if batch_size > 256 else 0
    decay_epochs = [round(f * epochs) for f in decay_at]
    classifier: nn.Linear | None = None
    optimizer: torch.optim.Optimizer | None = None
    for epoch in range(epochs):
        order = order_rng.permutation(n)
        for i in range(steps):
            rows = np.sort(order[i * batch_size:(i + 1) * batch_size])
            images = torch.from_numpy(np.ascontiguousarray(train_images[rows])).to(device)
            with torch.no_grad():
                feats = encode(augment(images, generator)).float()
            if classifier is None:
                classifier = nn.Linear(feats.shape[1], num_classes).to(device)
                optimizer = torch.optim.SGD(classifier.parameters(), lr=lr, momentum=momentum, weight_decay=0.0)
            step = epoch * steps + i
            rate = lr * decay_rate ** sum(epoch >= e for e in decay_epochs)
            if step < warm:
                rate = warmup_from + (rate - warmup_from) * step / warm
            for group in optimizer.param_groups:
                group["lr"] = rate
            loss = F.cross_entropy(classifier(feats), train_labels[rows].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(test_images), batch_size):
            images = torch.from_numpy(np.array(test_images[start:start + batch_size])).to(device)
            logits = classifier(encode(normalize(images)).float())
            correct += int((logits.argmax(1).cpu() == test_labels[start:start + batch_size]).sum())
    return correct / max(1, len(test_images))
