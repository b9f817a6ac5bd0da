"""Fused sweeps (``csweep run SPACE --fuse K``): each Tune trial trains up to K configurations as one model
(:mod:`trainables.fused`), and each configuration is an ordinary trial everywhere a user looks.

- **Asking** (:func:`fused_search_class`): Optuna is asked K times per Tune trial, one Optuna trial per member. The
  first member is sampled freely; the others with every sampled setting that fixes shapes or control flow (all but
  :func:`trainables.fused.per_member_fields`) held to the first's (Optuna's ``PartialFixedSampler``), so the group
  fuses. A configuration that still does not (an enqueued recipe or warm-start point) opens a later group; none is
  lost, and exactly ``trials`` configurations are asked.
- **Early stopping per member** (:class:`MemberPruner`): a Ray actor on the driver's node keeps ASHA's rungs over
  every member of the sweep (epochs ``grace * rf**k``; at a rung a member whose rung metric is below the
  ``1 - 1/rf`` quantile of all members recorded there is stopped, as Tune's ASHA stops trials). A stopped member is
  dropped from the fused model (told PRUNED to Optuna at once); the others go on.
- **Records**: member ``k`` of Tune trial ``GROUP`` is trial ``GROUP-k``. Every epoch the Tune result carries each
  member's latest metrics under ``members`` (a list of rows with ``trial_id``); :func:`member_trials` expands a
  group into its members for the progress table, the leaderboard and the Parquet tables, which show them as trials
  with a ``fused_group`` column. Checkpoints hold the survivors only (``trainables.fused.FusedRun.state``).

Importing this module imports no Ray (the analysis reads fused results through it).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from search.spec import ERRORED, STOPPED

__all__ = ["FUSED", "FUSED_IDS", "MemberPruner", "fused_search_class", "latest_members", "member_id", "member_status",
           "member_trials", "members_ended",
           "pruner_name", "run_fused_trial", "start_member_pruner"]

FUSED = "fused"  # Tune config key: the members' sampled settings, one dict per member
FUSED_IDS = "fused_ids"  # Tune config key: the members' trial ids


def member_id(group: str, k: int) -> str:
    """Trial id of member ``k`` of Tune trial ``group``."""
    return f"{group}-{k}"


def member_trials(config: Mapping[str, Any], results: Sequence[Mapping[str, Any]]
                  ) -> list[tuple[str, dict[str, Any], list[dict[str, Any]]]]:
    """A fused Tune trial's members: ``(trial id, sampled settings, per-epoch results)``. Each member result is the
    group's result row (Tune's bookkeeping: timestamp, time_total_s, node, ...) under the member's own metrics, one
    per epoch the member trained (a dropped member's last row, repeated in later results, is not repeated here).
    When the epochs go back (a trial resumed from a checkpoint older than its last report), the rerun's history
    replaces the abandoned one from that epoch on."""
    out = []
    for mid, sampled in zip(config[FUSED_IDS], config[FUSED]):
        rows: list[dict[str, Any]] = []
        for r in results:
            mine = next((m for m in r.get("members", ()) if m.get("trial_id") == mid), None)
            if mine is not None and mine.get("epoch") == r.get("epoch"):
                group = {k: v for k, v in r.items() if k not in ("members", "fused_members", "finished")}
                rows = [x for x in rows if x["epoch"] < mine["epoch"]]
                rows.append({**group, **mine})
        out.append((mid, dict(sampled), rows))
    return out


def latest_members(config: Mapping[str, Any], result: Mapping[str, Any] | None
                   ) -> list[tuple[str, dict[str, Any], dict[str, Any] | None]]:
    """A fused Tune trial's members as ``(trial id, sampled settings, latest row)`` from one result (its latest: it
    carries every member's latest row; None before the member's first epoch)."""
    rows = {r.get("trial_id"): r for r in (result or {}).get("members", ())}
    return [(mid, dict(sampled), rows.get(mid)) for mid, sampled in zip(config[FUSED_IDS], config[FUSED])]


def member_status(row: Mapping[str, Any] | None, group_status: str | None) -> str | None:
    """A member's status from its latest row: ``errored`` when it diverged on its own, ``stopped`` when it was
    dropped early, else its group's (None: let the caller derive it)."""
    if row and row.get("error"):
        return ERRORED
    if row and row.get("dropped"):
        return STOPPED
    return group_status


