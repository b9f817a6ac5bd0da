"""``csweep``: the command line.

Every command validates everything it was given (method, dataset files, ``--set`` keys and values, resources)
before Ray starts; a mistake is one line on stderr naming the field and the allowed values, and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from search.cluster import address_from_env
from trainables.config import ConfigError, TrainConfig, describe_fields, parse_overrides

__all__ = ["main"]

EXIT_USAGE = 2


class UsageError(Exception):
    """A user mistake caught before any Ray work: printed as one line, exit 2."""


def _fields_help(title: str, cls: type) -> str:
    rows = describe_fields(cls)
    width = max(len(r[0]) for r in rows)
    lines = [f"  {name:<{width}}  {typ} (default: {default!r})" for name, typ, default in rows]
    return f"{title}:\n" + "\n".join(lines)


def _settings_help() -> str:
    from trainables.data import DATASETS
    from trainables.methods import METHODS

    parts = [
        f"methods: {', '.join(sorted(METHODS))}",
        f"datasets: {', '.join(DATASETS)}",
        _fields_help("shared settings (--set key=value)", TrainConfig),
    ]
    for name, cls in sorted(METHODS.items()):
        recipe = ", ".join(f"{k}={v!r}" for k, v in cls.recipe.items())
        parts.append(_fields_help(f"{name} settings (recipe: {recipe})", cls.Config))
    return "\n\n".join(parts)


#: --address defaults to $RAY_ADDRESS, so `ray job submit -- csweep run ...` joins the cluster it runs on.
ADDRESS_HELP = "join this Ray cluster instead of starting a local one (default: $RAY_ADDRESS, set by `ray job submit`)"


def _add_resource_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, default=1, help="Ray Train workers per trial (DDP world size)")
    p.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs each worker holds (torch threads)")
    p.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs each worker holds (0 = CPU, gloo)")
    p.add_argument("--address", default=address_from_env(), help=ADDRESS_HELP)
    p.add_argument(
        "--storage-path",
        default=None,
        help="where results and checkpoints go: a local path, NFS or s3:// (default ./results)",
    )


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default=None, help="dataset name (default digits, the embedded one)")
    p.add_argument("--data-dir", default=None, help="root of the on-disk dataset")
    p.add_argument("--download", action="store_true", help="download CIFAR/STL-10 if missing (never by default)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any setting below; values are YAML/JSON literals (temperature=0.1, mean=[0.5,0.5,0.5])",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="csweep",
        description="Distributed hyperparameter sweeps of contrastive learning on Ray.",
        epilog=_settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from trainables.methods import METHODS

    train = sub.add_parser(
        "train",
        help="train one method as a Ray Train run",
        description="Train one method (one trial) with Ray Train on a local Ray or --address.",
        epilog=_settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("method", help=f"one of {', '.join(sorted(METHODS))}")
    _add_data_args(train)
    _add_resource_args(train)
    train.add_argument("--name", default=None, help="run name; an existing run of that name resumes")
    train.add_argument("--max-failures", type=int, default=0, help="worker failures to recover from a checkpoint")
    train.add_argument("--json", action="store_true", help="print the final metrics as JSON on the last line")

    from search.spec import EXECUTORS, SAMPLERS, SCHEDULERS

    run = sub.add_parser(
        "run",
        help="run a sweep: Ray Tune + Optuna over a search space",
        description="Sweep a search space (a name from `csweep spaces` or a .py file exposing "
        "space(trial, fixed)) with Ray Tune, OptunaSearch and early stopping.",
        epilog=_settings_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("space", help="bundled space name or path to a Python file")
    _add_data_args(run)
    _add_resource_args(run)
    run.add_argument(
        "--trials", type=int, default=None, help="configurations to sample (default: the space's TRIALS, else 20)"
    )
    run.add_argument("--repeats", type=int, default=1, help="seeds per sampled configuration (default 1)")
    run.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="trials at once (default: what the cluster holds for one trial's request)",
    )
    run.add_argument("--workers-per-trial", dest="workers", type=int, default=1, help="DDP workers per trial")
    run.add_argument(
        "--executor",
        choices=EXECUTORS,
        default="auto",
        help="train: Ray Train per trial; inline: loop in the Tune actor (1 worker); auto: inline for 1-worker trials",
    )
    run.add_argument("--scheduler", default="asha", help=f"one of {', '.join(SCHEDULERS)} (default asha)")
    run.add_argument("--grace-period", type=int, default=None, help="ASHA grace period in epochs (default 10%%)")
    run.add_argument("--reduction-factor", type=float, default=3.0, help="ASHA/HyperBand reduction factor")
    run.add_argument("--sampler", default="tpe", help=f"one of {', '.join(SAMPLERS)} (default tpe)")
    run.add_argument(
        "--objective",
        default="knn_top1:max",
        help="metric[:max|min][,metric[:max|min]...]; several = multi-objective (default knn_top1:max)",
    )
    run.add_argument("--seed", type=int, default=0, help="seed of the sampler and of the trials (default 0)")
    run.add_argument("--name", default=None, help="sweep name (default SPACE-TIMESTAMP)")
    run.add_argument(
        "--study-storage", default=None, help="Optuna storage URL (default sqlite in the experiment directory)"
    )
    run.add_argument("--max-failures", type=int, default=1, help="Tune retries of a failed trial")

    resume = sub.add_parser(
        "resume",
        help="continue a sweep whose driver died",
        description="Restore a sweep from its storage: finished trials stay, unfinished and "
        "errored ones resume from their checkpoints, the Optuna study continues.",
    )
    resume.add_argument("name", help="sweep name or experiment path")
    resume.add_argument("--storage-path", default=None, help="where the sweep lives (default ./results)")
    resume.add_argument("--address", default=address_from_env(), help=ADDRESS_HELP)

    status = sub.add_parser("status", help="print the trials table of a running or finished sweep")
    status.add_argument("name", help="sweep name or experiment path")
    status.add_argument("--storage-path", default=None, help="where the sweep lives (default ./results)")

    sub.add_parser("spaces", help="list the bundled search spaces with their parameters and ranges")

    tables = sub.add_parser(
        "tables",
        help="write Parquet tables (trials, epochs, leaderboard, ...) of sweeps",
        description="Read sweeps (finished, running or crashed) and write their tables as a "
        "Parquet dataset partitioned by sweep: OUT/<table>/sweep=NAME/part-0.parquet.",
    )
    tables.add_argument("names", nargs="+", metavar="NAME_OR_PATH", help="sweep names or experiment paths")
    tables.add_argument("--storage-path", default=None, help="where named sweeps live (default ./results)")
    tables.add_argument("--out", default="tables", help="output directory (default ./tables)")
    tables.add_argument("--plots", action="store_true", help="also write PNG plots to OUT/plots/")

    abl = sub.add_parser("ablation", help="pivot a metric over two settings (mean ± std), save Parquet + PNG")
    abl.add_argument("names", nargs="+", metavar="NAME_OR_PATH", help="sweep names or experiment paths")
    abl.add_argument("--rows", required=True, help="setting(s) for the rows, comma-separated")
    abl.add_argument("--cols", required=True, help="setting(s) for the columns, comma-separated")
    abl.add_argument("--metric", default="linear_top1", help="trials.parquet column to aggregate (default linear_top1)")
    abl.add_argument("--all-statuses", action="store_true", help="include stopped/errored trials that have the metric")
    abl.add_argument("--storage-path", default=None, help="where named sweeps live (default ./results)")
    abl.add_argument("--out", default="tables", help="output directory (default ./tables)")
    return parser


def _settings(args: argparse.Namespace) -> dict[str, Any]:
    settings = parse_overrides(args.overrides)
    for flag, key in (("dataset", "dataset"), ("data_dir", "data_dir"), ("epochs", "epochs")):
        value = getattr(args, flag, None)
        if value is not None:
            settings[key] = value
    return settings


def _storage_path(raw: str | None) -> str:
    if raw is None:
        return str(Path("results").resolve())
    return raw if "://" in raw else str(Path(raw).expanduser().resolve())


def _check_resumable(spec, run_dir: Path) -> None:
    """An existing run of that name resumes from its newest checkpoint: refuse, before Ray starts, a configuration
    that differs from the one that wrote it (its checkpoints are left untouched)."""
    from search.driver import read_checkpoint
    from trainables.loop import changed_fields

    checkpoints = sorted(run_dir.glob("checkpoint_epoch_*")) if run_dir.is_dir() else []
    if not checkpoints:
        return
    changed = changed_fields(read_checkpoint(checkpoints[-1])["spec"], spec)
    if changed:
        raise UsageError(f"`name`: run {run_dir.name!r} exists with other values of {', '.join(changed)}; "
                         "rerun with the same settings to resume it, or pick another --name")


def _cmd_train(args: argparse.Namespace) -> int:
    from search.cluster import ClusterResources, TrialResources, check_feasible
    from trainables.trial import prepare_trial

    resources = TrialResources(args.workers, args.cpus_per_worker, args.gpus_per_worker)
    spec = prepare_trial(
        args.method,
        _settings(args),
        workers=resources.workers,
        gpus_per_worker=resources.gpus_per_worker,
        download=args.download,
    )
    if not args.address:
        import torch

        check_feasible(resources, ClusterResources.local(num_gpus=torch.cuda.device_count()))
    if args.max_failures < 0:
        raise ConfigError(f"`max_failures` must be >= 0, but got max_failures={args.max_failures}")

    from search.cluster import init_ray
    from search.driver import build_trainer, fit_with_progress

    name = args.name or f"train-{spec.method}-{spec.train.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    storage = _storage_path(args.storage_path)
    _check_resumable(spec, Path(storage) / name)
    init_ray(args.address)
    if args.address:
        check_feasible(resources, ClusterResources.from_ray())
    print(
        f"csweep: training {spec.method} on {spec.train.dataset} for {spec.train.epochs} epoch(s) with "
        f"{resources.workers} worker(s); results in {storage}/{name}",
        file=sys.stderr,
    )
    result = fit_with_progress(
        lambda callbacks: build_trainer(
            spec, resources, name=name, storage_path=storage, max_failures=args.max_failures, callbacks=callbacks
        ),
        printer=lambda line: print(line, file=sys.stderr, flush=True),
    )
    if result.error is not None:
        print(f"csweep: training failed: {result.error}", file=sys.stderr)
        return 1
    metrics = {k: v for k, v in (result.metrics or {}).items() if _jsonable(v)}
    metrics.update(
        name=name, path=f"{storage}/{name}", checkpoint=result.checkpoint.path if result.checkpoint else None
    )
    if args.json:
        print(json.dumps(metrics, sort_keys=True))
    else:
        keys = ("epoch", "train_loss", "knn_top1", "linear_top1", "best_knn_top1", "images_per_s")
        print("  ".join(f"{k}={_fmt(metrics[k])}" for k in keys if k in metrics))
    return 0


def _jsonable(v: Any) -> bool:
    return isinstance(v, (str, int, bool, type(None))) or (isinstance(v, float) and math.isfinite(v))


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _experiment_path(name: str, storage: str | None) -> str:
    if "/" in name or storage is None and Path(name).is_dir() and (Path(name) / "sweep.json").exists():
        return name if "://" in name else str(Path(name).resolve())
    return f"{_storage_path(storage)}/{name}"


def _cmd_run(args: argparse.Namespace) -> int:
    import torch

    from search.cluster import ClusterResources, init_ray
    from search.spec import SweepConfig, parse_objective, write_sweep_file
    from search.sweep import build_tuner, capacity, validate_sweep
    from spaces import load_space

    space = load_space(args.space)
    name = args.name or f"{space.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    cfg = SweepConfig(
        name=name,
        space=args.space,
        storage_path=_storage_path(args.storage_path),
        fixed={**space.fixed, **_settings(args)},
        trials=args.trials if args.trials is not None else space.trials,
        repeats=args.repeats,
        concurrency=args.concurrency,
        workers=args.workers,
        cpus_per_worker=args.cpus_per_worker,
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
    )
    if cfg.is_local_storage and (Path(cfg.experiment_path) / "sweep.json").exists():
        raise UsageError(
            f"`name`: a sweep named {name!r} already exists in {cfg.storage_path}; "
            f"continue it with `csweep resume {name}` or pick another --name"
        )
    local = None if args.address else ClusterResources.local(num_gpus=torch.cuda.device_count())
    if local is not None:
        local = ClusterResources(({**local.nodes[0], "trial_driver": local.nodes[0]["CPU"]},))
    validate_sweep(cfg, cluster=local)
    concurrency = cfg.concurrency or (capacity(cfg, local) if local else None)
    init_ray(args.address, driver_slots=concurrency)
    if args.address:
        from search.cluster import check_feasible

        cluster = ClusterResources.from_ray()
        check_feasible(cfg.resources, cluster)
        concurrency = concurrency or max(1, capacity(cfg, cluster))
    write_sweep_file(cfg)
    print(
        f"csweep: sweep {name}: {cfg.trials} x {cfg.repeats} trial(s) of space {cfg.space}, {concurrency} at a "
        f"time ({cfg.resolved_executor} executor); results in {cfg.experiment_path}",
        file=sys.stderr,
    )
    return _fit_and_report(cfg, lambda callbacks: build_tuner(cfg, concurrency=concurrency, callbacks=callbacks))


def _fit_and_report(cfg, make_tuner) -> int:
    from search.progress import ProgressTable
    from search.sweep import fail_orphaned_study_trials

    table = ProgressTable(fixed_method=cfg.fixed.get("method"))
    results = make_tuner([table]).fit()
    orphans = fail_orphaned_study_trials(cfg)
    _print_leaderboard(cfg, [_result_row(r) for r in results])
    if len(cfg.objective) > 1:
        _print_pareto(cfg)
    if orphans:
        print(f"csweep: marked {orphans} Optuna trial(s) left RUNNING by an earlier crash as FAIL", file=sys.stderr)
    return 0 if any(r.error is None for r in results) else 1


def _result_row(result) -> dict[str, Any]:
    config = {k: v for k, v in (result.config or {}).items() if not k.startswith("__")}
    row = {**(result.metrics or {}), **config, "_sampled": tuple(config)}
    row["trial"] = row.get("trial_id")
    row["status"] = "error" if result.error is not None else ("done" if row.get("finished") else "stopped")
    return row


def _print_leaderboard(cfg, rows: list[dict[str, Any]]) -> None:
    from search.progress import format_table, leaderboard_rows

    obj = cfg.objective[0]
    params = sorted({k for r in rows for k in r if k in _sampled_keys(rows)})
    ranked = leaderboard_rows(rows, obj.metric, obj.mode)
    columns = ["trial", "method", *[p for p in params if p != "method"], "status", "epoch", "knn_top1", "linear_top1"]
    if obj.metric not in columns:
        columns.append(obj.metric)
    print(f"\nleaderboard ({obj.metric}, {obj.mode}):")
    print(format_table(ranked, columns))


def _print_pareto(cfg) -> None:
    """The Optuna study's Pareto front of a multi-objective sweep."""
    import optuna

    from search.progress import format_table

    study = optuna.load_study(study_name=cfg.name, storage=cfg.study_url)
    names = [o.metric for o in cfg.objective]
    rows = [{"optuna_trial": t.number, **t.params, **dict(zip(names, t.values))} for t in study.best_trials]
    params = sorted({k for t in study.best_trials for k in t.params})
    print(f"\nPareto front ({', '.join(f'{o.metric}:{o.mode}' for o in cfg.objective)}): {len(rows)} trial(s)")
    print(format_table(rows, ["optuna_trial", *params, *names]))


