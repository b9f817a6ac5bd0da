"""Sweeps: a search space + fixed settings + budget -> a Ray Tune ``Tuner`` with OptunaSearch and an early-stopping
scheduler, persisted so that ``csweep resume`` and ``csweep status`` can find it again.

Each Tune trial runs :func:`trial_driver`, a small function that builds the trial's :class:`TrialSpec` and either
starts a Ray Train ``TorchTrainer`` (``executor="train"``: one or more DDP workers, reporting to Tune through
``TuneReportCallback``) or, for single-worker trials, runs the loop in the Tune actor itself (``executor="inline"``:
no controller, worker group or process group to start, and Tune reuses the actor across trials).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from search.cluster import DRIVER_RESOURCE, ClusterResources, check_feasible
from search.spec import POPULATION_SCHEDULERS, SweepConfig
from trainables.config import ConfigError
from trainables.trial import TrialSpec, prepare_trial, trial_settings

__all__ = [
    "build_tuner",
    "capacity",
    "fail_orphaned_study_trials",
    "restore_tuner",
    "trial_dirname",
    "trial_driver",
    "trial_name",
    "validate_sweep",
]

logger = logging.getLogger(__name__)


def _spec(fixed: Mapping[str, Any], sampled: Mapping[str, Any]) -> TrialSpec:
    return TrialSpec.from_settings(*trial_settings(fixed, sampled))


# ---------------------------------------------------------------------------------------------------------------------
# What a Tune trial runs


class TuneReporter:
    """Reporter for :func:`trainables.loop.fit` running inline in a Tune actor: one ``tune.report`` per epoch.
    ``settings`` are reported with every epoch too (a population sweep's current perturbable settings, which then
    form each trial's settings history in epochs.parquet)."""

    def __init__(self, settings: Mapping[str, Any] | None = None, *, trial_id: str | None = None,
                 cloned_from: str | None = None, history: list[dict] | None = None) -> None:
        self.settings = dict(settings or {})
        self.trial_id = trial_id  # stamped into each checkpoint, so a PBT clone knows whose weights it took
        self.cloned_from = cloned_from  # reported once, with the first epoch after the clone
        self.history = list(history or [])  # (epoch, trial, settings) of the weights' lineage, from the checkpoint

    def report(self, metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
        import torch
        from ray import tune

        from search.driver import worker_facts
        from search.runs import STATE_FILE

        metrics = {**metrics, **worker_facts(), **self.settings}
        if self.cloned_from is not None:
            metrics["cloned_from"], self.cloned_from = self.cloned_from, None
        if self.trial_id is not None:
            # the lineage travels with the weights (a resumed or cloned trial's earlier result rows may be gone);
            # the last epoch reports all of it as JSON (`lineage` in epochs.parquet)
            entry = {"epoch": int(metrics["epoch"]), "trial": self.trial_id, **self.settings}
            self.history = [h for h in self.history if h["epoch"] < entry["epoch"]] + [entry]
            if metrics.get("finished"):
                metrics["lineage"] = json.dumps(self.history)
            if state is not None:
                state = {**state, "csweep_trial": self.trial_id, "csweep_history": self.history}
        if state is None:
            tune.report(metrics)
            return

        with tempfile.TemporaryDirectory(prefix="csweep-ckpt-") as tmp:
            torch.save(state, Path(tmp) / STATE_FILE)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))


