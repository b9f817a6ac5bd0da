"""Starting or joining Ray, and checking that the cluster can ever hold what a trial asks for.

Every Ray detail the project depends on lives here (DESIGN.md, "Ray 2.60 facts"): the Train controller's poll
interval, token auth when joining by address, the custom ``trial_driver`` resource that keeps Tune drivers from
starving Train workers, and the feasibility check that turns a would-be hang into a clear error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from trainables.config import ConfigError, check_range

__all__ = ["DRIVER_RESOURCE", "ClusterResources", "TrialResources", "check_feasible", "init_ray"]

#: Custom resource that acts as a semaphore for trial drivers (one unit per concurrent trial driver).
DRIVER_RESOURCE = "trial_driver"

#: Environment every Ray process gets: reports follow the epochs instead of waiting for the 2 s default poll.
RAY_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.2", "RAY_TRAIN_V2_ENABLED": "1", "PYTHONUNBUFFERED": "1"}


@dataclass(frozen=True)
class TrialResources:
    """What one trial needs: ``workers`` Train workers with ``cpus_per_worker`` CPUs and ``gpus_per_worker`` GPUs."""

    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0

    def __post_init__(self) -> None:
        check_range("workers", self.workers, low=1)
        check_range("cpus_per_worker", self.cpus_per_worker, low=0.0, low_inclusive=False)
        check_range("gpus_per_worker", self.gpus_per_worker, low=0.0)

    @property
    def worker_bundle(self) -> dict[str, float]:
        bundle = {"CPU": self.cpus_per_worker}
        if self.gpus_per_worker:
            bundle["GPU"] = self.gpus_per_worker
        return bundle


@dataclass(frozen=True)
class ClusterResources:
    """Resources of each alive node: a list of ``{"CPU": .., "GPU": .., ...}`` dicts."""

    nodes: tuple[dict[str, float], ...]

    @classmethod
    def from_ray(cls) -> ClusterResources:
        import ray

        return cls(tuple(dict(n["Resources"]) for n in ray.nodes() if n.get("Alive")))

    @classmethod
    def local(cls, num_cpus: int | None = None, num_gpus: int | None = None) -> ClusterResources:
        return cls(({"CPU": float(num_cpus or os.cpu_count() or 1), "GPU": float(num_gpus or 0)},))

    def total(self, key: str) -> float:
        return sum(n.get(key, 0.0) for n in self.nodes)

    def describe(self) -> str:
        parts = [", ".join(f"{v:g} {k}" for k, v in sorted(n.items()) if k in ("CPU", "GPU") or k == DRIVER_RESOURCE)
                 for n in self.nodes]
        return f"{len(self.nodes)} node(s): " + "; ".join(f"[{p}]" for p in parts)


def check_feasible(need: TrialResources, cluster: ClusterResources, *, autoscaling: bool = False) -> None:
    """Raise ConfigError unless the cluster can hold one trial: every worker bundle must fit on some node, and the
    cluster as a whole must hold all of them. With an autoscaler, node types it may add are the caller's to check."""
    if autoscaling:
        return
    bundle = need.worker_bundle
    fits = [n for n in cluster.nodes if all(n.get(k, 0.0) >= v for k, v in bundle.items())]
    asked = f"{need.workers} worker(s) x {{{', '.join(f'{v:g} {k}' for k, v in bundle.items())}}}"
    if not fits:
        raise ConfigError(f"`resources` cannot be met: one trial asks for {asked}, but no node has that much; "
                          f"the cluster has {cluster.describe()}")
    capacity = sum(min(int(n.get(k, 0.0) // v) for k, v in bundle.items() if v) for n in fits)
    if capacity < need.workers:
        raise ConfigError(f"`workers` cannot be met: one trial asks for {asked}, but the cluster holds only "
                          f"{capacity} such worker(s); it has {cluster.describe()}")


def init_ray(address: str | None = None, *, num_cpus: int | None = None, num_gpus: int | None = None,
             driver_slots: int | None = None, log_dir: str | None = None, log_to_driver: bool = False) -> Any:
    """Start a local Ray (``address=None``) or join one. Returns the ``ray`` module.

    A local Ray gets ``driver_slots`` units of the ``trial_driver`` resource (default: its CPU count) and the
    dashboard process, whose State API Train's placement-group cleaner needs (leaked placement groups otherwise hang
    sweeps). Joining a cluster started with ``ray start`` (token auth since Ray 2.59) sets ``RAY_AUTH_MODE=token``.
    ``log_to_driver`` forwards the workers' output (per-epoch progress lines) to this process.
    """
    for key, value in RAY_ENV.items():
        os.environ.setdefault(key, value)
    if address:
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    import ray

    if ray.is_initialized():
        return ray
    kwargs: dict[str, Any] = dict(runtime_env={"env_vars": dict(RAY_ENV)}, log_to_driver=log_to_driver,
                                  logging_level="ERROR", configure_logging=True)
    if address:
        ray.init(address=address, **kwargs)
        return ray
    cpus = num_cpus or os.cpu_count() or 1
    ray.init(num_cpus=cpus, num_gpus=num_gpus, resources={DRIVER_RESOURCE: driver_slots or cpus},
             include_dashboard=True, _temp_dir=log_dir, **kwargs)
    return ray
