"""supcon_loss against a naive per-anchor reference, analytic values, edge cases and argument validation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from trainables.losses import cross_entropy_loss, supcon_loss


def naive_supcon(
    features: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    temperature: float,
    base_temperature: float = 0.07,
    contrast_mode: str = "all",
    anchor_samples: list[int] | None = None,
) -> torch.Tensor:
    """The SupCon formula written anchor by anchor, in float64: the mean over the anchors with a positive. With
    ``anchor_samples``, the sum over those anchors divided by ``N_pos * n_selected / n_all`` (the per-rank share)."""
    batch, views, _ = features.shape
    features = features.double()
    labels = torch.arange(batch) if labels is None else labels
    vectors = [(features[b, v], int(labels[b])) for v in range(views) for b in range(batch)]  # index v * B + b
    samples = range(batch) if anchor_samples is None else anchor_samples
    anchor_views = range(views) if contrast_mode == "all" else range(1)
    n_with_positive = sum(1 for v in anchor_views for b in range(batch)
                          if any(vectors[p][1] == vectors[v * batch + b][1] for p in range(len(vectors))
                                 if p != v * batch + b))
    if n_with_positive == 0:
        return torch.zeros((), dtype=torch.float64)
    terms = []
    for v in anchor_views:
        for b in samples:
            i = v * batch + b
            z_i, label_i = vectors[i]
            others = [a for a in range(len(vectors)) if a != i]
            positives = [p for p in others if vectors[p][1] == label_i]
            denominator = sum(torch.exp(z_i @ vectors[a][0] / temperature) for a in others)
            if not positives:
                terms.append(torch.zeros((), dtype=torch.float64))
                continue
            log_probs = [torch.log(torch.exp(z_i @ vectors[p][0] / temperature) / denominator) for p in positives]
            terms.append(-sum(log_probs) / len(positives))
    share = n_with_positive * len(terms) / (len(anchor_views) * batch)
    return (temperature / base_temperature) * torch.stack(terms).sum() / share


def random_features(batch: int, views: int, dim: int = 8, *, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(batch, views, dim, generator=generator, dtype=torch.float64), dim=-1)


@pytest.mark.parametrize("views", [1, 2, 3, 4])
@pytest.mark.parametrize("contrast_mode", ["all", "one"])
@pytest.mark.parametrize("with_labels", [False, True])
def test_matches_naive_reference(views: int, contrast_mode: str, with_labels: bool) -> None:
    features = random_features(6, views, seed=views)
    labels = torch.tensor([0, 1, 0, 2, 1, 0]) if with_labels else None
    expected = naive_supcon(features, labels, temperature=0.3, contrast_mode=contrast_mode)
    actual = supcon_loss(features, labels, temperature=0.3, contrast_mode=contrast_mode)
    torch.testing.assert_close(actual, expected)


@pytest.mark.parametrize("contrast_mode", ["all", "one"])
@pytest.mark.parametrize("with_labels", [False, True])
def test_anchor_index_matches_naive_reference(contrast_mode: str, with_labels: bool) -> None:
    features = random_features(6, 2, seed=1)
    labels = torch.tensor([0, 1, 0, 2, 1, 0]) if with_labels else None
    for anchor_index, samples in [(slice(2, 5), [2, 3, 4]), (torch.tensor([5, 0, 3]), [5, 0, 3])]:
        expected = naive_supcon(
            features, labels, temperature=0.2, base_temperature=0.1, contrast_mode=contrast_mode, anchor_samples=samples
        )
        actual = supcon_loss(
            features,
            labels,
            temperature=0.2,
            base_temperature=0.1,
            contrast_mode=contrast_mode,
            anchor_index=anchor_index,
        )
        torch.testing.assert_close(actual, expected)


def test_anchor_halves_average_to_full_loss() -> None:
    features = random_features(8, 2, seed=2)
    labels = torch.tensor([0, 1, 2, 3, 0, 1, 2, 3])
    full = supcon_loss(features, labels, temperature=0.1)
    halves = [supcon_loss(features, labels, temperature=0.1, anchor_index=slice(k, k + 4)) for k in (0, 4)]
    torch.testing.assert_close((halves[0] + halves[1]) / 2, full)


def test_no_labels_equals_one_class_per_sample() -> None:
    features = random_features(5, 3, seed=3)
    torch.testing.assert_close(
        supcon_loss(features, temperature=0.5), supcon_loss(features, torch.arange(5) * 7, temperature=0.5)
    )


@pytest.mark.parametrize(("batch", "views"), [(4, 2), (3, 4), (5, 3)])
def test_perfectly_aligned_views_analytic(batch: int, views: int) -> None:
    # Views identical within a sample, orthogonal across samples: z_i.z_p = 1 for its V - 1 positives, 0 for the
    # (B - 1) * V others, so L = (tau / base_tau) * (log((V - 1) e^{1/tau} + (B - 1) V) - 1/tau).
    tau, base_tau = 0.5, 0.07
    features = torch.eye(batch, dtype=torch.float64)[:, None, :].expand(batch, views, batch)
    expected = (tau / base_tau) * (math.log((views - 1) * math.exp(1 / tau) + (batch - 1) * views) - 1 / tau)
    actual = supcon_loss(features, temperature=tau, base_temperature=base_tau)
    assert actual.item() == pytest.approx(expected, rel=1e-12)


def test_identical_vectors_analytic() -> None:
    # All logits equal: every positive has probability 1 / (N - 1), so L = (tau / base_tau) * log(N - 1).
    batch, views, tau = 4, 2, 0.1
    features = F.normalize(torch.ones(batch, views, 3, dtype=torch.float64), dim=-1)
    expected = (tau / 0.07) * math.log(batch * views - 1)
    assert supcon_loss(features, temperature=tau).item() == pytest.approx(expected, rel=1e-12)


def test_anchor_without_positive_contributes_nothing_and_ranks_average_to_the_global_loss() -> None:
    features = random_features(3, 1, seed=4)
    labels = torch.tensor([0, 0, 1])  # sample 2 is alone in its class
    lonely = supcon_loss(features, labels, temperature=0.1, anchor_index=torch.tensor([2]))
    assert lonely.item() == 0.0
    paired = supcon_loss(features, labels, temperature=0.1, anchor_index=slice(0, 2))
    full = supcon_loss(features, labels, temperature=0.1)
    torch.testing.assert_close(full, paired * 2 / 3)


@pytest.mark.parametrize("temperature", [0.07, 1e-4])
def test_singleton_classes_single_view_finite(temperature: float) -> None:
    features = F.normalize(torch.randn(6, 1, 4), dim=-1).requires_grad_()
    loss = supcon_loss(features, torch.arange(6), temperature=temperature)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(features.grad).all()


def test_single_vector_finite() -> None:
    features = torch.randn(1, 1, 4, requires_grad=True)
    loss = supcon_loss(features, temperature=0.1)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.isfinite(features.grad).all()


@pytest.mark.parametrize("temperature", [1e-3, 1e-4])
def test_tiny_temperature_stable(temperature: float) -> None:
    features = F.normalize(torch.randn(8, 2, 16), dim=-1).requires_grad_()
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 4])
    loss = supcon_loss(features, labels, temperature=temperature)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() >= 0
    assert torch.isfinite(features.grad).all()


def test_gradient_matches_naive_reference() -> None:
    features = random_features(5, 2, seed=5).requires_grad_()
    labels = torch.tensor([0, 1, 0, 1, 2])
    (actual,) = torch.autograd.grad(supcon_loss(features, labels, temperature=0.2), features)
    (expected,) = torch.autograd.grad(naive_supcon(features, labels, temperature=0.2), features)
    torch.testing.assert_close(actual, expected)


def test_low_precision_features() -> None:
    features = random_features(6, 2, seed=6)
    expected = supcon_loss(features, temperature=0.1)
    actual = supcon_loss(features.bfloat16(), temperature=0.1)
    assert actual.dtype == torch.float32
    torch.testing.assert_close(actual.double(), expected, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"base_temperature": 0.0}, "base_temperature"),
        ({"contrast_mode": "some"}, "contrast_mode"),
        ({"anchor_index": slice(4, 4)}, "anchor_index"),
        ({"anchor_index": torch.tensor([0, 4])}, "anchor_index"),
        ({"anchor_index": torch.tensor([0.0])}, "anchor_index"),
        ({"anchor_index": [0, 1]}, "anchor_index"),
    ],
)
def test_invalid_arguments(kwargs: dict, argument: str) -> None:
    with pytest.raises(ValueError, match=rf"\b{argument}\b"):
        supcon_loss(random_features(4, 2), **kwargs)


def test_invalid_shapes() -> None:
    with pytest.raises(ValueError, match="`features` must have shape"):
        supcon_loss(torch.randn(4, 8))
    with pytest.raises(ValueError, match="`features`"):
        supcon_loss(torch.randn(0, 2, 8))
    with pytest.raises(ValueError, match=r"`labels` must have shape \[B\] = \[4\].*\(3,\)"):
        supcon_loss(random_features(4, 2), torch.arange(3))
    with pytest.raises(ValueError, match="`labels`"):
        supcon_loss(random_features(4, 2), torch.arange(4)[:, None])


def test_cross_entropy_loss_is_its_formula_and_torchs_label_smoothing():
    """Hand case: two classes, logits (0, 0) -> p = (1/2, 1/2): every term is log 2 whatever eps. Random inputs:
    equal to F.cross_entropy(label_smoothing=eps); a 0-dim tensor eps (a fused member's) gives the same."""
    assert cross_entropy_loss(torch.zeros(3, 2), torch.tensor([0, 1, 1]), label_smoothing=0.3).item() == \
        pytest.approx(math.log(2))
    # logits (log 3, 0): p = (3/4, 1/4); label 0, eps 0.5: 0.5 * -log(3/4) + 0.5 * (-log(3/4) - log(1/4)) / 2
    hand = 0.5 * -math.log(0.75) + 0.25 * (-math.log(0.75) - math.log(0.25))
    assert cross_entropy_loss(torch.tensor([[math.log(3), 0.0]]), torch.tensor([0]),
                              label_smoothing=0.5).item() == pytest.approx(hand)
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(16, 7, generator=g), torch.randint(0, 7, (16,), generator=g)
    for eps in (0.0, 0.1, 0.45):
        ref = F.cross_entropy(logits, labels, label_smoothing=eps)
        torch.testing.assert_close(cross_entropy_loss(logits, labels, label_smoothing=eps), ref)
        torch.testing.assert_close(cross_entropy_loss(logits, labels, label_smoothing=torch.tensor(eps)), ref)
    with pytest.raises(ValueError, match="label_smoothing"):
        cross_entropy_loss(logits, labels, label_smoothing=1.0)