def trial_driver(config: dict[str, Any], sweep: dict[str, Any]) -> None:
    """The Tune trainable (a module-level function, so Tune can pickle and restore it).

    ``config`` holds the sampled parameters; ``sweep`` the SweepConfig as a dict. The Train run is named from the
    Tune trial id, so a restored trial finds its own Train checkpoints again.
    """
    from ray import tune

    from search.fusion import FUSED, run_fused_trial

    perturbed = tuple(sweep.get("__perturbable__", ()))
    cfg = SweepConfig.from_json(json.dumps({k: v for k, v in sweep.items() if k != "__perturbable__"}))
    trial_id = tune.get_context().get_trial_id()
    if FUSED in config:
        run_fused_trial(config, cfg)
        return
    config = {k: v for k, v in config.items() if v is not None}  # a population's placeholder for an unset key
    spec = _spec(cfg.fixed, config)
    if cfg.resolved_executor == "inline":
        from search.runs import read_checkpoint, set_threads
        from trainables.loop import fit

        set_threads(spec.train.num_threads, cfg.cpus_per_worker)
        checkpoint = tune.get_checkpoint()
        state = None
        if checkpoint is not None:
            with checkpoint.as_directory() as path:
                state = read_checkpoint(path)
        reporter = TuneReporter()
        if perturbed:  # PBT: a trial may start from another's checkpoint with perturbed settings
            if state is not None:
                state["spec"] = {**state["spec"], **{k: v for k, v in spec.flat().items() if k in perturbed}}
            donor = state.get("csweep_trial") if state is not None else None
            reporter = TuneReporter({k: config[k] for k in perturbed if k in config}, trial_id=trial_id,
                                    cloned_from=donor if donor not in (None, trial_id) else None,
                                    history=state.get("csweep_history") if state is not None else None)
        fit(spec, reporter=reporter, resume_state=state, memory_limit_mb=cfg.memory_per_worker_mb)
        return
    from ray.tune.integration.ray_train import TuneReportCallback

    from search.driver import build_trainer

    trainer = build_trainer(
        spec,
        cfg.resources,
        name=f"train_{trial_id}",
        storage_path=f"{cfg.experiment_path}/train_runs",
        callbacks=[TuneReportCallback()],
        max_failures=0,
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error


def _trainable(cfg: SweepConfig, perturbable: tuple[str, ...] = ()):
    from ray import tune

    sweep = json.loads(cfg.to_json())
    if perturbable:
        sweep["__perturbable__"] = list(perturbable)
    fn = tune.with_parameters(trial_driver, sweep=sweep)
    if cfg.resolved_executor == "inline":
        return tune.with_resources(fn, cfg.resources.worker_bundle)
    # Train-in-Tune: the driver holds no CPU (its workers do) but one unit of the driver semaphore, so Tune can
    # never start more drivers than there are worker slots (DESIGN.md: the Train-in-Tune deadlock).
    return tune.with_resources(fn, {"CPU": 0, DRIVER_RESOURCE: 1})


# ---------------------------------------------------------------------------------------------------------------------
# Validation and construction


def capacity(cfg: SweepConfig, cluster: ClusterResources) -> int:
    """How many trials the cluster can run at once (with an autoscaler: once every node it may add is up; when its
    node types are unknown, one per trial-driver slot)."""
    per_trial = cfg.resources
    if cluster.autoscaling and cluster.addable is None:
        return max(1, int(cluster.total(DRIVER_RESOURCE)))
    workers = sum(per_trial.workers_per_node(node) for node in cluster.at_peak().nodes)
    n = workers // per_trial.workers
    if cfg.resolved_executor == "train":
        n = min(n, int(cluster.total(DRIVER_RESOURCE)))
    return max(0, n)


def validate_sweep(
    cfg: SweepConfig, *, cluster: ClusterResources | None, autoscaling: bool = False, dry_run_samples: int = 16
) -> None:
    """Check a sweep before anything launches: the space loads and every configuration it produces is a valid
    trial, the dataset is there, the study storage opens, the cluster can hold one trial. Raises ConfigError."""
    import optuna

    from spaces import load_space

    space = load_space(cfg.space)
    fixed = {**space.fixed, **cfg.fixed}
    cfg = dataclasses.replace(cfg, fixed=fixed)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=cfg.seed))
    for point in space.points_to_evaluate:
        study.enqueue_trial(point)
    checked: set[tuple] = set()
    reported: dict[str, set[str]] = {}  # method -> metrics some sampled configuration reports
    for _ in range(dry_run_samples):
        trial = study.ask()
        try:
            returned = space.space(trial, fixed) or {}
            sampled = {**trial.params, **returned}
        except Exception as e:  # a user's space with a bug: one line, not a traceback
            raise ConfigError(f"`space` {cfg.space!r} raised {type(e).__name__}: {e}") from e
        method, settings = trial_settings(fixed, sampled)
        key = (method, tuple(sorted(settings)))
        if key not in checked:  # one dataset / world-size check per distinct structure
            spec = prepare_trial(method, settings, workers=cfg.workers, gpus_per_worker=cfg.gpus_per_worker)
            checked.add(key)
        else:
            spec = _spec(fixed, sampled)
        if cfg.fuse > 1:
            from trainables.fused import check_fusable

            check_fusable([spec])  # settings no fused trial can have (compile, fp16): FuseError names them
        reported.setdefault(method, set()).update(_reported(spec))
        study.tell(trial, 0.0)
    _check_objective_reported(cfg, reported)
    _check_fixed_used(cfg, fixed, set(reported))
    if cfg.scheduler in POPULATION_SCHEDULERS:
        check_population(cfg, space)
    if cluster is not None:
        check_feasible(cfg.resources, cluster, autoscaling=autoscaling)
        if cfg.resolved_executor == "train" and not autoscaling and cluster.total(DRIVER_RESOURCE) < 1:
            raise ConfigError(
                f"`resources`: Train-based trials need the custom resource {DRIVER_RESOURCE!r} on the "
                f"node that runs trial drivers (see cluster.yaml); the cluster has {cluster.describe()}"
            )
    _check_study_storage(cfg)