def _sampled_keys(rows: list[dict[str, Any]]) -> set[str]:
    """The settings the space sampled: the keys of the trials' Tune configs (carried as ``_sampled`` in rows)."""
    return {k for r in rows for k in r.get("_sampled", ())}


def _cmd_resume(args: argparse.Namespace) -> int:
    from search.cluster import init_ray
    from search.spec import read_sweep_file
    from search.sweep import restore_tuner

    cfg = read_sweep_file(_experiment_path(args.name, args.storage_path))
    init_ray(args.address, driver_slots=cfg.concurrency)
    print(f"csweep: resuming sweep {cfg.name} from {cfg.experiment_path}", file=sys.stderr)
    return _fit_and_report(cfg, lambda callbacks: restore_tuner(cfg, callbacks=callbacks))


def _cmd_status(args: argparse.Namespace) -> int:
    from search.progress import format_table
    from search.spec import read_sweep_file

    path = _experiment_path(args.name, args.storage_path)
    cfg = read_sweep_file(path)
    from ray.tune import ExperimentAnalysis

    try:
        analysis = ExperimentAnalysis(path)
    except (ValueError, FileNotFoundError) as e:
        raise UsageError(f"`name`: no Tune experiment state under {path} yet ({e})") from e
    rows = []
    from search.progress import STATUS, finished_status

    for t in analysis.trials:
        status = finished_status(t.last_result) if t.status == "TERMINATED" else STATUS.get(t.status, t.status)
        config = {k: v for k, v in t.config.items() if not k.startswith("__")}
        row = {"trial": t.trial_id, "status": status, **config, "_sampled": tuple(config)}
        row.update({k: t.last_result.get(k) for k in ("epoch", "knn_top1", "linear_top1")})
        rows.append(row)
    params = sorted(_sampled_keys(rows) - {"method"})
    print(f"sweep {cfg.name} ({cfg.space}): {len(rows)} of {cfg.trials * cfg.repeats} trial(s)")
    print(format_table(rows, ["trial", "status", "method", *params, "epoch", "knn_top1", "linear_top1"]))
    return 0


