"""The ``csweep`` commands: one function per sub-command, ``(args) -> exit code``.

Each validates everything it was given before Ray starts and raises :class:`UsageError`, ``ConfigError`` or
``DataError`` (one line naming the field, exit 2 in :func:`search.cli.main`).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

from search.printing import (
    RESULT_COLUMNS,
    format_table,
    group_column,
    jsonable,
    next_steps,
    print_leaderboard,
    print_pareto,
    result_rows,
    sampled_keys,
    status_of,
    train_summary,
)
from search.spec import COMPLETED, POPULATION_SCHEDULERS, SWEEP_FILE
from trainables.config import ConfigError, parse_overrides

__all__ = [
    "COMMANDS",
    "UsageError",
    "cmd_ablation",
    "cmd_ls",
    "cmd_report",
    "cmd_resume",
    "cmd_run",
    "cmd_spaces",
    "cmd_status",
    "cmd_tables",
    "cmd_train",
    "train_executor",
]


class UsageError(Exception):
    """A user mistake caught before any Ray work: printed as one line, exit 2."""


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    """``--set`` values plus ``--dataset``/``--data-dir``/``--epochs``, typed by their fields; a key given both ways
    is refused (one source per setting)."""
    from trainables.trial import typed_settings

    settings = typed_settings(parse_overrides(args.overrides))
    for flag, key in (("dataset", "dataset"), ("data_dir", "data_dir"), ("epochs", "epochs")):
        value = getattr(args, flag, None)
        if value is None:
            continue
        if key in settings:
            raise UsageError(f"`{key}` is given twice, as --{flag.replace('_', '-')} {value} and as --set "
                             f"{key}={settings[key]}; give it once")
        settings[key] = value
    return settings


def _storage_path(raw: str | None) -> str:
    if raw is None:
        return str(Path("results").resolve())
    return raw if "://" in raw else str(Path(raw).expanduser().resolve())


def _train_schedule(args: argparse.Namespace, spec, resources) -> dict:
    """``--schedule EPOCH:KEY=VALUE[,...]`` of ``csweep train``, every stretch validated (search/replay.py)."""
    from search.replay import parse_schedule, segments

    schedule = parse_schedule(getattr(args, "schedule", None) or [])
    if schedule and resources.workers != 1:
        raise UsageError(f"`schedule` replays settings changes with one worker, but got workers={resources.workers}")
    segments(spec, schedule)
    return schedule


def _check_resumable(spec, run_dir: Path, *, scheduled: set[str] = frozenset()) -> Path | None:
    """An existing run of that name resumes from its newest checkpoint, which this returns (None for a new run):
    refuse, before Ray starts, a configuration that differs from the one that wrote it (its checkpoints are left
    untouched)."""
    from search.runs import checkpoints, read_checkpoint
    from trainables.loop import changed_fields

    saved = checkpoints(run_dir)
    if not saved:
        return None
    try:
        spec_saved = read_checkpoint(saved[-1])["spec"]
    except Exception as e:  # truncated or foreign file: refuse rather than train over it
        reason = f"{type(e).__name__}: {e}".splitlines()[0]
        raise UsageError(f"`name`: run {run_dir.name!r} has a checkpoint that cannot be read ({saved[-1]}: "
                         f"{reason}); it was left as is: remove it to resume from the one before, or pick another "
                         "--name") from e
    changed = [k for k in changed_fields(spec_saved, spec) if k not in scheduled]  # a --schedule changes those
    if changed:
        raise UsageError(f"`name`: run {run_dir.name!r} exists with other values of {', '.join(changed)}; "
                         "rerun with the same settings to resume it, or pick another --name")
    return saved[-1]


def _cpus_per_worker(args: argparse.Namespace, *, trials: int = 1) -> float:
    """``--cpus-per-worker``, or its default: this machine's CPUs shared by the trials at once (1 on a cluster)."""
    from search.cluster import default_cpus_per_worker

    if args.cpus_per_worker is not None:
        return args.cpus_per_worker
    if args.address:
        return 1.0
    return default_cpus_per_worker(workers=max(1, args.workers), node_cpus=os.cpu_count() or 1, trials=trials,
                                   concurrency=getattr(args, "concurrency", None))