def _check_fixed_used(cfg: SweepConfig, fixed: Mapping[str, Any], methods: set[str]) -> None:
    """A fixed setting that no sampled method has would be dropped from every trial: refuse it."""
    from trainables.trial import foreign_setting_error

    for key in sorted(fixed):
        errors = [foreign_setting_error(key, m) for m in sorted(methods)]
        if methods and all(errors):
            raise ConfigError(f"{errors[0]}; space {cfg.space!r} samples only {', '.join(sorted(methods))}")


def _check_study_storage(cfg: SweepConfig) -> None:
    """The study storage can be opened, creating nothing: the default SQLite file's directory must be creatable
    (the file itself is made when the sweep starts); a URL the user gave is opened."""
    if cfg.study_storage is None and cfg.study_url.startswith("sqlite:///"):
        path = Path(cfg.study_url.removeprefix("sqlite:///"))
        existing = next(p for p in (path, *path.parents) if p.exists())
        if existing == path and not path.is_file() or existing != path and not existing.is_dir():
            raise ConfigError(f"`storage_path`: the study file {str(path)!r} cannot be created "
                              f"({str(existing)!r} is in the way)")
        if not os.access(existing if existing.is_dir() else existing.parent, os.W_OK):
            raise ConfigError(f"`storage_path`: {str(existing)!r} is not writable")
        if path.is_file():
            _open_storage(cfg)
        return
    _open_storage(cfg)


def _open_storage(cfg: SweepConfig) -> None:
    import optuna

    try:
        optuna.storages.RDBStorage(cfg.study_url)
    except Exception as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"`study_storage` {cfg.study_url!r} cannot be opened: {reason}") from e


def _reported(spec) -> tuple[str, ...]:
    from trainables.metrics import reported_metrics

    return reported_metrics(spec.method, spec.method_config, spec.train).all


def _check_objective_reported(cfg: SweepConfig, reported: Mapping[str, set[str]]) -> None:
    """Each objective metric must be reported by some configuration of every method the space samples."""
    for o in cfg.objective:
        for method, names in sorted(reported.items()):
            if o.metric not in names:
                raise ConfigError(f"`objective` metric {o.metric!r} is not reported by method={method} in space "
                                  f"{cfg.space!r}; it reports {', '.join(sorted(names))}")


def _make_default_study_dir(cfg: SweepConfig) -> None:
    """Create the directory of the default SQLite study (the user's own URL is taken as given)."""
    if cfg.study_storage is None and cfg.study_url.startswith("sqlite:///"):
        Path(cfg.study_url.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)


def _sampler(cfg: SweepConfig):
    import optuna

    s = cfg.sampler
    if s == "tpe":  # constant_liar: concurrent trials do not all pile onto the same promising point
        return optuna.samplers.TPESampler(seed=cfg.seed, constant_liar=True, multivariate=True)
    if s == "random":
        return optuna.samplers.RandomSampler(seed=cfg.seed)
    if s == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=cfg.seed, warn_independent_sampling=False)
    if s == "gp":
        return optuna.samplers.GPSampler(seed=cfg.seed)
    return optuna.samplers.NSGAIISampler(seed=cfg.seed)


def _scheduler(cfg: SweepConfig):
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, HyperBandScheduler

    obj = cfg.scheduler_objective
    epochs = cfg.epochs
    if cfg.scheduler == "fifo":
        return FIFOScheduler()
    if cfg.scheduler == "hyperband":
        return HyperBandScheduler(
            time_attr="epoch", metric=obj.metric, mode=obj.mode, max_t=epochs, reduction_factor=cfg.reduction_factor
        )
    # time_attr="epoch": reported by the workers, so it stays right after a trial is retried from a checkpoint
    return ASHAScheduler(
        time_attr="epoch",
        metric=obj.metric,
        mode=obj.mode,
        max_t=epochs,
        grace_period=cfg.resolved_grace_period,
        reduction_factor=cfg.reduction_factor,
    )