def pruner_name(sweep: str) -> str:
    return f"csweep-member-pruner-{sweep}"


# ---------------------------------------------------------------------------------------------------------------------
# Early stopping per member


class MemberPruner:
    """ASHA over members (asynchronous successive halving, as Tune's ``ASHAScheduler``): rungs at the first epochs
    ``>= grace * rf**k`` before the last epoch; a member reaching a rung with a value in the bottom ``1 - 1/rf`` of
    the values recorded there (itself included) is stopped. ``scheduler="fifo"``: nobody is stopped.

    A member is judged once per rung: a trial resumed from an older checkpoint that reaches a rung again gets the
    same decision, not a new one against more values. Records live in memory, seeded from the sweep's Optuna study
    (``study``: name and storage URL): its intermediate values when ``rung_values`` is true (the rung metric is the
    objective), and always the decisions its records show (PRUNED at a rung; rungs passed before the last epoch
    reached, from the intermediate values or ``csweep_epoch``), so a resumed sweep or a restarted actor keeps them;
    ``seed`` gives records directly (tests). Run as a Ray actor by :func:`start_member_pruner`.
    """

    def __init__(self, *, scheduler: str, grace_period: int, reduction_factor: float, max_epochs: int, mode: str,
                 seed: Mapping[int, Mapping[str, float]] | None = None, study: tuple[str, str] | None = None,
                 rung_values: bool = True) -> None:
        self.scheduler, self.mode, self.rf = scheduler, mode, float(reduction_factor)
        self.rungs: list[int] = []
        r = float(grace_period)
        while scheduler != "fifo" and math.ceil(r - 1e-9) < max_epochs:
            self.rungs.append(math.ceil(r - 1e-9))
            r *= self.rf
        self.recorded: dict[int, dict[str, float]] = {r: dict((seed or {}).get(r, {})) for r in self.rungs}
        self.decided: dict[tuple[str, int], bool] = {}  # (member, rung) -> stopped there
        if study is not None:
            self._seed_from_study(*study, rung_values=rung_values)

    def _seed_from_study(self, name: str, url: str, *, rung_values: bool) -> None:
        import optuna

        try:
            study = optuna.load_study(study_name=name, storage=url)
        except KeyError:
            return
        for t in study.get_trials(deepcopy=False):  # by number: a resumed member's RUNNING copy comes last, wins
            mid = t.user_attrs.get("tune_trial_id")
            if not mid or not t.user_attrs.get("fused_group"):
                continue
            # an orphaned record (Ctrl-C) still shows what its member had passed when it was interrupted
            last = max(max(t.intermediate_values, default=0), int(t.user_attrs.get("csweep_epoch", 0)))
            for rung in self.rungs:
                if rung_values and rung in t.intermediate_values:
                    self.recorded[rung][mid] = t.intermediate_values[rung]
                if rung < last:
                    self.decided[(mid, rung)] = False
                elif rung == last and t.state == optuna.trial.TrialState.PRUNED:
                    self.decided[(mid, rung)] = True
                else:
                    self.decided.pop((mid, rung), None)  # a newer record of the member that has not got there

    def decide(self, reports: Sequence[tuple[str, int, float | None]]) -> list[str]:
        """``(member id, epoch, rung metric)`` per surviving member -> the members to stop now."""
        import numpy as np

        stop = []
        for mid, epoch, value in reports:
            if (mid, epoch) in self.decided:
                if self.decided[(mid, epoch)]:
                    stop.append(mid)
                continue
            if epoch not in self.recorded or value is None or not math.isfinite(value):
                continue
            self.recorded[epoch][mid] = float(value)
            values = list(self.recorded[epoch].values())
            if self.mode == "max":
                stopped = value < np.nanpercentile(values, (1 - 1 / self.rf) * 100)
            else:
                stopped = value > np.nanpercentile(values, 100 / self.rf)
            self.decided[(mid, epoch)] = bool(stopped)
            if stopped:
                stop.append(mid)
        return stop