def train_executor(executor: str, *, workers: int, address: str | None, storage: str) -> str:
    """``csweep train --executor`` resolved: ``auto`` is inline for one worker on this machine (no ``--address``, no
    ``$RAY_ADDRESS``) with local storage, else train; an explicit inline that cannot run here is refused."""
    remote = "://" in storage
    if executor == "inline":
        for bad, got, fix in ((workers > 1, f"workers={workers}", "for several workers"),
                              (address, f"address={address!r}", "to train on a Ray cluster"),
                              (remote, f"storage_path={storage!r}", "for remote storage")):
            if bad:
                raise ConfigError(f"`executor=inline` runs one worker in this process on local storage, but got "
                                  f"executor=inline, {got}; use --executor train (or auto) {fix}")
        return executor
    if executor == "auto":
        local = workers == 1 and not address and not os.environ.get("RAY_ADDRESS") and not remote
        return "inline" if local else "train"
    return executor


def cmd_train(args: argparse.Namespace) -> int:
    from search.cluster import ClusterResources, TrialResources, check_feasible, parse_memory_mb
    from trainables.trial import prepare_trial

    resources = TrialResources(args.workers, _cpus_per_worker(args), args.gpus_per_worker,
                               parse_memory_mb(args.memory_per_worker))
    storage = _storage_path(args.storage_path)
    executor = train_executor(args.executor, workers=resources.workers, address=args.address, storage=storage)
    spec = prepare_trial(
        args.method,
        _settings(args),
        workers=resources.workers,
        gpus_per_worker=resources.gpus_per_worker,
        download=args.download,
        preset=args.preset,
    )
    if not args.address:
        import torch

        check_feasible(resources, ClusterResources.local(num_gpus=torch.cuda.device_count()))
    if args.max_failures < 0:
        raise ConfigError(f"`max_failures` must be >= 0, but got max_failures={args.max_failures}")
    schedule = _train_schedule(args, spec, resources)
    name = args.name or f"train-{spec.method}-{spec.train.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    run_dir = Path(storage) / name
    newest = _check_resumable(spec, run_dir, scheduled={k for c in schedule.values() for k in c})
    if executor == "train":
        from search.cluster import init_ray

        init_ray(args.address)
        if args.address:
            check_feasible(resources, ClusterResources.from_ray())
    print(
        f"csweep: training {spec.method} on {spec.train.dataset} for {spec.train.epochs} epoch(s) with "
        f"{resources.workers} worker(s) of {resources.cpus_per_worker:g} thread(s) ({executor} executor); results in "
        f"{storage}/{name}",
        file=sys.stderr,
    )
    printer = functools.partial(print, file=sys.stderr, flush=True)
    if executor == "inline":
        from search.inline import error_line, train_inline
        from trainables.data import DataError

        try:
            metrics, checkpoint = train_inline(
                spec, run_dir, cpus_per_worker=resources.cpus_per_worker, use_gpu=resources.gpus_per_worker > 0,
                memory_limit_mb=resources.memory_mb, max_failures=args.max_failures, schedule=schedule,
                printer=printer)
        except (ConfigError, DataError):  # exit 2, as before the run
            raise
        except Exception as e:
            return _training_failed(error_line(e))
    else:
        from search.driver import build_trainer, fit_with_progress

        result = fit_with_progress(
            lambda callbacks: build_trainer(
                spec, resources, name=name, storage_path=storage, max_failures=args.max_failures,
                callbacks=callbacks, schedule=schedule, resume_from=str(newest) if newest else None,
            ),
            printer=printer,
        )
        if result.error is not None:
            return _training_failed(result.error)
        metrics, checkpoint = result.metrics, result.checkpoint.path if result.checkpoint else None
        if "://" not in storage:
            from search.runs import prune_checkpoints, read_metrics

            prune_checkpoints(run_dir)  # an inline run's older checkpoints, which Ray Train does not know
            if metrics is None and newest is not None:  # nothing left to train in a run Ray Train did not write
                metrics, checkpoint = read_metrics(newest), str(newest)
    metrics = {k: v for k, v in (metrics or {}).items() if jsonable(v)}
    metrics.update(name=name, path=f"{storage}/{name}", checkpoint=checkpoint)
    if args.json:
        print(json.dumps(metrics, sort_keys=True))
    else:
        print(train_summary(metrics))
    return 0


def _training_failed(error) -> int:
    print(f"csweep: training failed: {error}", file=sys.stderr)
    return 1