def _searcher(cfg: SweepConfig, space):
    import functools

    import optuna

    metrics = [o.metric for o in cfg.objective]
    modes = [o.mode for o in cfg.objective]
    _make_default_study_dir(cfg)
    cls, extra = _study_search_class(), {}
    if cfg.fuse > 1:
        from search.fusion import fused_search_class

        cls, extra = fused_search_class(), dict(fuse=cfg.fuse, budget=cfg.trials, fixed=dict(cfg.fixed))
    searcher = cls(
        **extra,
        experiment_path=cfg.experiment_path,
        fixed_method=cfg.fixed.get("method"),
        space=functools.partial(space.space, fixed=dict(cfg.fixed)),
        metric=metrics[0] if len(metrics) == 1 else metrics,
        mode=modes[0] if len(modes) == 1 else modes,
        points_to_evaluate=[p for p in space.points_to_evaluate if _point_valid(p, cfg)] or None,
        sampler=_sampler(cfg),
        study_name=cfg.name,
        storage=optuna.storages.RDBStorage(cfg.study_url),
    )
    if cfg.repeats > 1:
        return _seed_repeater_class()(searcher, repeat=cfg.repeats, set_index=True)
    return searcher


@functools.cache
def _seed_repeater_class():
    """Tune's ``Repeater`` (``--repeats``: K seeds of one configuration, one Optuna trial) telling Optuna what the
    seeds did, not only their mean.

    Tune's Repeater passes the inner searcher only ``{metric: nanmean of the seeds' last values}``: a configuration
    whose seeds the scheduler stopped early, or one of whose seeds errored (diverged), was told COMPLETE with that
    mean, ranked beside configurations whose every seed ran to the end. Here the group's outcome is: any seed
    errored -> FAIL (``csweep_error`` from that seed's ``error.txt``); else any seed stopped early -> PRUNED, with the
    mean of the seeds' last values reported at the smallest epoch they reached; else COMPLETE with the mean. Optuna
    gets no per-epoch intermediate values for repeated configurations (the seeds' epochs are not aligned in time).
    """
    import numpy as np
    from ray.tune.search import Repeater

    class SeedRepeater(Repeater):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._last: dict[str, dict] = {}  # trial id -> its last result (kept in the searcher's saved state)
            self._errored: list[str] = []

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            self._last[trial_id] = {k: result[k] for k in ("epoch", "finished", self.searcher.metric) if k in result}

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False, **kwargs):
            group = self._trial_id_to_group.get(trial_id)
            if group is None:
                return super().on_trial_complete(trial_id, result, error=error, **kwargs)
            if result:
                self.on_trial_result(trial_id, result)
            if error:
                self._errored.append(trial_id)
            metric = self.searcher.metric
            last = self._last.get(trial_id, {})
            group.report(trial_id, last.get(metric, np.nan) if not error else np.nan)
            if not group.finished_reporting():
                return None
            ids = [t for t, g in self._trial_id_to_group.items() if g is group]
            lasts = [self._last.get(t, {}) for t in ids]
            errored = [t for t in ids if t in self._errored]
            values = [x[metric] for x in lasts if metric in x]
            combined = {metric: float(np.mean(values))} if values else {}
            epochs = [x["epoch"] for x in lasts if "epoch" in x]
            if epochs:
                combined.update(epoch=min(epochs), finished=all(x.get("finished") for x in lasts))
            return self.searcher.on_trial_complete(group.primary_trial_id, result=combined, error=bool(errored),
                                                   error_trial_id=errored[0] if errored else None)

    return SeedRepeater


