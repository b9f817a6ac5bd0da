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

    parts = [f"methods: {', '.join(sorted(METHODS))}", f"datasets: {', '.join(DATASETS)}",
             _fields_help("shared settings (--set key=value)", TrainConfig)]
    for name, cls in sorted(METHODS.items()):
        recipe = ", ".join(f"{k}={v!r}" for k, v in cls.recipe.items())
        parts.append(_fields_help(f"{name} settings (recipe: {recipe})", cls.Config))
    return "\n\n".join(parts)


def _add_resource_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", type=int, default=1, help="Ray Train workers per trial (DDP world size)")
    p.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs each worker holds (torch threads)")
    p.add_argument("--gpus-per-worker", type=float, default=0.0, help="GPUs each worker holds (0 = CPU, gloo)")
    p.add_argument("--address", default=None, help="join this Ray cluster instead of starting a local one")
    p.add_argument("--storage-path", default=None,
                   help="where results and checkpoints go: a local path, NFS or s3:// (default ./results)")


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default=None, help="dataset name (default digits, the embedded one)")
    p.add_argument("--data-dir", default=None, help="root of the on-disk dataset")
    p.add_argument("--download", action="store_true", help="download CIFAR/STL-10 if missing (never by default)")
    p.add_argument("--epochs", type=int, default=None, help="training epochs")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="any setting below; values are YAML/JSON literals (temperature=0.1, mean=[0.5,0.5,0.5])")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="csweep", description="Distributed hyperparameter sweeps of contrastive learning on Ray.",
        epilog=_settings_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from trainables.methods import METHODS

    train = sub.add_parser("train", help="train one method as a Ray Train run",
                           description="Train one method (one trial) with Ray Train on a local Ray or --address.",
                           epilog=_settings_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_argument("method", help=f"one of {', '.join(sorted(METHODS))}")
    _add_data_args(train)
    _add_resource_args(train)
    train.add_argument("--name", default=None, help="run name; an existing run of that name resumes")
    train.add_argument("--max-failures", type=int, default=0, help="worker failures to recover from a checkpoint")
    train.add_argument("--json", action="store_true", help="print the final metrics as JSON on the last line")
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


def prepare_trial(method: str, settings: dict[str, Any], resources, *, download: bool = False):
    """Validate a trial fully (config, world size, dataset files, batch vs dataset size) without Ray.

    Loading the dataset here also fills the node cache the workers then memory-map.
    """
    from trainables.loop import check_data, load_data
    from trainables.trial import TrialSpec

    spec = TrialSpec.from_settings(method, settings)
    spec.check_world(resources.workers)
    if spec.train.amp == "fp16" and not resources.gpus_per_worker:
        raise ConfigError("`amp=fp16` needs GPUs (--gpus-per-worker > 0); on CPU use amp=bf16 or amp=off")
    data = load_data(spec.train, download=download)
    check_data(spec, data)
    return spec


def _cmd_train(args: argparse.Namespace) -> int:
    from search.cluster import ClusterResources, TrialResources, check_feasible

    resources = TrialResources(args.workers, args.cpus_per_worker, args.gpus_per_worker)
    spec = prepare_trial(args.method, _settings(args), resources, download=args.download)
    if not args.address:
        import torch

        check_feasible(resources, ClusterResources.local(num_gpus=torch.cuda.device_count()))
    if args.max_failures < 0:
        raise ConfigError(f"`max_failures` must be >= 0, but got max_failures={args.max_failures}")

    from search.cluster import init_ray
    from search.driver import build_trainer, fit_with_progress

    init_ray(args.address)
    if args.address:
        check_feasible(resources, ClusterResources.from_ray())
    name = args.name or f"train-{spec.method}-{spec.train.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"
    storage = _storage_path(args.storage_path)
    print(f"csweep: training {spec.method} on {spec.train.dataset} for {spec.train.epochs} epoch(s) with "
          f"{resources.workers} worker(s); results in {storage}/{name}", file=sys.stderr)
    result = fit_with_progress(
        lambda callbacks: build_trainer(spec, resources, name=name, storage_path=storage,
                                        max_failures=args.max_failures, callbacks=callbacks),
        printer=lambda line: print(line, file=sys.stderr, flush=True))
    if result.error is not None:
        print(f"csweep: training failed: {result.error}", file=sys.stderr)
        return 1
    metrics = {k: v for k, v in (result.metrics or {}).items() if _jsonable(v)}
    metrics.update(name=name, path=f"{storage}/{name}",
                   checkpoint=result.checkpoint.path if result.checkpoint else None)
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


COMMANDS = {"train": _cmd_train}


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
    except KeyboardInterrupt:
        print("csweep: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