def _experiment_path(name: str, storage: str | None) -> str:
    if "/" in name or storage is None and Path(name).is_dir() and (Path(name) / SWEEP_FILE).exists():
        return name if "://" in name else str(Path(name).resolve())
    return f"{_storage_path(storage)}/{name}"


def cmd_run(args: argparse.Namespace) -> int:
    import torch

    from search.cluster import ClusterResources, init_ray, parse_memory_mb
    from search.spec import SweepConfig, parse_objective, write_sweep_file
    from search.sweep import build_tuner, capacity, validate_sweep
    from spaces import load_space
    from trainables.trial import typed_settings

    space = load_space(args.space)
    name = args.name or f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    cfg = SweepConfig(
        name=name,
        space=args.space,
        storage_path=_storage_path(args.storage_path),
        fixed=typed_settings({**space.fixed, **_settings(args)}),
        trials=args.trials if args.trials is not None else space.trials,
        repeats=args.repeats,
        fuse=args.fuse,
        concurrency=args.concurrency,
        workers=args.workers,
        cpus_per_worker=_cpus_per_worker(args, trials=math.ceil((args.trials if args.trials is not None
                                                                  else space.trials) * args.repeats / max(1, args.fuse))),
        gpus_per_worker=args.gpus_per_worker,
        executor=args.executor,
        scheduler=args.scheduler,
        grace_period=args.grace_period,
        reduction_factor=args.reduction_factor,
        sampler=args.sampler,
        objective=parse_objective(args.objective),
        seed=args.seed,
        study_storage=args.study_storage,
        max_failures=args.max_failures,
        perturbation_interval=args.perturbation_interval,
        memory_per_worker_mb=parse_memory_mb(args.memory_per_worker),
        pending_timeout_s=args.pending_timeout,
    )
    if cfg.is_local_storage and (Path(cfg.experiment_path) / SWEEP_FILE).exists():
        raise UsageError(
            f"`name`: a sweep named {name!r} already exists in {cfg.storage_path}; "
            f"continue it with `csweep resume {name}` or pick another --name"
        )
    local = None if args.address else ClusterResources.local(num_gpus=torch.cuda.device_count())
    if local is not None:
        local = ClusterResources(({**local.nodes[0], "trial_driver": local.nodes[0]["CPU"]},))
    validate_sweep(cfg, cluster=local)
    warm = _warm_start(args, cfg, space)
    concurrency = cfg.concurrency or (capacity(cfg, local) if local else None)
    init_ray(args.address, driver_slots=concurrency)
    if args.address:
        from search.cluster import check_feasible

        cluster = ClusterResources.from_ray()
        check_feasible(cfg.resources, cluster)
        concurrency = concurrency or max(1, capacity(cfg, cluster))
    write_sweep_file(cfg)
    if warm is not None:
        _seed_study(cfg, *warm)
    fused = f", fused up to {cfg.fuse} per Tune trial" if cfg.fuse > 1 else ""
    print(
        f"csweep: sweep {name}: {cfg.trials} x {cfg.repeats} trial(s) of space {cfg.space}{fused}, {concurrency} at "
        f"a time, {cfg.workers} worker(s) of {cfg.cpus_per_worker:g} thread(s) each ({cfg.resolved_executor} "
        f"executor); results in {cfg.experiment_path}",
        file=sys.stderr,
    )
    return _fit_and_report(cfg, lambda callbacks: build_tuner(cfg, concurrency=concurrency, callbacks=callbacks))


def _warm_start_trials(source: str, storage: str | None):
    """The earlier trials a warm start reads: a tables directory written by ``csweep tables`` (or its ``trials``
    table, or one Parquet file), else a sweep name or experiment path whose tables are built on the spot."""
    import pandas as pd

    path = Path(source).expanduser()
    if path.is_dir() and (path / "trials").is_dir():
        path = path / "trials"
    if path.suffix == ".parquet" and not path.exists():
        raise UsageError(f"`warm_start`: no Parquet file at {str(path)!r}")
    if path.suffix == ".parquet" or (path.is_dir() and any(path.rglob("*.parquet"))):
        return pd.read_parquet(path)
    from analysis.tables import build_tables

    return build_tables(_sweep_paths([source], storage)[0]).trials