@functools.cache
def _study_search_class():
    """OptunaSearch that keeps the study's record true to what Tune did (ARCHITECTURE.md, "Optuna's record").

    - intermediate values are reported per ``epoch`` (stable across retries), and results lacking the objective
      (final-only probes) are skipped;
    - a trial the scheduler stopped early (its last result lacks ``finished``) is told PRUNED, its last value
      reported first, so it is not ranked beside full runs; an errored trial is FAIL with the first line naming the
      error as user attribute ``csweep_error``; a finished one is COMPLETE;
    - each Optuna trial carries ``tune_trial_id`` and ``tune_trial_dir`` (local storage) as user attributes.
    """
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    from analysis.tune_files import experiment_state

    State = optuna.trial.TrialState

    class StudySearch(OptunaSearch):
        def __init__(self, *args, experiment_path: str, fixed_method: str | None = None, **kwargs):
            super().__init__(*args, **kwargs)
            self._experiment_path = experiment_path
            self._fixed_method = fixed_method
            self._max_concurrent = 0  # Tune's max_concurrent_trials, enforced here (set_max_concurrency)
            self._running: set[str] = set()  # Tune trials suggested and not yet complete

        # -- concurrency -------------------------------------------------------------------------------------------
        def set_max_concurrency(self, max_concurrent: int) -> bool:
            """Limit concurrency here rather than in Tune's ``ConcurrencyLimiter``: on resume the limiter's list of
            live trials comes from a snapshot that may predate trials Tune restores, and it silently drops their
            ``on_trial_complete``, so their ends would never reach the study. Here ``restore`` rebuilds the list
            from the experiment state Tune restores."""
            self._max_concurrent = max_concurrent
            return True

        def _full(self) -> bool:
            return bool(self._max_concurrent) and len(self._running) >= self._max_concurrent

        def restore(self, checkpoint_path: str) -> None:
            self._running = None  # type: ignore[assignment]  # a snapshot older than this limit leaves it None
            super().restore(checkpoint_path)
            if self._running is None:  # Tune's ConcurrencyLimiter comes back limiting: leave the limiting to it
                self._running, self._max_concurrent = set(), 0
                return
            root = self._local_root()
            self._restored = experiment_state(root) if root is not None else {}  # what Tune restores
            if root is not None:  # remote storage: the snapshot's set stands
                self._running = {t for t, s in self._restored.items() if s.get("status") != "TERMINATED"}

        def suggest(self, trial_id: str):
            if self._full():
                return None
            config = super().suggest(trial_id)
            if config is not None:
                self._running.add(trial_id)
            if trial_id in self._ot_trials:
                self._ot_trials[trial_id].set_user_attr("tune_trial_id", trial_id)
                if isinstance(config, dict):
                    self._note_expected_dir(self._ot_trials[trial_id], trial_id, config)
            return config

        def _local_root(self) -> Path | None:
            """The experiment directory when it is local and exists (Tune's files can be read), else None."""
            root = Path(self._experiment_path.removeprefix("file://"))
            return root if "://" not in str(root) and root.is_dir() else None

        def _note_expected_dir(self, ot_trial, trial_id: str, config: dict) -> None:
            """Record ``tune_trial_dir`` as the trial is asked: its name follows from its id and method
            (:func:`trial_dirname`). On local storage :meth:`_note_dir` confirms it once the directory exists (a
            trial that errors before its first report may end before Tune syncs its directory to the storage);
            on remote storage (s3://, gs://) it is never found."""
            name = trial_dirname(SimpleNamespace(trial_id=trial_id, config=config), fixed_method=self._fixed_method)
            root = self._experiment_path.removeprefix("file://").rstrip("/")
            ot_trial.set_user_attr("tune_trial_dir", f"{root}/{name}")

        def _trial_dir(self, trial_id: str) -> Path | None:
            root = self._local_root()
            return None if root is None else next(iter(sorted(root.glob(f"trial_driver_{trial_id}_*"))), None)

        def _staged_dir(self, trial_id: str) -> Path | None:
            """The trial's directory in Ray's driver staging area, where Tune writes ``error.txt`` first (it
            reaches the storage path at the next experiment sync)."""
            try:
                import ray._private.worker

                session = Path(ray._private.worker._global_node.get_session_dir_path())
            except Exception:  # no local Ray node (tests driving the searcher by hand)
                return None
            name = Path(self._experiment_path.rstrip("/")).name
            found = sorted(session.glob(f"artifacts/*/{name}/driver_artifacts/trial_driver_{trial_id}_*"))
            return found[-1] if found else None

        def _known(self, trial_id: str) -> bool:
            """Whether ``trial_id`` has an Optuna trial. A trial that Tune restored but the searcher's snapshot
            predates (the driver died between suggesting it and the next snapshot) is found again by the
            ``tune_trial_id`` that :meth:`suggest` wrote to the study as it asked."""
            if trial_id in self._ot_trials:
                return True
            found = [t for t in self._ot_study.get_trials(deepcopy=False)
                     if t.user_attrs.get("tune_trial_id") == trial_id]
            if not found:
                return False
            self._ot_trials[trial_id] = optuna.Trial(self._ot_study, found[-1]._trial_id)
            return True

        def _live(self, trial_id: str):
            """The Optuna trial of ``trial_id``, still open: one that an interrupted driver marked FAIL
            (``fail_orphaned_study_trials``) and that a resumed sweep now continues gets a RUNNING copy (params,
            intermediate values, user attributes, ``csweep_resumed_from``); the old record stays FAIL, orphaned."""
            ot_trial = self._ot_trials[trial_id]
            storage = self._ot_study._storage
            old = storage.get_trial(ot_trial._trial_id)
            if not old.state.is_finished():
                return ot_trial
            if not old.user_attrs.get("csweep_orphaned"):
                # Told before the driver died, after Tune's last snapshot: the resumed Tune trial only replays its
                # end. Its record stands; a copy would count the configuration twice.
                self._completed_trials.add(trial_id)
                return None
            self._ot_trials[trial_id] = self._revive(old)
            return self._ot_trials[trial_id]

        def _revive(self, old) -> optuna.Trial:
            """A RUNNING copy of the orphaned record ``old`` (a FrozenTrial), which stays FAIL."""
            attrs = {k: v for k, v in old.user_attrs.items() if k != "csweep_orphaned"}
            copy = optuna.trial.create_trial(
                state=State.RUNNING, params=old.params, distributions=old.distributions,
                intermediate_values=old.intermediate_values,
                user_attrs={**attrs, "csweep_resumed_from": old.number})
            self._ot_study.add_trial(copy)
            new_id = max(t._trial_id for t in self._ot_study.get_trials(deepcopy=False))
            return optuna.Trial(self._ot_study, new_id)

        def _note_dir(self, trial_id: str) -> Path | None:
            ot_trial = self._live(trial_id)
            if ot_trial is None:
                return None
            path = self._trial_dir(trial_id)
            if path is not None and getattr(ot_trial, "_csweep_dir", None) != str(path):
                ot_trial.set_user_attr("tune_trial_dir", str(path))
                ot_trial._csweep_dir = str(path)
            return path

        def on_trial_result(self, trial_id: str, result: dict) -> None:
            if trial_id in self._completed_trials or not self._known(trial_id):
                return
            self._note_dir(trial_id)
            if trial_id in self._completed_trials:  # found already told by _live
                return
            if isinstance(self.metric, str) and self.metric in result:
                self._report(trial_id, result)

        def _report(self, trial_id: str, result: dict) -> None:
            step = int(result.get("epoch", result.get("training_iteration", 0)))
            ot_trial = self._live(trial_id)
            if step not in self._ot_study._storage.get_trial(ot_trial._trial_id).intermediate_values:
                ot_trial.report(float(result[self.metric]), step)

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False,
                              error_trial_id: str | None = None, reason: str | None = None) -> None:
            """``error_trial_id``: the Tune trial whose ``error.txt`` names the error (a seed of ``--repeats``;
            default ``trial_id`` itself); ``reason``: the error line itself, when known (a fused member's)."""
            self._running.discard(trial_id)
            if trial_id in self._completed_trials:
                return super().on_trial_complete(trial_id, result, error)  # Tune's warning: told twice
            if not self._known(trial_id):  # asked by no study this searcher can read: nothing to tell
                logger.warning("trial %s has no Optuna trial in study %s; its end is not recorded there",
                               trial_id, self._ot_study.study_name)
                return None
            path = self._note_dir(trial_id)
            ot_trial = self._live(trial_id)
            if ot_trial is None:  # told before the driver died
                return None
            if error:
                failed = error_trial_id or trial_id
                if failed != trial_id:
                    path = self._trial_dir(failed)
                reason = reason or _error_line(path) or _error_line(self._staged_dir(failed))
                if reason:
                    ot_trial.set_user_attr("csweep_error", reason)
                state = State.FAIL
            elif result and "epoch" in result and not result.get("finished"):
                if isinstance(self.metric, str) and self.metric in result:
                    self._report(trial_id, result)
                state = State.PRUNED
            else:
                return super().on_trial_complete(trial_id, result, error)
            self._ot_study.tell(ot_trial, state=state)
            self._completed_trials.add(trial_id)

    return StudySearch


