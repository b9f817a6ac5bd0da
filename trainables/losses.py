"""Contrastive losses as pure functions of tensors.

Every loss takes tensors and returns a scalar tensor; nothing here owns parameters or state. Arguments after the
tensors are keyword-only, and a bad argument raises ``ValueError`` naming it.

SupCon, SimCLR and SelfCon share :func:`supcon_loss` (Khosla et al., 2020, eq. 2, ``L^sup_out``):

- SupCon: ``features`` holds V augmented views per image and ``labels`` the classes.
- SimCLR: ``labels=None``, so the positives of a vector are the other views of the same image (NT-Xent).
- SelfCon: the "views" of an image are the features of its sub-network exits and of the backbone, from one
  augmented view (or more, for SelfCon-M).

Under DDP each rank gathers the global batch with :func:`trainables.distributed.gather_with_grad` and passes its own
samples as ``anchor_index`` (:func:`trainables.distributed.local_rows`): every rank contrasts its anchors against
the whole global batch, and the mean of the per-rank losses is the global loss.

The sigmoid-contrastive method (ReLIC with SigLIP's pairwise loss) uses :func:`sigmoid_pairwise_loss`; SCE
(Similarity Contrastive Estimation) uses :func:`sce_loss`, a soft InfoNCE against a momentum encoder's keys and a queue.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

__all__ = ["cross_entropy_loss", "sce_loss", "sigmoid_pairwise_loss", "supcon_loss"]

ContrastMode = Literal["all", "one"]


def _number(value: object) -> bool:
    """Whether a scalar argument is a Python number, whose range the loss checks. A 0-dim tensor (a fused trial's
    per-member value under ``torch.func.vmap``, see trainables/fused.py) was checked by the config that made it."""
    return not isinstance(value, Tensor)


def cross_entropy_loss(logits: Tensor, labels: Tensor, *, label_smoothing: float | Tensor = 0.0) -> Tensor:
    """Cross-entropy with label smoothing ``eps`` (torch's definition: targets ``(1 - eps) * onehot + eps / C``)::

        L = (1/B) sum_i [ (1 - eps) * -log p_i[y_i] + eps * (1/C) sum_c -log p_i[c] ],   p_i = softmax(logits[i])

    Args:
        logits: ``[B, C]``; labels: ``[B]`` class indices.
        label_smoothing: ``eps`` in [0, 1); a 0-dim tensor is accepted (a fused trial's per-member value).
    """
    if _number(label_smoothing) and not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"`0 <= label_smoothing < 1` must hold, but got label_smoothing={label_smoothing!r}")
    logp = logits.log_softmax(1)
    nll = -logp.gather(1, labels[:, None]).squeeze(1)
    return ((1 - label_smoothing) * nll - label_smoothing * logp.mean(1)).mean()


# --------------------------------------------------------------------------------------------------------------------
# SupCon / SimCLR / SelfCon
# --------------------------------------------------------------------------------------------------------------------


def supcon_loss(
    features: Tensor,
    labels: Tensor | None = None,
    *,
    temperature: float = 0.07,
    base_temperature: float = 0.07,
    contrast_mode: ContrastMode = "all",
    anchor_index: slice | Tensor | None = None,
) -> Tensor:
    """Supervised contrastive loss; SimCLR's NT-Xent when ``labels`` is None.

    The B*V vectors ``z`` of ``features`` are the contrasts. For an anchor ``i``, ``A(i)`` is every contrast but
    ``i`` and ``P(i)`` the contrasts of ``A(i)`` with the label of ``i`` (without labels: the other views of the same
    sample)::

        L = (tau / base_tau) * mean_i [ -1/|P(i)| * sum_{p in P(i)} log( exp(z_i.z_p / tau)
                                                                        / sum_{a in A(i)} exp(z_i.z_a / tau) ) ]

    The mean is over the anchors with at least one positive (SupContrast's ``mask_pos_pairs``; SupCon-S with one
    view): an anchor without positives contributes nothing, never NaN, and if no anchor has one the loss is 0 with a
    zero gradient. The features are used as given
    (callers L2-normalise them); the logits are computed in at least float32 and shifted by their detached max over
    ``A(i)``, so the loss and its gradient stay finite for any temperature.

    Args:
        features: ``[B, V, D]``, V views of B samples.
        labels: ``[B]`` class of each sample, or None for SimCLR (each sample is its own class).
        temperature: ``tau > 0``.
        base_temperature: ``base_tau > 0``; the loss is scaled by ``tau / base_tau``.
        contrast_mode: ``"all"``: every view is an anchor; ``"one"``: only view 0 is.
        anchor_index: the samples (indices along B, as a slice or a 1-D integer tensor) whose vectors are anchors;
            None for all. Contrasts are always all B*V vectors. Under DDP, ranks with equally many anchors make the
            mean of their losses equal to the global loss.

    Returns:
        Scalar loss. With ``anchor_index``, the sum over this call's anchors is divided by ``N_pos * n_local /
        n_all`` (``N_pos``: anchors of the whole batch with a positive; ``n_local``, ``n_all``: this call's and the
        whole batch's anchor counts), so that the mean of the per-rank losses is the global mean over ``N_pos``.
    """
    if features.ndim != 3:
        raise ValueError(f"`features` must have shape [B, V, D], but got shape {tuple(features.shape)}")
    batch, views, _ = features.shape
    if batch == 0 or views == 0:
        raise ValueError(
            f"`features` must hold at least one sample and one view, but got shape {tuple(features.shape)}"
        )
    if _number(temperature) and not temperature > 0:
        raise ValueError(f"`temperature > 0` must hold, but got temperature={temperature!r}")
    if _number(base_temperature) and not base_temperature > 0:
        raise ValueError(f"`base_temperature > 0` must hold, but got base_temperature={base_temperature!r}")
    if contrast_mode not in ("all", "one"):
        raise ValueError(f"`contrast_mode` must be 'all' or 'one', but got contrast_mode={contrast_mode!r}")
    device = features.device

    if labels is None:
        sample_labels = torch.arange(batch, device=device)
    else:
        if labels.ndim != 1 or labels.shape[0] != batch:
            raise ValueError(
                f"`labels` must have shape [B] = [{batch}] to match `features`, but got shape {tuple(labels.shape)}"
            )
        sample_labels = labels.to(device)

    anchor_samples = _anchor_samples(anchor_index, batch, device)
    # Contrasts in view-major order: vector v * B + b is view v of sample b.
    contrast = features.transpose(0, 1).reshape(views * batch, -1)
    contrast_labels = sample_labels.repeat(views)
    anchor_views = views if contrast_mode == "all" else 1
    offsets = torch.arange(anchor_views, device=device) * batch
    anchor_ids = (offsets[:, None] + anchor_samples[None, :]).reshape(-1)  # [n_anchor]

    logits = contrast[anchor_ids] @ contrast.T  # [n_anchor, B*V]
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature
    not_self = torch.arange(views * batch, device=device)[None, :] != anchor_ids[:, None]  # A(i)
    positive = (contrast_labels[anchor_ids][:, None] == contrast_labels[None, :]) & not_self  # P(i)

    # Shift by the detached max over A(i) so that the denominator is >= 1 (no underflow, no log(0)); the self
    # logit is masked with -inf before exp so that neither its value nor its gradient can overflow. With a single
    # vector A(i) is empty: the shift and denominator fall back to 0 and 1, and the anchor has no positives.
    others = logits.masked_fill(~not_self, float("-inf"))
    shift = others.amax(dim=1, keepdim=True).detach()
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
    denominator = torch.exp(others - shift).sum(dim=1, keepdim=True)
    denominator = torch.where(denominator > 0, denominator, torch.ones_like(denominator))
    log_normaliser = (shift + torch.log(denominator)).squeeze(1)  # log sum_{a in A(i)} exp(z_i.z_a / tau), [n_anchor]

    # mean_{p in P(i)} log_prob(i, p) = mean_{p in P(i)} logits(i, p) - log_normaliser(i); 0 when P(i) is empty.
    n_positive = positive.sum(dim=1)
    positive_logits = (logits * positive).sum(dim=1)
    mean_log_prob_pos = (positive_logits - n_positive * log_normaliser) / n_positive.clamp(min=1)
    # Anchors of the whole batch with a positive: sample b's vectors have views * count(label_b) - 1 positives.
    # (Tensor arithmetic, no data-dependent branch, so that torch.func.vmap can batch it: trainables/fused.py.)
    counts = (sample_labels[:, None] == sample_labels[None, :]).sum(dim=1)  # count(label_b), [B]
    n_with_positive = anchor_views * (views * counts > 1).sum()
    n_all = anchor_views * batch
    # With no positive anywhere every term is 0, so any denominator >= 1 gives the loss 0 and the gradient 0.
    denominator = (n_with_positive.clamp(min=1).double() * anchor_ids.numel() / n_all).to(mean_log_prob_pos.dtype)
    return -(temperature / base_temperature) * mean_log_prob_pos.sum() / denominator


def _anchor_samples(anchor_index: slice | Tensor | None, batch: int, device: torch.device) -> Tensor:
    """Sample indices ``[n]`` (along B) selected by ``anchor_index``; validates it against the batch size."""
    if anchor_index is None:
        return torch.arange(batch, device=device)
    if isinstance(anchor_index, slice):
        samples = torch.arange(batch, device=device)[anchor_index]
    elif isinstance(anchor_index, Tensor):
        if anchor_index.ndim != 1 or anchor_index.dtype.is_floating_point or anchor_index.dtype == torch.bool:
            raise ValueError(
                "`anchor_index` must be a slice or a 1-D integer tensor, but got a tensor of shape "
                f"{tuple(anchor_index.shape)} and dtype {anchor_index.dtype}"
            )
        samples = anchor_index.to(device=device, dtype=torch.long)
        if samples.numel() and (samples.min() < 0 or samples.max() >= batch):
            raise ValueError(
                f"`0 <= anchor_index < B` must hold with B={batch}, but got values in "
                f"[{int(samples.min())}, {int(samples.max())}]"
            )
    else:
        raise ValueError(f"`anchor_index` must be None, a slice or a 1-D integer tensor, but got {anchor_index!r}")
    if samples.numel() == 0:
        raise ValueError(f"`anchor_index` must select at least one of the B={batch} samples, but got {anchor_index!r}")
    return samples


# --------------------------------------------------------------------------------------------------------------------
# Sigmoid pairwise loss (SigLIP's loss with a confidence penalty, after filipbasara0/sigmoid-contrastive-loss)
# --------------------------------------------------------------------------------------------------------------------


def sigmoid_pairwise_loss(
    x: Tensor,
    x_prime: Tensor,
    *,
    log_temperature: Tensor | float,
    bias: Tensor | float,
    gamma: float = 0.0,
    alpha: float = 0.0,
    max_scale: float = 5.0,
    filter_threshold: float | None = None,
) -> Tensor:
    """Sigmoid pairwise contrastive loss with a confidence penalty ``gamma`` and a KL invariance term ``alpha``.

    Both inputs are L2-normalised here. With ``s = min(exp(t), max_scale)``::

        logits_ij = s * <x_i, x'_j> + b                        y_ij = +1 if i == j else -1
        L = -(1/n) * sum_ij (1 - sigmoid(y_ij * logits_ij))^gamma * log sigmoid(y_ij * logits_ij) + alpha * KL
        KL = kl_div(log_softmax(logits, dim=1), softmax(logits, dim=0).T, reduction="batchmean")

    ``gamma = 0`` is SigLIP's plain sigmoid loss; ``gamma > 0`` down-weights pairs that are already classified
    confidently, like a focal loss (the penalty is differentiated through, as in the reference). The KL term compares
    row ``a``'s softmax over targets with column ``a``'s softmax over online projections. ``log sigmoid`` is computed
    with ``logsigmoid`` and the penalty as ``exp(gamma * logsigmoid(-y * logits))`` (``1 - sigmoid(z) = sigmoid(-z)``),
    so both stay finite for any logit. Computed in at least float32.

    Penalty filtering (``filter_threshold`` not None), as the seed: negative pairs whose penalty
    ``(1 - p_ij)^gamma`` is ``<= filter_threshold`` are dropped (positives are always kept) and the kept pairs lose
    the penalty weight, ``L = -(1/n) * sum_{(i,j) kept} log sigmoid(y_ij * logits_ij) + alpha * KL``.

    Args:
        x: online projections ``[n, d]``.
        x_prime: target projections ``[n, d]``; row ``i`` is the positive of ``x[i]``.
        log_temperature: ``t``, a scalar (tensor, usually a learnable parameter); the scale is ``min(e^t, max_scale)``.
        bias: ``b``, a scalar (tensor, usually a learnable parameter).
        gamma: confidence-penalty exponent, ``>= 0``.
        alpha: weight of the KL invariance term, ``>= 0``.
        max_scale: upper clamp of ``e^t``, ``> 0``.
        filter_threshold: drop negatives with penalty ``<=`` this value and weight the kept pairs by 1; None keeps
            every pair with its penalty weight.

    Returns:
        Scalar loss.
    """
    if x.ndim != 2 or x_prime.shape != x.shape:
        raise ValueError(f"`x` and `x_prime` must both have shape [n, d], but got shapes {tuple(x.shape)} and "
                         f"{tuple(x_prime.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"`x` must hold at least one row, but got shape {tuple(x.shape)}")
    if not gamma >= 0:
        raise ValueError(f"`gamma >= 0` must hold, but got gamma={gamma!r}")
    if not alpha >= 0:
        raise ValueError(f"`alpha >= 0` must hold, but got alpha={alpha!r}")
    if not max_scale > 0:
        raise ValueError(f"`max_scale > 0` must hold, but got max_scale={max_scale!r}")
    dtype = torch.promote_types(x.dtype, torch.float32)
    t = torch.as_tensor(log_temperature, dtype=dtype, device=x.device)
    b = torch.as_tensor(bias, dtype=dtype, device=x.device)
    if t.numel() != 1 or b.numel() != 1:
        raise ValueError(f"`log_temperature` and `bias` must be scalars, but got shapes {tuple(t.shape)} and "
                         f"{tuple(b.shape)}")
    n = x.shape[0]
    x = torch.nn.functional.normalize(x.to(dtype), dim=1)
    x_prime = torch.nn.functional.normalize(x_prime.to(dtype), dim=1)
    logits = t.exp().clamp(max=max_scale).reshape(()) * (x @ x_prime.T) + b.reshape(())  # [n, n]
    positive = torch.eye(n, dtype=torch.bool, device=x.device)
    signed = torch.where(positive, logits, -logits)  # y_ij * logits_ij
    log_p = torch.nn.functional.logsigmoid(signed)  # log sigmoid(y * logits)
    if filter_threshold is not None:  # the seed: keep positives and confident-enough negatives, unweighted
        penalty = torch.exp(gamma * torch.nn.functional.logsigmoid(-signed.detach()))
        terms = log_p.masked_fill(~positive & (penalty <= filter_threshold), 0.0)
    else:
        terms = log_p if gamma == 0 else torch.exp(gamma * torch.nn.functional.logsigmoid(-signed)) * log_p
    loss = -terms.sum() / n
    if alpha:
        kl = torch.nn.functional.kl_div(logits.log_softmax(dim=1), logits.softmax(dim=0).T, reduction="batchmean")
        loss = loss + alpha * kl
    return loss


# --------------------------------------------------------------------------------------------------------------------
# SCE: Similarity Contrastive Estimation (Denize et al., WACV 2023; after juliendenize/eztorch)
# --------------------------------------------------------------------------------------------------------------------


def sce_loss(q: Tensor, k: Tensor, queue: Tensor, *, temperature: float, temperature_m: float,
             coeff: float) -> Tensor:
    """Similarity Contrastive Estimation: cross-entropy between a soft target built from the keys and the queries'
    softmax over the candidates (Denize et al. 2023, Sec. 3.2).

    ``q``, ``k`` and the queue rows are L2-normalised here. The candidates of anchor ``i`` are its own key ``k_i``
    (index 0) followed by the ``Q`` queue rows ``u_1..u_Q``; with ``c_i = [k_i, u_1, ..., u_Q]``::

        p_i   = softmax(q_i . c_i / temperature)                                   online distribution     [1 + Q]
        s_ij  = 1[j != 0] exp(k_i . c_ij / temperature_m) / sum_{l != 0} exp(k_i . c_il / temperature_m)
                                                                                   relational target
        w_i   = coeff * onehot_0 + (1 - coeff) * s_i                               target (no gradient)
        L     = -(1/B) sum_i sum_j w_ij log p_ij

    The positive is masked out of the relational part, as in the paper: ``s_i`` is the softmax of ``k_i`` against the
    queue only. ``coeff = 1`` is MoCo's InfoNCE ``cross_entropy([q_i.k_i, q_i.u] / temperature, 0)``; ``coeff = 0``
    is pure relational distillation (ReSSL-like). The target carries no gradient (computed from ``k`` detached): only
    ``q`` is trained. Computed in at least float32.

    Under DDP each worker passes its own ``q`` and ``k`` and the (identical) queue: the candidates are per-anchor
    (own key + queue), so, as in MoCo, no gather with gradient is needed; the mean over workers of the per-worker
    losses is the global batch's loss. The keys are gathered without gradient only to enqueue them.

    Args:
        q: ``[B, D]`` queries (online encoder + predictor).
        k: ``[B, D]`` keys (momentum encoder); row ``i`` is the positive of ``q[i]``.
        queue: ``[Q, D]``, ``Q >= 1``, past keys (negatives and relational anchors).
        temperature: ``tau > 0`` of the online logits.
        temperature_m: ``tau_m > 0`` of the relational (target) logits; sharper than ``tau`` in the paper.
        coeff: ``lambda`` in ``[0, 1]``, the weight of the one-hot (contrastive) part of the target.

    Returns:
        Scalar loss: the mean over the ``B`` anchors.
    """
    if q.ndim != 2 or k.shape != q.shape:
        raise ValueError(f"`q` and `k` must both have shape [B, D], but got shapes {tuple(q.shape)} and "
                         f"{tuple(k.shape)}")
    if q.shape[0] == 0:
        raise ValueError(f"`q` must hold at least one row, but got shape {tuple(q.shape)}")
    if queue.ndim != 2 or queue.shape[0] == 0 or queue.shape[1] != q.shape[1]:
        raise ValueError(f"`queue` must have shape [Q >= 1, D={q.shape[1]}], but got shape {tuple(queue.shape)}")
    if _number(temperature) and not temperature > 0:
        raise ValueError(f"`temperature > 0` must hold, but got temperature={temperature!r}")
    if _number(temperature_m) and not temperature_m > 0:
        raise ValueError(f"`temperature_m > 0` must hold, but got temperature_m={temperature_m!r}")
    if _number(coeff) and not 0 <= coeff <= 1:
        raise ValueError(f"`0 <= coeff <= 1` must hold, but got coeff={coeff!r}")
    dtype = torch.promote_types(q.dtype, torch.float32)
    q = torch.nn.functional.normalize(q.to(dtype), dim=1)
    queue = torch.nn.functional.normalize(queue.detach().to(dtype), dim=1)
    with torch.no_grad():
        k = torch.nn.functional.normalize(k.detach().to(dtype), dim=1)
        relational = torch.softmax(k @ queue.T / temperature_m, dim=1)  # s_i over the queue, [B, Q]
        target = torch.cat([torch.ones_like(relational[:, :1]) * coeff, (1 - coeff) * relational], dim=1)
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue.T], dim=1) / temperature  # [B, 1 + Q]
    return -(target * torch.log_softmax(logits, dim=1)).sum(1).mean()
# CMC: noise-contrastive estimation against a memory bank (Tian et al. 2019, eq. 12) and its softmax variant
# --------------------------------------------------------------------------------------------------------------------
__all__ += ["nce_loss", "nce_softmax_loss"]

NCE_EPS = 1e-7  # the reference's eps in the NCE denominators


def _check_scores(name: str, x: Tensor) -> None:
    if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 2:
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"`{name}` must have shape [B >= 1, 1 + K] with K >= 1 (the positive first, then K "
                         f"negatives), but got {name}={got}")


def nce_loss(probs: Tensor, *, n_data: int) -> Tensor:
    """NCE loss of CMC (Tian et al. 2019, eq. 12; the reference's ``NCECriterion``) with uniform noise ``Pn = 1/n_data``::

        h_ik = probs[i, k] = exp(s_ik / T) / Z          (k = 0: the positive, k >= 1: the K negatives)
        L = -(1/B) sum_i [ log(h_i0 / (h_i0 + K Pn + eps)) + sum_{k>=1} log(K Pn / (h_ik + K Pn + eps)) ]

    Args:
        probs: ``[B, 1 + K]`` unnormalised probabilities, the positive in column 0.
        n_data: size of the dataset the negatives are drawn from (rows of the memory bank).
    """
    _check_scores("probs", probs)
    if isinstance(n_data, bool) or not isinstance(n_data, int) or n_data < 1:
        raise ValueError(f"`n_data >= 1` must hold, but got n_data={n_data!r}")
    k = probs.shape[1] - 1
    noise = k / n_data  # K * Pn
    pos, neg = probs[:, 0], probs[:, 1:]
    log_d1 = torch.log(pos / (pos + noise + NCE_EPS))
    log_d0 = torch.log(noise / (neg + noise + NCE_EPS))
    return -(log_d1.sum() + log_d0.sum()) / probs.shape[0]


def nce_softmax_loss(logits: Tensor) -> Tensor:
    """Softmax variant of CMC's loss (the reference's ``NCESoftmaxLoss``): cross-entropy with the positive as target::

        L = -(1/B) sum_i log( exp(logits[i, 0]) / sum_k exp(logits[i, k]) ),   logits = s / T

    Args:
        logits: ``[B, 1 + K]`` scores divided by the temperature, the positive in column 0.
    """
    _check_scores("logits", logits)
    target = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    return torch.nn.functional.cross_entropy(logits, target)