def _warm_start(args: argparse.Namespace, cfg, space):
    """``--warm-start`` / ``--top``: the earlier configurations to seed the study with, checked before Ray starts;
    None without ``--warm-start``."""
    import pandas as pd

    from search.warm_start import space_distributions, warm_start_points

    top = getattr(args, "top", None)
    sources = getattr(args, "warm_start", None) or []
    if not sources:
        if top is not None:
            raise UsageError("`top` needs --warm-start PATH_OR_SWEEP (the sweeps whose best configurations to run)")
        return None
    if cfg.scheduler in POPULATION_SCHEDULERS:
        raise UsageError(f"`warm_start` seeds the Optuna study, which --scheduler {cfg.scheduler} does not use")
    if top is not None and not 1 <= top <= cfg.trials:
        raise UsageError(f"`1 <= top <= trials` must hold, but got top={top}, trials={cfg.trials}")
    earlier = pd.concat([_warm_start_trials(s, args.storage_path) for s in sources], ignore_index=True)
    distributions, methods = space_distributions(space, cfg.fixed, seed=cfg.seed)
    source = ", ".join(sources)
    points = warm_start_points(earlier, distributions=distributions, methods=methods, source=source,
                               objective=[(o.metric, o.mode) for o in cfg.objective])
    return points, distributions, top, source


def _seed_study(cfg, points, distributions, top, source) -> None:
    import optuna

    from search.warm_start import seed_study

    study = optuna.create_study(storage=cfg.study_url, study_name=cfg.name, load_if_exists=True,
                                directions=["maximize" if o.mode == "max" else "minimize" for o in cfg.objective])
    n = seed_study(study, points, distributions, top=top, source=source)
    what = f"the {n} best configuration(s) enqueued" if top is not None else f"{n} finished trial(s) added"
    print(f"csweep: warm start from {source}: {what}", file=sys.stderr)


def _fit_and_report(cfg, make_tuner) -> int:
    from search.progress import ProgressTable
    from search.sweep import fail_orphaned_study_trials

    # Tune's new output would print a TensorBoard tip pointing into Ray's temporary session directory; the old
    # one at verbose=0 prints nothing, and next_steps names the experiment directory instead.
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    obj = cfg.objective[0]
    table = ProgressTable(fixed_method=cfg.fixed.get("method"), total=cfg.trials * cfg.repeats, metric=obj.metric,
                          mode=obj.mode)
    try:
        results = make_tuner([table, _watchdog(cfg)]).fit()
        orphans = fail_orphaned_study_trials(cfg)
    except Exception as e:
        return _sweep_fault(cfg, e)
    print_leaderboard(cfg, [row for r in results for row in result_rows(r)])
    if len(cfg.objective) > 1:
        print_pareto(cfg)
    planned = cfg.trials * cfg.repeats
    if cfg.fuse > 1:  # a fused sweep's Tune trials hold several trials each: count the members its study saw end
        from search.fusion import members_ended

        ended = members_ended(cfg)
    else:
        ended = results.num_terminated + results.num_errors
    if ended < planned:  # Tune returns early on SIGINT (Ctrl-C), having saved the experiment state
        print(f"csweep: sweep {cfg.name} interrupted with {ended} of {planned} trial(s) ended; its {orphans} running "
              f"Optuna trial(s) are marked FAIL until `csweep resume {cfg.name}` continues them", file=sys.stderr)
        return 130
    print("\n" + next_steps(cfg))
    if orphans:
        print(f"csweep: marked {orphans} Optuna trial(s) left RUNNING by an earlier crash as FAIL", file=sys.stderr)
    return 0 if any(r.error is None for r in results) else 1


def _watchdog(cfg):
    """The callback that stops a sweep whose trials wait forever or whose storage refuses writes (exit 75 / 74)."""
    from search.watchdog import SweepWatchdog

    local = cfg.experiment_path.removeprefix("file://") if cfg.is_local_storage else None
    return SweepWatchdog(name=cfg.name, pending_timeout_s=cfg.pending_timeout_s, experiment_dir=local)