def _error_line(trial_dir: Path | None) -> str | None:
    """The line of a Tune trial's ``error.txt`` that names the error (its last ``SomethingError: ...`` line)."""
    if trial_dir is None or not (trial_dir / "error.txt").is_file():
        return None
    lines = [x.strip() for x in (trial_dir / "error.txt").read_text(errors="replace").splitlines() if x.strip()]
    named = [x for x in lines if re.match(r"^[\w.]+(Error|Exception)\b", x)]
    return (named or lines or [None])[-1]


def _point_valid(point: Mapping[str, Any], cfg: SweepConfig) -> bool:
    """A recipe point is enqueued only if it leaves the user's fixed settings alone and still validates."""
    point = {k: v for k, v in point.items() if k not in cfg.fixed}
    try:
        _spec(cfg.fixed, {**point, **({} if "method" in point else {"method": cfg.fixed.get("method")})})
    except (ConfigError, ValueError):
        return "method" not in point and "method" not in cfg.fixed  # checked per trial by the space itself
    return True


def _method_of(config: Mapping[str, Any], fixed_method: str | None) -> str:
    from search.fusion import FUSED

    if FUSED in config:  # a fused trial's members share the method
        return f"{config[FUSED][0].get('method') or fixed_method or 'trial'}-fused"
    return config.get("method") or fixed_method or "trial"


