"""A sweep's description, Ray-free: what ``csweep run`` validated and saved, what ``csweep resume``/``status`` and
:mod:`analysis` read back.

:class:`SweepConfig` (saved as ``<storage>/<name>/sweep.json`` by :func:`write_sweep_file`), its objectives
(:func:`parse_objective`, checked against :func:`known_metrics`) and the one vocabulary of trial statuses that the
terminal tables and the Parquet tables share. Importing this module imports no Ray.
"""

from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from search.cluster import TrialResources
from trainables.config import ConfigError, TrainConfig, check_choice, check_literals, check_range

__all__ = [
    "ABANDONED",
    "COMPLETED",
    "DIVERGED",
    "ERRORED",
    "EXECUTORS",
    "FUSE_SCHEDULERS",
    "PAUSED",
    "PENDING",
    "POPULATION_SCHEDULERS",
    "RUNNING",
    "SAMPLERS",
    "SCHEDULERS",
    "STATUSES",
    "STOPPED",
    "SWEEP_FILE",
    "Objective",
    "SweepConfig",
    "known_metrics",
    "parse_objective",
    "read_sweep_file",
    "write_sweep_file",
]

SWEEP_FILE = "sweep.json"
Executor = Literal["auto", "train", "inline"]
Scheduler = Literal["asha", "hyperband", "fifo", "pbt", "pb2"]
Sampler = Literal["tpe", "random", "cmaes", "gp", "nsga2"]
EXECUTORS: tuple[str, ...] = typing.get_args(Executor)
SCHEDULERS: tuple[str, ...] = typing.get_args(Scheduler)
SAMPLERS: tuple[str, ...] = typing.get_args(Sampler)
#: schedulers that train a population and perturb its settings mid-run (Ray Tune's PBT / PB2; no Optuna searcher)
POPULATION_SCHEDULERS = ("pbt", "pb2")
#: schedulers of a fused sweep (--fuse K): its members are stopped by search/fusion.py's own ASHA rungs
FUSE_SCHEDULERS = ("asha", "fifo")

# -- trial statuses: one vocabulary for `csweep run`/`status` tables and trials.parquet --------------------------------
COMPLETED = "completed"  # ran to its last epoch (final probes reported)
STOPPED = "stopped"  # stopped early by the scheduler
ERRORED = "errored"  # raised an error
DIVERGED = "diverged"  # errored because the loss became non-finite (Parquet only: needs the error text)
RUNNING = "running"
PENDING = "pending"
PAUSED = "paused"
ABANDONED = "abandoned"  # its driver died before Tune recorded it (Parquet only); a resumed sweep samples it again
STATUSES = (COMPLETED, STOPPED, ERRORED, DIVERGED, RUNNING, PENDING, PAUSED, ABANDONED)

def known_metrics(*, per_epoch: bool = False) -> set[str]:
    """Every metric name some trial reports (``per_epoch``: only those reported after every epoch): the loop's shared
    metrics (``trainables.metrics``) plus each registered method's declared extras, for any configuration."""
    from trainables.methods import METHODS
    from trainables.metrics import reported_metrics

    names: set[str] = set()
    for cls in METHODS.values():
        reported = reported_metrics(cls)
        names |= set(reported.epoch if per_epoch else reported.all)
    return names


@dataclass(frozen=True)
class Objective:
    """One metric to optimise and its direction."""

    metric: str
    mode: Literal["max", "min"] = "max"


def parse_objective(text: str) -> tuple[Objective, ...]:
    """``"knn_top1"`` or ``"knn_top1:max,epoch_time_s:min"`` -> Objectives; ConfigError names unknown metrics."""
    out = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        metric, _, mode = part.partition(":")
        mode = mode or ("min" if metric.endswith(("_s", "_mb", "loss")) else "max")
        check_choice("objective mode", mode, ("max", "min"))
        if metric not in known_metrics():
            raise ConfigError(
                f"`objective` metric {metric!r} is not reported by any trial; choose from "
                f"{', '.join(sorted(known_metrics()))}"
            )
        out.append(Objective(metric, mode))  # type: ignore[arg-type]
    if not out:
        raise ConfigError(f"`objective` must name at least one metric, but got objective={text!r}")
    return tuple(out)