def _cmd_spaces(args: argparse.Namespace) -> int:
    from spaces import list_spaces, load_space
    from spaces._describe import describe_space

    for name in list_spaces():
        space = load_space(name)
        print(f"{name}: {space.description}")
        for line in describe_space(space):
            print(f"  {line}")
        print()
    return 0


def _write_tables(args: argparse.Namespace):
    from analysis.tables import write_tables

    paths = [_experiment_path(n, args.storage_path) for n in args.names]
    for p in paths:
        if not (Path(p) / "sweep.json").exists():
            raise UsageError(f"`name`: no sweep at {p} (missing sweep.json)")
    return write_tables(paths, args.out)


def _cmd_tables(args: argparse.Namespace) -> int:
    written = _write_tables(args)
    out = Path(args.out)
    for t in written:
        counts = t.trials["status"].value_counts().to_dict() if len(t.trials) else {}
        print(f"{t.sweep}: {len(t.trials)} trial(s) {counts}, {len(t.epochs)} epoch row(s) -> {out}/*/sweep={t.sweep}/")
    if args.plots:
        import pandas as pd

        from analysis import plots

        trials = pd.concat([t.trials for t in written], ignore_index=True)
        epochs = pd.concat([t.epochs for t in written], ignore_index=True)
        made = [plots.learning_curves(epochs, out / "plots" / "learning_curves.png")]
        params = sorted({c for s in trials["sampled"].dropna() for c in str(s).split(",") if c} - {"method"})
        made.append(plots.metric_vs_params(trials, params, out / "plots" / "metric_vs_params.png"))
        for t in written:
            if len(t.pareto):
                metrics = [c for c in t.pareto.columns if c != "optuna_trial" and not c.startswith("param_")][:2]
                if len(metrics) == 2:
                    made.append(
                        plots.pareto_front(
                            t.pareto, t.trials, metrics[1], metrics[0], out / "plots" / f"pareto_{t.sweep}.png"
                        )
                    )
        print("plots: " + ", ".join(str(p) for p in made))
    return 0