def _sweep_fault(cfg, error: Exception) -> int:
    """A sweep stopped by a :class:`search.watchdog.SweepFault` or a storage error from anywhere in ``fit``: one line
    on stderr and its exit code; anything else is re-raised (a bug: its traceback is wanted)."""
    from search.sweep import fail_orphaned_study_trials
    from search.watchdog import as_sweep_fault

    fault = as_sweep_fault(error, name=cfg.name, where=cfg.experiment_path)
    if fault is None:
        raise error
    try:  # as after Ctrl-C: the running trials' records are FAIL (csweep_orphaned) until resume continues them
        fail_orphaned_study_trials(cfg)
    except Exception:  # the study's storage may be the one that failed; resume marks them then
        pass
    print(f"csweep: error: {fault}", file=sys.stderr)
    return fault.exit_code


def cmd_resume(args: argparse.Namespace) -> int:
    from search.cluster import init_ray
    from search.spec import read_sweep_file
    from search.sweep import restore_tuner

    cfg = read_sweep_file(_sweep_paths([args.name], args.storage_path)[0])
    init_ray(args.address, driver_slots=cfg.concurrency)
    print(f"csweep: resuming sweep {cfg.name} from {cfg.experiment_path}", file=sys.stderr)
    return _fit_and_report(cfg, lambda callbacks: restore_tuner(cfg, callbacks=callbacks))


def cmd_status(args: argparse.Namespace) -> int:
    from search.spec import read_sweep_file

    path = _sweep_paths([args.name], args.storage_path)[0]
    cfg = read_sweep_file(path)
    from ray.tune import ExperimentAnalysis

    try:
        analysis = ExperimentAnalysis(path)
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(f"`name`: no Tune experiment state under {path} yet ({e})") from e
    from search.fusion import FUSED, latest_members, member_status

    rows = []
    for t in analysis.trials:
        config = {k: v for k, v in t.config.items() if not k.startswith("__")}
        members = latest_members(config, t.last_result) if FUSED in config else [(t.trial_id, config, t.last_result)]
        for trial_id, sampled, last in members:
            last = last or {}
            status = member_status(last, status_of(t.status, last))
            row = {"trial": trial_id, "status": status, **sampled, "_sampled": tuple(sampled),
                   "fused_group": t.trial_id if FUSED in config else None}
            row.update({k: last.get(k) for k in RESULT_COLUMNS})
            rows.append(row)
    params = sorted(sampled_keys(rows) - {"method"})
    print(f"sweep {cfg.name} ({cfg.space}): {len(rows)} of {cfg.trials * cfg.repeats} trial(s)")
    print(format_table(rows, ["trial", *group_column(rows), "status", "method", *params, *RESULT_COLUMNS]))
    _print_early_rank(path, cfg)
    return 0


def _print_early_rank(path: str, cfg) -> None:
    """The early-stopping trust section of ``csweep status`` (analysis/early_rank.py)."""
    from analysis.tables import build_tables
    from search.printing import early_rank_report

    print()
    if "://" in path:  # the tables read local experiment directories (analysis/tune_files.py)
        print(f"early-stopping trust: not computed for remote storage; copy {path} to a local directory and run "
              f"`csweep status` or `csweep tables` there")
        return
    print(early_rank_report(build_tables(path).early_rank, cfg))


def cmd_spaces(args: argparse.Namespace) -> int:
    from spaces import describe_space, list_spaces, load_space

    for name in list_spaces():
        space = load_space(name)
        print(f"{name}: {space.description}")
        for line in describe_space(space):
            print(f"  {line}")
        print()
    return 0


def list_sweeps(storage: str | None) -> list[Path]:
    """The sweep directories (holding ``sweep.json``) directly under a local storage path, by name."""
    root = Path(_storage_path(storage))
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if (p / SWEEP_FILE).is_file())


def _sweep_paths(names: list[str], storage: str | None) -> list[str]:
    paths = [_experiment_path(n, storage) for n in names]
    for name, p in zip(names, paths):
        if "://" not in p and not (Path(p) / SWEEP_FILE).exists():
            found = ", ".join(d.name for d in list_sweeps(storage)) or "none"
            raise UsageError(f"`name`: no sweep {name!r} at {p} (missing {SWEEP_FILE}); "
                             f"sweeps in {_storage_path(storage)}: {found}")
    return paths


def _write_tables(args: argparse.Namespace):
    from analysis.tables import write_tables

    _check_out_dir(args.out)
    return write_tables(_sweep_paths(args.names, args.storage_path), args.out)