@dataclass(frozen=True)
class SweepConfig:
    """Everything a sweep needs, JSON-serialisable (saved as ``<storage>/<name>/sweep.json``)."""

    name: str
    space: str
    storage_path: str
    fixed: dict[str, Any] = field(default_factory=dict)  # settings every trial shares (--set, --dataset, ...)
    trials: int = 20  # sampled configurations (Tune runs trials * repeats)
    repeats: int = 1  # seeds per sampled configuration
    concurrency: int | None = None  # None: derived from the cluster and one trial's resources
    workers: int = 1
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    executor: Executor = "auto"
    scheduler: Scheduler = "asha"
    grace_period: int | None = None  # None: 10 % of the epochs (contrastive runs rank poorly early)
    reduction_factor: float = 3.0
    sampler: Sampler = "tpe"
    objective: tuple[Objective, ...] = (Objective("knn_top1", "max"),)
    seed: int = 0
    study_storage: str | None = None  # Optuna storage URL; None: SQLite file in the experiment directory
    max_failures: int = 1  # Tune retries of a failed trial (from its last checkpoint)
    perturbation_interval: int | None = None  # pbt/pb2: epochs between exploit/explore steps (None: 10 % of epochs)
    memory_per_worker_mb: float | None = None  # Ray `memory` resource and RSS limit per worker; None: no limit
    pending_timeout_s: float = 600.0  # a trial pending this long while none of the sweep runs stops the sweep
    fuse: int = 1  # configurations trained as one fused model per Tune trial (search/fusion.py)

    def __post_init__(self) -> None:
        check_range("trials", self.trials, low=1)
        check_range("repeats", self.repeats, low=1)
        if self.concurrency is not None:
            check_range("concurrency", self.concurrency, low=1)
        check_literals(self)
        check_range("reduction_factor", self.reduction_factor, low=1.0, low_inclusive=False)
        if self.grace_period is not None:
            check_range("grace_period", self.grace_period, low=1)
            epochs = self.fixed.get("epochs", TrainConfig().epochs)
            if isinstance(epochs, int) and self.grace_period > epochs:
                raise ConfigError(f"`grace_period <= epochs` must hold, but got grace_period={self.grace_period}, "
                                  f"epochs={epochs}")
        if self.executor == "inline" and self.workers > 1:
            raise ConfigError(f"`executor=inline` runs one worker per trial, but got executor=inline, "
                              f"workers={self.workers}; use --executor train (or auto) for several workers")
        check_range("max_failures", self.max_failures, low=0)
        check_range("pending_timeout", self.pending_timeout_s, low=0.0, low_inclusive=False)
        if not self.name or "/" in self.name:
            raise ConfigError(f"`name` must be a non-empty name without '/', but got name={self.name!r}")
        if self.repeats > 1 and len(self.objective) > 1:
            raise ConfigError(
                "`repeats` > 1 averages one objective over seeds; it cannot be combined with a "
                f"multi-objective `objective` ({len(self.objective)} metrics)"
            )
        if self.scheduler in POPULATION_SCHEDULERS:
            self._check_population()
        check_range("fuse", self.fuse, low=1)
        if self.fuse > 1:
            self._check_fuse()
        if self.sampler == "cmaes" and len(self.objective) > 1:
            raise ConfigError("`sampler=cmaes` is single-objective; use nsga2, tpe or random for several objectives")

    def _check_fuse(self) -> None:
        what = f"`fuse={self.fuse}`"
        if self.resolved_executor != "inline":
            raise ConfigError(f"{what} trains its members in one process: it needs one-worker inline trials, but got "
                              f"executor={self.executor}, workers={self.workers}")
        if self.scheduler not in FUSE_SCHEDULERS:
            raise ConfigError(f"{what} stops members early with ASHA rungs of its own; `scheduler` must be one of "
                              f"{', '.join(FUSE_SCHEDULERS)}, but got scheduler={self.scheduler}")
        if self.repeats > 1 or len(self.objective) > 1:
            raise ConfigError(f"{what} tells each member's Optuna trial one value; it cannot be combined with "
                              f"repeats={self.repeats} or a multi-objective `objective` ({len(self.objective)} metrics)")

    def _check_population(self) -> None:
        what = f"`scheduler={self.scheduler}`"
        if self.repeats > 1 or len(self.objective) > 1:
            raise ConfigError(f"{what} trains one population on one objective; it cannot be combined with "
                              f"repeats={self.repeats} or a multi-objective `objective` ({len(self.objective)} metrics)")
        if self.resolved_executor != "inline":
            raise ConfigError(f"{what} runs one-worker inline trials (a clone resumes from another trial's "
                              f"checkpoint); got executor={self.executor}, workers={self.workers}")
        if self.perturbation_interval is not None:
            check_range("perturbation_interval", self.perturbation_interval, low=1)
            epochs = self.fixed.get("epochs", TrainConfig().epochs)
            if isinstance(epochs, int) and self.perturbation_interval >= epochs:
                raise ConfigError(f"`perturbation_interval < epochs` must hold, but got perturbation_interval="
                                  f"{self.perturbation_interval}, epochs={epochs}")

    # -- derived -------------------------------------------------------------------------------------------------------
    @property
    def resources(self) -> TrialResources:
        return TrialResources(self.workers, self.cpus_per_worker, self.gpus_per_worker, self.memory_per_worker_mb)

    @property
    def resolved_executor(self) -> str:
        if self.executor != "auto":
            return self.executor
        return "inline" if self.workers == 1 else "train"

    @property
    def experiment_path(self) -> str:
        return f"{self.storage_path.rstrip('/')}/{self.name}"

    @property
    def is_local_storage(self) -> bool:
        return "://" not in self.storage_path or self.storage_path.startswith("file://")

    @property
    def study_url(self) -> str:
        if self.study_storage:
            return self.study_storage
        if self.is_local_storage:
            return f"sqlite:///{Path(self.experiment_path.removeprefix('file://'))}/study.db"
        # remote storage: keep the study on the driver node (a job's working dir is temporary)
        return f"sqlite:///{Path.home() / '.csweep' / 'studies' / self.name}.db"

    @property
    def epochs(self) -> int:
        return int(self.fixed.get("epochs", TrainConfig().epochs))

    @property
    def resolved_grace_period(self) -> int:
        """ASHA's grace period in epochs: ``grace_period``, else 10 % of the epochs (at least 1, at most all)."""
        return min(self.grace_period or max(1, math.ceil(0.1 * self.epochs)), self.epochs)

    @property
    def resolved_perturbation_interval(self) -> int:
        """PBT/PB2's perturbation interval in epochs: ``perturbation_interval``, else 10 % of the epochs (>= 1)."""
        return self.perturbation_interval or max(1, math.ceil(0.1 * self.epochs))

    @property
    def scheduler_objective(self) -> Objective:
        """The metric the scheduler stops on: the first objective reported every epoch, else knn_top1."""
        for o in self.objective:
            if o.metric in known_metrics(per_epoch=True):
                return o
        return Objective("knn_top1", "max")

    # -- persistence ---------------------------------------------------------------------------------------------------
    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        d["objective"] = [dataclasses.asdict(o) for o in self.objective]
        return json.dumps(d, indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> SweepConfig:
        d = json.loads(text)
        d["objective"] = tuple(Objective(**o) for o in d["objective"])
        return cls(**d)


def write_sweep_file(cfg: SweepConfig) -> None:
    """Save the SweepConfig beside Tune's experiment state (any storage pyarrow understands)."""
    import pyarrow.fs

    fs, path = pyarrow.fs.FileSystem.from_uri(
        cfg.experiment_path
        if not cfg.is_local_storage
        else str(Path(cfg.experiment_path.removeprefix("file://")).resolve())
    )
    fs.create_dir(path, recursive=True)
    with fs.open_output_stream(f"{path}/{SWEEP_FILE}") as f:
        f.write(cfg.to_json().encode())


def read_sweep_file(experiment_path: str) -> SweepConfig:
    """The SweepConfig saved in ``experiment_path``; ConfigError (field ``name``) when there is none."""
    import pyarrow.fs

    uri = experiment_path if "://" in experiment_path else str(Path(experiment_path).resolve())
    fs, path = pyarrow.fs.FileSystem.from_uri(uri)
    try:
        with fs.open_input_stream(f"{path}/{SWEEP_FILE}") as f:
            text = f.read().decode(errors="replace")
    except (FileNotFoundError, OSError) as e:
        raise ConfigError(f"`name`: no sweep at {experiment_path} (missing {SWEEP_FILE})") from e
    try:
        return SweepConfig.from_json(text)
    except ConfigError as e:
        raise ConfigError(f"`name`: {experiment_path}/{SWEEP_FILE} holds an invalid sweep: {e}") from e
    except (ValueError, TypeError, KeyError, AttributeError) as e:
        reason = f"{type(e).__name__}: {e}".splitlines()[0]
        raise ConfigError(f"`name`: {experiment_path}/{SWEEP_FILE} cannot be read as a sweep of this csweep version "
                          f"({reason}); nothing was changed") from e