def members_ended(cfg) -> int:
    """Member trials of a fused sweep that ended (told COMPLETE, PRUNED or FAIL to its study; not those an interrupted
    driver marked FAIL, ``csweep_orphaned``): what ``csweep run``/``resume`` compares with ``trials``."""
    import optuna

    study = optuna.load_study(study_name=cfg.name, storage=cfg.study_url)
    return sum(t.state.is_finished() and "fused_group" in t.user_attrs and not t.user_attrs.get("csweep_orphaned")
               for t in study.get_trials(deepcopy=False))


def start_member_pruner(cfg):
    """The sweep's :class:`MemberPruner` as a named Ray actor (no CPU) on this, the driver's, node; it lives as long
    as the driver's Ray job."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    rung = cfg.scheduler_objective
    actor = ray.remote(num_cpus=0, max_restarts=-1)(MemberPruner).options(
        name=pruner_name(cfg.name), get_if_exists=True,
        scheduling_strategy=NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False))
    return actor.remote(scheduler=cfg.scheduler, grace_period=cfg.resolved_grace_period,
                        reduction_factor=cfg.reduction_factor, max_epochs=cfg.epochs, mode=rung.mode,
                        study=(cfg.name, cfg.study_url), rung_values=rung.metric == cfg.objective[0].metric)


# ---------------------------------------------------------------------------------------------------------------------
# The Tune trainable's side


def run_fused_trial(config: Mapping[str, Any], cfg) -> None:
    """Train a fused Tune trial's members (called by ``search.sweep.trial_driver``): one ``tune.report`` per epoch
    with every member's latest row, a checkpoint when due and whenever a member was dropped."""
    import ray
    from ray import tune

    from search.driver import worker_facts
    from search.runs import read_checkpoint, set_threads
    from search.sweep import TuneReporter, _spec
    from trainables.fused import fit_fused
    from trainables.loop import checkpoint_due

    ids = list(config[FUSED_IDS])
    specs = [_spec(cfg.fixed, {k: v for k, v in m.items() if v is not None}) for m in config[FUSED]]
    train = specs[0].train
    set_threads(train.num_threads, cfg.cpus_per_worker)
    state = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as path:
            state = read_checkpoint(path)
    pruner = ray.get_actor(pruner_name(cfg.name))
    rung, objective = cfg.scheduler_objective, cfg.objective[0]
    # every member's latest row, dropped ones included (kept in the checkpoint, so a resumed trial still shows them)
    latest: dict[str, dict[str, Any]] = dict(state.pop("csweep_rows", {})) if state else {}

    def prune(metrics: list[dict[str, Any]]) -> list[int]:
        stop = set(ray.get(pruner.decide.remote([(ids[m["member"]], m["epoch"], m.get(rung.metric))
                                                 for m in metrics])))
        return [m["member"] for m in metrics if ids[m["member"]] in stop]

    def report(metrics: list[dict[str, Any]], fused_state: Callable[[], dict[str, Any]]) -> None:
        for m in metrics:
            latest[ids[m["member"]]] = {**m, "trial_id": ids[m["member"]]}
        alive = [m for m in metrics if not m.get("dropped")] or metrics
        values = [m[objective.metric] for m in alive if isinstance(m.get(objective.metric), (int, float))]
        epoch = int(metrics[0]["epoch"])
        result = {"epoch": epoch, "finished": any(m.get("finished") for m in alive),
                  "fused_members": sum(not m.get("dropped") for m in metrics), "members": list(latest.values()),
                  **worker_facts()}
        if values:  # the group's best member: Tune's own bookkeeping wants the searcher's metric in every result
            result[objective.metric] = max(values) if objective.mode == "max" else min(values)
        due = checkpoint_due(train, epoch) or any(m.get("dropped") for m in metrics)
        state = fused_state() if due else None
        TuneReporter().report(result, {**state, "csweep_rows": latest} if state else None)

    fit_fused(specs, prune=prune, report=report, resume_state=state, memory_limit_mb=cfg.memory_per_worker_mb)