def write_plots(written, out: Path) -> list[Path]:
    """The report's figures of each sweep as ``out/<sweep>_<figure>.png``."""
    from analysis.plots import save
    from analysis.report import figures

    return [save(fig, out / f"{t.sweep}_{stem}.png") for t in written for stem, _, fig in figures(t)]


def _check_out_dir(out: str) -> None:
    """``--out`` must be a directory or creatable as one (no file in the way, writable)."""
    import os

    path = Path(out).expanduser().absolute()
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise UsageError(f"`out` must be a directory, but got out={out!r} ({str(existing)!r} is a file)")
    if not os.access(existing, os.W_OK):
        raise UsageError(f"`out` must be writable, but got out={out!r} ({str(existing)!r} is not writable)")


def cmd_tables(args: argparse.Namespace) -> int:
    written = _write_tables(args)
    out = Path(args.out)
    for t in written:
        counts = t.trials["status"].value_counts().to_dict() if len(t.trials) else {}
        print(f"{t.sweep}: {len(t.trials)} trial(s) {counts}, {len(t.epochs)} epoch row(s) -> {out}/*/sweep={t.sweep}/")
    if args.plots:
        made = write_plots(written, out / "plots")
        print(f"plots: {len(made)} PNG file(s) in {out / 'plots'}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from analysis.report import write_report
    from analysis.tables import build_tables

    _check_out_dir(args.out)
    sweeps = [build_tables(p) for p in _sweep_paths(args.names, args.storage_path)]
    path = write_report(sweeps, args.out)
    print(f"report: {path} (open it in a browser; figures as PNG and best_config.yaml beside it)")
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    from analysis.tables import sweep_status

    root = _storage_path(args.storage_path)
    if "://" in root:
        raise UsageError(f"`storage_path`: csweep ls lists local storage only, but got {root!r}")
    sweeps = list_sweeps(args.storage_path)
    if not sweeps:
        print(f"no sweeps in {root}")
        return 0
    rows = []
    for d in sweeps:
        counts, mtime = sweep_status(d)
        rows.append({"sweep": d.name, "trials": sum(counts.values()),
                     **{k: counts.get(k, 0) for k in ("completed", "stopped", "errored", "running")},
                     "last modified": time.strftime("%Y-%m-%d %H:%M", time.localtime(mtime))})
    print(f"sweeps in {root}:")
    print(format_table(rows, list(rows[0])))
    return 0


def cmd_ablation(args: argparse.Namespace) -> int:
    import pandas as pd

    from analysis import ablation, format_ablation
    from analysis.columns import write_parquet
    from analysis.plots import ablation_heatmap, save
    from analysis.tables import build_tables, write_tables

    _check_out_dir(args.out)
    built = [build_tables(p) for p in _sweep_paths(args.names, args.storage_path)]
    trials = pd.concat([t.trials for t in built], ignore_index=True)
    rows, cols = args.rows.split(","), args.cols.split(",")
    try:
        pivot = ablation(
            trials, rows=rows, cols=cols, metric=args.metric, statuses=None if args.all_statuses else (COMPLETED,),
            bins=args.bins or None,
        )
    except KeyError as e:
        raise UsageError(f"`rows`/`cols`/`metric`: {e.args[0]}") from e
    except ValueError as e:
        raise UsageError(str(e)) from e
    if pivot.empty:
        raise UsageError(f"`metric`: no {'' if args.all_statuses else COMPLETED + ' '}trial reports {args.metric!r}")
    write_tables(built, args.out)
    print(format_ablation(pivot).to_string())
    stem = f"ablation_{'-'.join(rows)}_x_{'-'.join(cols)}_{args.metric}"
    out = Path(args.out)
    flat = pivot.copy()
    flat.columns = ["|".join(map(str, c)) for c in flat.columns]
    write_parquet(flat.reset_index().astype({r: str for r in rows}), out / f"{stem}.parquet")
    save(ablation_heatmap(pivot, metric=args.metric, title=f"{args.metric}: {args.rows} x {args.cols}"),
         out / f"{stem}.png")
    print(f"saved {out / stem}.parquet and .png")
    return 0


COMMANDS = {
    "train": cmd_train,
    "tables": cmd_tables,
    "ablation": cmd_ablation,
    "run": cmd_run,
    "resume": cmd_resume,
    "status": cmd_status,
    "report": cmd_report,
    "ls": cmd_ls,
    "spaces": cmd_spaces,
}
