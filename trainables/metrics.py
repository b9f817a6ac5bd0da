"""The metric names a trial reports: the loop's shared ones, declared once here, plus each method's extras.

A method declares its extras next to its hooks (``Method.epoch_metrics``, ``Method.final_metrics``, or
``Method.metrics(config)`` when they depend on the configuration); :func:`reported_metrics` joins them with the
shared names below. The sweep's objective check and the analysis tables read these lists instead of keeping their own.
Accuracies are fractions in [0, 1].
"""

from __future__ import annotations

from typing import Any, NamedTuple

__all__ = ["SHARED_EPOCH_METRICS", "SHARED_FINAL_METRICS", "MetricNames", "reported_metrics", "seed_probe_metric"]

#: Reported by every trial after every epoch.
SHARED_EPOCH_METRICS: tuple[str, ...] = (
    "epoch",
    "step",
    "train_loss",
    "knn_top1",
    "best_knn_top1",
    "current_lr",
    "epoch_time_s",
    "eval_time_s",
    "images_per_s",
    "peak_mem_mb",
)
#: Added by the final epoch's report (``logreg_top1`` only with ``logreg_probe=true``).
SHARED_FINAL_METRICS: tuple[str, ...] = ("linear_top1", "best_linear_top1", "linear_val_top1", "logreg_top1")


class MetricNames(NamedTuple):
    """Metric names split by when they are reported: after every epoch, or in the final report only."""

    epoch: tuple[str, ...]
    final: tuple[str, ...]

    @property
    def all(self) -> tuple[str, ...]:
        return (*self.epoch, *self.final)


def seed_probe_metric(method: str | type) -> str:
    """The final metric ``probe=seed`` adds for ``method``: ``seed_linear_top1`` or ``seed_logreg_top1``."""
    from trainables.methods import get_method

    cls = get_method(method) if isinstance(method, str) else method
    return f"seed_{cls.seed_probe}_top1"


def reported_metrics(method: str | type, config: Any = None, train: Any = None) -> MetricNames:
    """Shared metrics plus the extras of ``method`` (a name or a Method class) for ``config`` (the method's config)
    and ``train`` (the TrainConfig: ``probe=seed`` adds :func:`seed_probe_metric`). ``config=None`` and
    ``train=None`` give every name some configuration of the method may report; with ``config`` given and
    ``train=None``, TrainConfig's default (``probe=fast``) is assumed."""
    from trainables.methods import get_method

    cls = get_method(method) if isinstance(method, str) else method
    extras = cls.metrics(config)
    seed = train.probe == "seed" if train is not None else config is None
    final = (*SHARED_FINAL_METRICS, *extras.final, *((seed_probe_metric(cls),) if seed else ()))
    return MetricNames((*SHARED_EPOCH_METRICS, *extras.epoch), final)
