"""Per-step schedules as pure functions of the global optimiser step.

A schedule's value depends only on the step and its settings, never on how many steps this process has run, so a trial
resumed from a checkpoint (which restores the global step) continues every schedule exactly where it stopped. The
sigmoid-contrastive seed kept both schedules in local variables and restarted them on resume.

- :func:`gamma_at`: the confidence penalty ``gamma`` of the sigmoid loss, decayed from ``gamma0`` to 0 over ``T``
  steps (cosine, linear, or held constant then dropped).
- :func:`ema_beta_at`: the EMA coefficient of a momentum/target encoder, raised from ``beta0`` to 1 with BYOL's
  cosine (ReLIC's schedule); :func:`ema_action` says what the target does after a given step.
"""

from __future__ import annotations

import math
from typing import Literal

__all__ = ["GAMMA_SCHEDULES", "EmaAction", "GammaSchedule", "cosine_decay", "ema_action", "ema_beta_at",
           "gamma_at", "last_ema_update"]

GammaSchedule = Literal["cosine", "linear", "constant"]
GAMMA_SCHEDULES: tuple[str, ...] = ("cosine", "linear", "constant")
EmaAction = Literal["copy", "ema", "none"]


def _check_step(name: str, value: int, low: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"`{name} >= {low}` must hold (an integer), but got {name}={value!r}")


def cosine_decay(step: int, total_steps: int) -> float:
    """``(1 + cos(pi * min(step, T) / T)) / 2``: 1 at step 0, 1/2 at ``T/2``, 0 at and after ``T = total_steps``."""
    _check_step("step", step, 0)
    _check_step("total_steps", total_steps, 1)
    return (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps)) / 2.0


def gamma_at(step: int, *, gamma: float, scaling_steps: int | None = None, shape: GammaSchedule = "cosine") -> float:
    """The confidence penalty used by the loss of optimiser step ``step`` (0-based: the steps completed before it).

    ``scaling_steps=None``: ``gamma`` at every step (no scaling). Otherwise, with ``T = scaling_steps``::

        cosine:   gamma_t = gamma * (1 + cos(pi * t / T)) / 2   for t <= T      (the seed's schedule)
        linear:   gamma_t = gamma * (1 - t / T)                 for t <= T
        constant: gamma_t = gamma                               for t <  T
        and gamma_t = 0 for t >= T in every shape.
    """
    _check_step("step", step, 0)
    if not gamma >= 0:
        raise ValueError(f"`gamma >= 0` must hold, but got gamma={gamma!r}")
    if scaling_steps is None:
        return float(gamma)
    _check_step("scaling_steps", scaling_steps, 1)
    if shape == "cosine":
        return gamma * cosine_decay(step, scaling_steps)
    if shape == "linear":
        return gamma * max(0.0, 1.0 - step / scaling_steps)
    if shape == "constant":
        return float(gamma) if step < scaling_steps else 0.0
    raise ValueError(f"`shape` must be one of {', '.join(GAMMA_SCHEDULES)}; got shape={shape!r}")


def ema_action(step: int, *, after_step: int = 0, every_n_steps: int = 1) -> EmaAction:
    """What the target does after optimiser step ``step`` (1-based: the steps completed, including this one).

    ``"copy"`` while ``step <= after_step`` (the target is reset to the online network, the seed's warm-up); then
    ``"ema"`` on steps that are multiples of ``every_n_steps``, ``"none"`` on the others.
    """
    _check_step("step", step, 1)
    _check_step("after_step", after_step, 0)
    _check_step("every_n_steps", every_n_steps, 1)
    if step <= after_step:
        return "copy"
    return "ema" if step % every_n_steps == 0 else "none"


def last_ema_update(step: int, *, after_step: int = 0, every_n_steps: int = 1) -> int | None:
    """The latest step ``<= step`` after which an EMA update happened (:func:`ema_action` is ``"ema"``); None if none."""
    _check_step("step", step, 0)
    _check_step("after_step", after_step, 0)
    _check_step("every_n_steps", every_n_steps, 1)
    last = step - step % every_n_steps
    return last if last > after_step else None


def ema_beta_at(step: int, *, beta: float, total_steps: int, after_step: int = 0, every_n_steps: int = 1) -> float:
    """The EMA coefficient in effect after optimiser step ``step`` (1-based; 0 = before training).

    The update after step ``k`` is ``target <- lerp(target, online, 1 - beta_k)`` with (ReLIC, BYOL)::

        beta_k = 1 - (1 - beta) * (cos(pi * k / K) + 1) / 2,   K = total_steps,  beta_k = 1 for k >= K

    Between updates the value is that of the latest update (:func:`last_ema_update`), and ``beta`` before the first
    one, i.e. while ``step <= after_step``.
    """
    if not 0 <= beta <= 1:
        raise ValueError(f"`0 <= beta <= 1` must hold, but got beta={beta!r}")
    last = last_ema_update(step, after_step=after_step, every_n_steps=every_n_steps)
    if last is None:
        return float(beta)
    return 1.0 - (1.0 - beta) * cosine_decay(last, total_steps)