# ---------------------------------------------------------------------------------------------------------------------
# The searcher's side


@functools.cache
def fused_search_class():
    """``StudySearch`` (search/sweep.py) asking K members per Tune trial; see the module docstring."""
    import optuna
    from ray.tune.search import Searcher

    from search.sweep import _spec, _study_search_class
    from trainables.config import ConfigError
    from trainables.fused import FuseError, check_fusable, per_member_fields

    class FusedSearch(_study_search_class()):
        def __init__(self, *args, fuse: int, budget: int, fixed: Mapping[str, Any], **kwargs):
            super().__init__(*args, **kwargs)
            self._fuse, self._budget, self._fixed = fuse, budget, dict(fixed)
            self._asked = 0  # configurations asked so far (members placed and carried)
            self._carry: list[tuple[Any, dict]] = []  # asked, not fusable with the group asked for: opens a later one
            self._groups: dict[str, list[str]] = {}  # Tune trial id -> member trial ids
            self._group_of: dict[str, str] = {}

        # -- asking ----------------------------------------------------------------------------------------------------
        def _ask(self, shape: Mapping[str, Any] | None) -> tuple[Any, dict]:
            study = self._ot_study
            sampler = study.sampler
            if shape:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    study.sampler = optuna.samplers.PartialFixedSampler(dict(shape), sampler)
            try:
                ot_trial = study.ask()
                params = self._suggest_from_define_by_run_func(self._space, ot_trial)
            finally:
                study.sampler = sampler
            self._asked += 1
            return ot_trial, params

        def _unfusable(self, params: dict) -> str | None:
            """Why no fused trial can run this configuration (its error line), or None."""
            try:
                check_fusable([_spec(self._fixed, params)])
            except (ConfigError, ValueError) as e:
                return f"{type(e).__name__}: {e}"
            return None

        def _fuses(self, first: dict, other: dict) -> bool:
            try:
                check_fusable([_spec(self._fixed, first), _spec(self._fixed, other)])
            except (FuseError, ValueError):
                return False
            return True

        def suggest(self, trial_id: str):
            if self._full():
                return None
            members: list[tuple[Any, dict]] = []
            while not members:
                if self._carry:
                    item = self._carry.pop(0)
                elif self._asked < self._budget:
                    item = self._ask(None)
                else:
                    return Searcher.FINISHED
                reason = self._unfusable(item[1])
                if reason is None:
                    members.append(item)
                else:  # no fused trial can run it (a method vmap refuses, an invalid configuration): FAIL it
                    item[0].set_user_attr("csweep_error", reason)
                    self._ot_study.tell(item[0], state=optuna.trial.TrialState.FAIL)
            first = members[0][1]
            own = per_member_fields(_spec(self._fixed, first).method)
            shape = {k: v for k, v in members[0][0].params.items() if k not in own}
            for item in list(self._carry):
                if len(members) < self._fuse and self._fuses(first, item[1]):
                    self._carry.remove(item)
                    members.append(item)
            while len(members) < self._fuse and self._asked < self._budget:
                # fresh asks hold the shape, so only an enqueued point can fail to fuse: it opens a later group
                item = self._ask(shape)
                (members if self._fuses(first, item[1]) else self._carry).append(item)
            ids = [member_id(trial_id, k) for k in range(len(members))]
            self._groups[trial_id] = ids
            for mid, (ot_trial, _) in zip(ids, members):
                self._ot_trials[mid] = ot_trial
                self._group_of[mid] = trial_id
                ot_trial.set_user_attr("tune_trial_id", mid)
                ot_trial.set_user_attr("fused_group", trial_id)
            config = {FUSED: [params for _, params in members], FUSED_IDS: ids}
            for ot_trial, _ in members:
                self._note_expected_dir(ot_trial, trial_id, config)
            self._running.add(trial_id)
            return config

        # -- restoring ---------------------------------------------------------------------------------------------------
        def restore(self, checkpoint_path: str) -> None:
            """Tune's searcher snapshot, then the groups Tune restores that it predates (found in the study by
            ``fused_group``), so the budget counts them."""
            super().restore(checkpoint_path)
            for group in getattr(self, "_restored", {}):  # the experiment state StudySearch.restore read
                self._known_group(group)
            storage = self._ot_study._storage
            # carried configurations that an interrupted driver marked FAIL (orphaned) go on as RUNNING copies
            self._carry = [(self._revive(storage.get_trial(ot._trial_id)), params)
                           if storage.get_trial(ot._trial_id).state.is_finished() else (ot, params)
                           for ot, params in self._carry]

        def _known_group(self, group: str) -> bool:
            if group in self._groups:
                return True
            found = [t for t in self._ot_study.get_trials(deepcopy=False) if t.user_attrs.get("fused_group") == group]
            if not found:
                return False
            # a carried configuration placed in this group after the snapshot: the group has it now
            carried = {ot._trial_id for ot, _ in self._carry}
            self._carry = [c for c in self._carry if c[0]._trial_id not in {t._trial_id for t in found}]
            self._asked += sum(t._trial_id not in carried for t in found)
            ids = []
            for t in sorted(found, key=lambda t: int(t.user_attrs["tune_trial_id"].rsplit("-", 1)[1])):
                mid = t.user_attrs["tune_trial_id"]
                if mid not in ids:
                    ids.append(mid)
                    self._ot_trials.setdefault(mid, optuna.Trial(self._ot_study, t._trial_id))
                    self._group_of[mid] = group
            self._groups[group] = ids
            return True

        def _trial_dir(self, trial_id: str) -> Path | None:
            return super()._trial_dir(self._group_of.get(trial_id, trial_id))

        def _staged_dir(self, trial_id: str) -> Path | None:
            return super()._staged_dir(self._group_of.get(trial_id, trial_id))

        # -- telling -----------------------------------------------------------------------------------------------------
        def on_trial_result(self, trial_id: str, result: dict) -> None:
            if not self._known_group(trial_id):
                return
            for row in result.get("members", ()):
                mid = row.get("trial_id")
                if mid not in self._groups[trial_id] or row.get("epoch") != result.get("epoch"):
                    continue  # an earlier-dropped member's last row: told then
                super().on_trial_result(mid, row)
                live = self._live(mid) if mid not in self._completed_trials else None
                if live is not None:  # the epochs it trained, for the member pruner of a resumed sweep
                    live.set_user_attr("csweep_epoch", int(row["epoch"]))
                if row.get("error"):  # diverged on its own: FAIL with its error, the others go on
                    super().on_trial_complete(mid, row, error=True, reason=row["error"])
                elif row.get("dropped"):
                    super().on_trial_complete(mid, row)  # not finished: PRUNED with its last value

        def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False,
                              error_trial_id: str | None = None, reason: str | None = None) -> None:
            self._running.discard(trial_id)
            if not self._known_group(trial_id):
                return None
            rows = {r.get("trial_id"): r for r in (result or {}).get("members", ())}
            for mid in self._groups[trial_id]:
                if mid not in self._completed_trials:
                    super().on_trial_complete(mid, rows.get(mid), error=error, error_trial_id=trial_id)
            return None

    return FusedSearch