def trial_name(trial, *, fixed_method: str | None = None) -> str:
    """``METHOD_TRIALID``: how a trial is shown (Tune's ``trial_name_creator``)."""
    return f"{_method_of(trial.config, fixed_method)}_{trial.trial_id}"


def trial_dirname(trial, *, fixed_method: str | None = None) -> str:
    """``trial_driver_TRIALID_METHOD``: a trial's directory, and so its TensorBoard run name (Tune's default
    spells out the whole configuration and a date)."""
    return f"trial_driver_{trial.trial_id}_{_method_of(trial.config, fixed_method)}"


def _tune_run_config(cfg: SweepConfig, callbacks: list):
    from ray import tune

    return tune.RunConfig(
        name=cfg.name,
        storage_path=cfg.storage_path,
        failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
        # PBT clones register the donor's checkpoint as their own and would delete it on rotation: keep them all
        checkpoint_config=tune.CheckpointConfig(num_to_keep=None if cfg.scheduler in POPULATION_SCHEDULERS else 2),
        callbacks=callbacks,
        verbose=0,
    )


def build_tuner(cfg: SweepConfig, *, concurrency: int, callbacks: list | None = None):
    """The Tuner for a validated sweep (Ray must be initialised)."""
    from ray import tune

    from spaces import load_space

    space = load_space(cfg.space)
    if cfg.scheduler in POPULATION_SCHEDULERS:
        return _population_tuner(cfg, space, concurrency=concurrency, callbacks=callbacks or [])
    if cfg.fuse > 1:
        _start_member_pruner(cfg)
    return tune.Tuner(
        _trainable(cfg),
        tune_config=tune.TuneConfig(
            search_alg=_searcher(cfg, space),
            # fused: members are stopped by their own rungs; the searcher ends the sweep after `trials` members
            scheduler=_scheduler(cfg) if cfg.fuse == 1 else None,
            num_samples=cfg.trials * cfg.repeats,
            max_concurrent_trials=concurrency,
            reuse_actors=cfg.resolved_executor == "inline",
            trial_name_creator=functools.partial(trial_name, fixed_method=cfg.fixed.get("method")),
            trial_dirname_creator=functools.partial(trial_dirname, fixed_method=cfg.fixed.get("method")),
        ),
        run_config=_tune_run_config(cfg, callbacks or []),
    )


# ---------------------------------------------------------------------------------------------------------------------
# Population-based training (--scheduler pbt|pb2): Ray Tune's own schedulers; Optuna only draws the first population


def initial_population(cfg: SweepConfig, space) -> list[dict[str, Any]]:
    """The ``cfg.trials`` starting configurations: the space's valid seed recipe points, then draws of the sweep's
    sampler from a throw-away in-memory study (no feedback reaches it: PBT, not Optuna, changes settings later)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=_sampler(cfg), direction="maximize")
    for point in space.points_to_evaluate:
        if _point_valid(point, cfg):
            study.enqueue_trial(point)
    out = []
    for _ in range(cfg.trials):
        trial = study.ask()
        returned = space.space(trial, dict(cfg.fixed)) or {}
        out.append({**trial.params, **returned})
        study.tell(trial, 0.0)
    return out


def population_mutations(cfg: SweepConfig, space, population: list[dict[str, Any]]) -> dict[str, Any]:
    """What PBT may perturb: the space's ``PERTURBABLE`` settings that every member of the population samples, each
    with its distribution from the space (``{name: (low, high, log)}`` for numbers, ``{name: [choices]}``)."""
    import optuna.distributions as d

    from search.warm_start import space_distributions

    distributions, _ = space_distributions(space, cfg.fixed, seed=cfg.seed)
    out: dict[str, Any] = {}
    for name in space.perturbable:
        dist = distributions.get(name)
        if dist is None or not all(p.get(name) is not None for p in population):
            continue
        if isinstance(dist, d.CategoricalDistribution):
            out[name] = list(dist.choices)
        else:
            out[name] = (dist.low, dist.high, dist.log)
    return out


def _population_scheduler(cfg: SweepConfig, mutations: Mapping[str, Any]):
    from ray import tune

    obj = cfg.scheduler_objective
    common = dict(time_attr="epoch", metric=obj.metric, mode=obj.mode,
                  perturbation_interval=cfg.resolved_perturbation_interval)
    if cfg.scheduler == "pb2":
        from ray.tune.schedulers.pb2 import PB2

        numeric = {k: [v[0], v[1]] for k, v in mutations.items() if isinstance(v, tuple)}
        return PB2(hyperparam_bounds=numeric, **common)
    from ray.tune.schedulers import PopulationBasedTraining

    space = {k: v if isinstance(v, list) else (tune.loguniform(v[0], v[1]) if v[2] else tune.uniform(v[0], v[1]))
             for k, v in mutations.items()}
    bounds = {k: v for k, v in mutations.items() if isinstance(v, tuple)}
    return PopulationBasedTraining(hyperparam_mutations=space,
                                   custom_explore_fn=functools.partial(_clip, bounds=bounds), **common)


def _clip(config: dict[str, Any], *, bounds: Mapping[str, tuple]) -> dict[str, Any]:
    """PBT multiplies a setting by 0.8 or 1.2: keep it inside the space's range (a config must stay valid)."""
    for k, (low, high, _) in bounds.items():
        if config.get(k) is not None:
            config[k] = type(low)(min(max(config[k], low), high))
    return config