def _cmd_ablation(args: argparse.Namespace) -> int:
    import pandas as pd

    from analysis import ablation, format_ablation
    from analysis.plots import ablation_heatmap
    from analysis.tables import write_parquet

    written = _write_tables(args)
    trials = pd.concat([t.trials for t in written], ignore_index=True)
    rows, cols = args.rows.split(","), args.cols.split(",")
    try:
        pivot = ablation(
            trials, rows=rows, cols=cols, metric=args.metric, statuses=None if args.all_statuses else ("completed",)
        )
    except KeyError as e:
        raise UsageError(f"`rows`/`cols`/`metric`: {e.args[0]}") from e
    if pivot.empty:
        raise UsageError(f"`metric`: no {'' if args.all_statuses else 'completed '}trial reports {args.metric!r}")
    print(format_ablation(pivot).to_string())
    stem = f"ablation_{'-'.join(rows)}_x_{'-'.join(cols)}_{args.metric}"
    out = Path(args.out)
    flat = pivot.copy()
    flat.columns = ["|".join(map(str, c)) for c in flat.columns]
    write_parquet(flat.reset_index().astype({r: str for r in rows}), out / f"{stem}.parquet")
    ablation_heatmap(pivot, out / f"{stem}.png", title=args.metric)
    print(f"saved {out / stem}.parquet and .png")
    return 0


COMMANDS = {
    "train": _cmd_train,
    "tables": _cmd_tables,
    "ablation": _cmd_ablation,
    "run": _cmd_run,
    "resume": _cmd_resume,
    "status": _cmd_status,
    "spaces": _cmd_spaces,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``csweep`` console script; returns the exit code."""
    from trainables.data import DataError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except (ConfigError, DataError, UsageError) as e:
        print(f"csweep {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except ConnectionError as e:  # --address names no reachable Ray cluster
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"csweep {args.command}: error: `address` {getattr(args, 'address', None)!r}: {reason}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("csweep: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
