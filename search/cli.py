"""``csweep``: the command line.

Every command validates everything it was given (method, dataset files, ``--set`` keys and values, resources)
before Ray starts; a mistake is one line on stderr naming the field and the allowed values, and exit code 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from search.cluster import address_from_env
from search.commands import COMMANDS, UsageError
from trainables.config import ConfigError, TrainConfig, describe_fields

__all__ = ["build_parser", "main"]

EXIT_USAGE = 2


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


def _add_sweep_args(p: argparse.ArgumentParser, *, out: str) -> None:
    """The sweeps a reading command takes, where they live and where its output goes."""
    p.add_argument("names", nargs="+", metavar="NAME_OR_PATH", help="sweep names or experiment paths")
    p.add_argument("--storage-path", default=None, help="where named sweeps live (default ./results)")
    p.add_argument("--out", default=out, help=f"output directory (default ./{out})")


def _add_resource_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, default=1, help="Ray Train workers per trial (DDP world size)")
    p.add_argument("--cpus-per-worker", type=float, default=None,
                   help="CPUs each worker holds, = its torch threads (default: on this machine, its CPUs shared by the "
                        "trials that run at once; with --address, 1)")
    p.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs each worker holds (0 = CPU, gloo)")
    p.add_argument("--memory-per-worker", default=None, metavar="SIZE",
                   help="memory each worker holds and may use (MB, or with a unit: 1500M, 4G); a worker over it fails "
                        "with 'out of memory' and is retried per --max-failures (default: no limit)")
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
        help="any setting below; values are YAML/JSON literals (temperature=0.1, lr=1e-3, mean=[0.5,0.5,0.5]); "
        "a setting given both here and as a flag (--epochs, --dataset, --data-dir) is refused",
    )


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose epilog may be a callable, called only when help is printed: the settings listing
    imports torch and every method, which `csweep --help`, `csweep` alone and most usage errors never need."""

    def format_help(self) -> str:
        if callable(self.epilog):
            self.epilog = self.epilog()
        return super().format_help()


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="csweep",
        description="Distributed hyperparameter sweeps of contrastive learning on Ray.",
        epilog="`csweep train --help` lists the methods, datasets and every setting with its default.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    from search.spec import EXECUTORS, SAMPLERS, SCHEDULERS

    train = sub.add_parser(
        "train",
        help="train one method: in this process, or as a Ray Train run",
        description="Train one method (one trial): one local worker in this process without Ray (the inline "
        "executor), or with Ray Train on a local Ray or --address.",
        epilog=_settings_help,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    train.add_argument("method", help="a registered method (listed below)")
    _add_data_args(train)
    _add_resource_args(train)
    train.add_argument("--preset", default=None,
                       help="a method's named settings under your --set values (digits: learns in a minute on a CPU)")
    train.add_argument("--name", default=None, help="run name; an existing run of that name resumes")
    train.add_argument("--max-failures", type=int, default=0, help="worker failures to recover from a checkpoint")
    train.add_argument("--json", action="store_true", help="print the final metrics as JSON on the last line")
    train.add_argument("--schedule", action="append", default=[], metavar="EPOCH:KEY=VALUE[,KEY=VALUE]",
                       help="change settings from that epoch on (repeatable), as PBT did: the run continues from its "
                            "exact checkpoint of the epoch before with the new values (one worker); "
                            "analysis.population.replay_args(...) writes them for a PBT trial")
    train.add_argument("--executor", choices=EXECUTORS, default="auto",
                       help="inline: train in this process without Ray (1 worker, local storage, no --address); "
                            "train: a Ray Train run; auto: inline for 1 worker without --address or $RAY_ADDRESS "
                            "and with local storage, else train")

    run = sub.add_parser(
        "run",
        help="run a sweep: Ray Tune + Optuna over a search space",
        description="Sweep a search space (a name from `csweep spaces` or a .py file exposing "
        "space(trial, fixed)) with Ray Tune, OptunaSearch and early stopping.",
        epilog=_settings_help,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument("space", help="bundled space name or path to a Python file")
    _add_data_args(run)
    _add_resource_args(run)
    run.add_argument(
        "--trials", type=int, default=None, help="configurations to sample (default: the space's TRIALS, else 20)"
    )
    run.add_argument("--repeats", type=int, default=1, help="seeds per sampled configuration (default 1)")
    run.add_argument("--fuse", type=int, default=1, metavar="K",
                     help="train up to K configurations per Tune trial as one fused model (same architecture, "
                          "per-member lr, temperature, ...); each stays a trial of its own in Optuna, the tables "
                          "and the progress table (column fused_group), stopped early on its own ASHA rungs "
                          "(--scheduler asha|fifo). Default 1: no fusion")
    run.add_argument(
        "--concurrency",
        type=int,
        default=None,
        help="trials at once (default: what the cluster holds for one trial's request)",
    )
    run.add_argument(
        "--executor",
        choices=EXECUTORS,
        default="auto",
        help="train: Ray Train per trial; inline: loop in the Tune actor (1 worker); auto: inline for 1-worker trials",
    )
    run.add_argument("--scheduler", default="asha",
                     help=f"one of {', '.join(SCHEDULERS)} (default asha). pbt/pb2: Ray Tune's population-based "
                          "training: the sampler draws only the first population; PBT (random perturbation) or PB2 "
                          "(a GP bandit; needs GPy), not Optuna, then changes the space's PERTURBABLE settings "
                          "(lr, temperature, ...) mid-run, cloning better trials' checkpoints")
    run.add_argument("--perturbation-interval", type=int, default=None,
                     help="pbt/pb2: epochs between two exploit/explore steps (default 10%% of the epochs)")
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
    run.add_argument("--warm-start", action="append", default=[], metavar="PATH_OR_SWEEP",
                     help="seed the study from earlier sweeps (a name, an experiment path, or a `csweep tables` "
                          "output directory; repeatable): without --top every completed trial is added with its "
                          "value (no budget spent); only parameters both spaces sample are carried over")
    run.add_argument("--top", type=int, default=None, metavar="K",
                     help="with --warm-start: enqueue the K best earlier configurations as the first trials instead")
    run.add_argument("--pending-timeout", type=float, default=600.0, metavar="SECONDS",
                     help="stop the sweep (exit 75, resumable) when a trial has waited this long for resources while "
                          "none of its trials ran (default 600)")

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
    _add_sweep_args(tables, out="tables")
    tables.add_argument("--plots", action="store_true", help="also write PNG plots to OUT/plots/")

    report = sub.add_parser(
        "report",
        help="write one self-contained HTML report of sweeps (figures as PNG beside it)",
        description="Build the tables of sweeps and write OUT/report.html (opens offline: figures embedded), "
        "OUT/<sweep>_<figure>.png and OUT/best_config.yaml.",
    )
    _add_sweep_args(report, out="report")

    ls = sub.add_parser("ls", help="list the sweeps in a storage path with their trial counts")
    ls.add_argument("--storage-path", default=None, help="where sweeps live (default ./results)")

    abl = sub.add_parser("ablation", help="pivot a metric over two settings (mean ± std), save Parquet + PNG")
    _add_sweep_args(abl, out="tables")
    abl.add_argument("--rows", required=True, help="setting(s) for the rows, comma-separated")
    abl.add_argument("--cols", required=True, help="setting(s) for the columns, comma-separated")
    abl.add_argument("--metric", default="linear_top1", help="trials.parquet column to aggregate (default linear_top1)")
    abl.add_argument("--bins", type=int, default=5,
                     help="cut float settings with more distinct values into this many ranges (0: no binning)")
    abl.add_argument("--all-statuses", action="store_true", help="include stopped/errored trials that have the metric")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``csweep`` console script; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)  # help and argument errors answer here, before torch is imported
    from trainables.data import DataError

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