def _population_tuner(cfg: SweepConfig, space, *, concurrency: int, callbacks: list):
    from ray import tune
    from ray.tune.search import BasicVariantGenerator

    population = initial_population(cfg, space)
    mutations = population_mutations(cfg, space, population)
    keys = sorted({k for p in population for k in p})
    return tune.Tuner(
        _trainable(cfg, tuple(mutations)),
        param_space={k: None for k in keys},  # BasicVariantGenerator fills each trial from one population member
        tune_config=tune.TuneConfig(
            search_alg=BasicVariantGenerator(points_to_evaluate=population, max_concurrent=concurrency),
            scheduler=_population_scheduler(cfg, mutations),
            num_samples=cfg.trials,
            reuse_actors=True,
            trial_name_creator=functools.partial(trial_name, fixed_method=cfg.fixed.get("method")),
            trial_dirname_creator=functools.partial(trial_dirname, fixed_method=cfg.fixed.get("method")),
        ),
        run_config=_tune_run_config(cfg, callbacks),
    )


def check_population(cfg: SweepConfig, space) -> None:
    """Before Ray starts: PB2's optional dependency is installed and the space has something PBT may perturb."""
    import importlib.util

    if cfg.scheduler == "pb2":
        missing = [m for m in ("GPy", "sklearn") if importlib.util.find_spec(m) is None]
        if missing:
            raise ConfigError(f"`scheduler=pb2` needs {' and '.join(missing)} (Ray Tune's PB2 fits a GP with them), "
                              f"which is not installed: `pip install GPy scikit-learn`, or use --scheduler pbt")
    if not space.perturbable:
        raise ConfigError(f"`scheduler={cfg.scheduler}`: space {cfg.space!r} marks no setting as PERTURBABLE")
    population = initial_population(cfg, space)
    if not population_mutations(cfg, space, population):
        raise ConfigError(f"`scheduler={cfg.scheduler}`: none of the settings space {cfg.space!r} marks as "
                          f"PERTURBABLE ({', '.join(space.perturbable)}) is sampled by every trial (fixed with --set?)")


_PRUNERS: dict[str, Any] = {}  # sweep name -> its member pruner actor's handle (a named actor dies with its handles)


def _start_member_pruner(cfg: SweepConfig) -> None:
    from search.fusion import start_member_pruner

    _PRUNERS[cfg.name] = start_member_pruner(cfg)


def restore_tuner(cfg: SweepConfig, *, callbacks: list | None = None):
    """Tuner.restore for a sweep whose driver died: unfinished and errored trials resume from their checkpoints."""
    from ray import tune

    from spaces import load_space

    space = load_space(cfg.space)  # a user's space file: its module must be importable to unpickle the searcher
    if cfg.fuse > 1:
        _start_member_pruner(cfg)
    perturbable = ()
    if cfg.scheduler in POPULATION_SCHEDULERS:  # the same trainable the population started with
        perturbable = tuple(population_mutations(cfg, space, initial_population(cfg, space)))
    return tune.Tuner.restore(
        cfg.experiment_path,
        trainable=_trainable(cfg, perturbable),
        resume_unfinished=True,
        resume_errored=True,
        restart_errored=False,
    )


def fail_orphaned_study_trials(cfg: SweepConfig) -> int:
    """Mark Optuna trials still RUNNING as FAIL (ask/tell trials get no heartbeat), with the user attribute
    ``csweep_orphaned``. Called after a resumed sweep ends: by then every trial the restored searcher knew has been
    told, so what is left RUNNING was asked by the crashed driver after its last experiment snapshot. Returns how many.
    """
    import optuna

    try:
        study = optuna.load_study(study_name=cfg.name, storage=cfg.study_url)
    except KeyError:
        return 0
    n = 0
    storage = study._storage
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        storage.set_trial_user_attr(t._trial_id, "csweep_orphaned", True)
        storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
        n += 1
    return n
