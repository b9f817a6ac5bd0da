"""The one training loop every method runs, as a plain function.

``fit(spec, reporter=...)`` trains one trial in the current process. Under Ray Train it runs inside each worker
(``search.driver``), with the process group already initialised; without Ray (a script, a benchmark, a GPU box
without Ray) it runs as is, on one device. The loop owns data, optimiser, schedule, precision, DDP, evaluation and
checkpoint state; the method (``trainables.methods``) owns the model and the loss.

Determinism: the batch order of epoch ``e`` is a permutation drawn from ``(seed, e)`` and the augmentation generator
of every worker is re-seeded from ``(seed, e, rank)`` at the start of each epoch, so a run resumed from the checkpoint
of epoch ``k`` replays epochs ``k+1...`` exactly as an uninterrupted run would (bit-exact on CPU with
``deterministic=True``).
"""

from __future__ import annotations

import os
import queue
import resource
import threading
import time
from collections.abc import Iterator
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from trainables import distributed
from trainables.config import ConfigError, TrainConfig
from trainables.data import ImageData, load_dataset
from trainables.data.augment import AugmentConfig, BatchAugment, eval_transform
from trainables.memory import MemoryGuard
from trainables.methods import Batch, Method, RunShape, get_method, unwrap
from trainables.metrics import seed_probe_metric
from trainables.nets.syncbn import convert_sync_batchnorm
from trainables.optim import build_optimizer, lr_at
from trainables.probe import (
    calibrated_logreg_probe,
    ensemble_logits,
    extract_features,
    knn_top1,
    linear_probe,
    logreg_probe,
    seed_linear_probe,
    top1,
)
from trainables.trial import TrialSpec

# The API; fit's building blocks (setup, train_epoch, epoch_report, read_batches, epoch_order, Run, Progress, ...)
# keep public names because trainables.fused and the benchmarks assemble runs from them.
__all__ = ["CHECKPOINT_VERSION", "RecordingReporter", "Reporter", "check_data", "checkpoint_due", "evaluate_untrained",
           "fit", "load_data"]

#: 2: targets, queues and banks are ``MomentumTarget``/``nets.momentum`` modules and heads plain ``nn.Sequential``
#: (model keys changed); the method state holds only what ``Method.load_state_dict`` restores (sigmoid: none).
CHECKPOINT_VERSION = 2


class Reporter(Protocol):
    """Receives one report per epoch. ``state`` (a ``torch.save``-able dict) is given on rank 0 only."""

    def report(self, metrics: dict[str, Any], state: dict[str, Any] | None) -> None: ...


@dataclass
class Progress:
    """Loop position and bests, saved in every checkpoint."""

    epoch: int = 0  # epochs completed
    step: int = 0  # optimiser steps completed
    best: dict[str, float] = field(default_factory=dict)


def load_data(train: TrainConfig, *, download: bool = False) -> ImageData:
    """Load (or open from the node cache) the dataset a TrainConfig names."""
    return load_dataset(train.dataset, data_dir=train.data_dir, size=train.image_size, mean=train.mean,
                        std=train.std, download=download, loading=train.data_loading)


def check_data(spec: TrialSpec, data: ImageData) -> None:
    """Validate what depends on the dataset: at least one full batch per epoch, labels for label-using methods, and
    the method's own checks of the training set's size (``Method.check_data``)."""
    if spec.train.batch_size > len(data.train):
        raise ConfigError(f"`batch_size` must be at most the {len(data.train)} training images of "
                          f"{data.name}, but got batch_size={spec.train.batch_size}")
    get_method(spec.method).check_data(spec.method_config, spec.train, len(data.train))
    if get_method(spec.method).needs_labels(spec.method_config) and (np.asarray(data.train.labels) < 0).any():
        raise ConfigError(f"`method={spec.method}` needs labels, but {data.name}'s training split has unlabeled "
                          "images; use a self-supervised method or a labelled dataset")


def _device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())))
    return torch.device("cpu")


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def read_batches(images: np.ndarray, labels: np.ndarray, order: np.ndarray, per_worker: int,
             device: torch.device) -> Iterator[Batch]:
    """Yield this worker's batches (uint8 images, labels, row indices) on ``device``, read one batch ahead."""
    pin = device.type == "cuda"

    def read(rows: np.ndarray) -> tuple[torch.Tensor, ...]:
        rows = np.sort(rows)  # ascending reads are kinder to a memory-mapped file; order inside a batch is irrelevant
        x = torch.from_numpy(np.ascontiguousarray(images[rows]))
        y = torch.from_numpy(np.ascontiguousarray(labels[rows])).long()
        i = torch.from_numpy(rows.astype(np.int64))
        return tuple(t.pin_memory() for t in (x, y, i)) if pin else (x, y, i)

    steps = len(order) // per_worker
    q: queue.Queue = queue.Queue(maxsize=2)

    def producer() -> None:
        try:
            for s in range(steps):
                q.put(read(order[s * per_worker:(s + 1) * per_worker]))
        except BaseException as e:  # surface read errors in the training thread
            q.put(e)

    threading.Thread(target=producer, daemon=True).start()
    for _ in range(steps):
        item = q.get()
        if isinstance(item, BaseException):
            raise item
        yield Batch(*(t.to(device, non_blocking=True) for t in item))


def epoch_order(n: int, seed: int, epoch: int, per_worker: int) -> np.ndarray:
    """This worker's sample indices for ``epoch``: one global permutation, dealt out in per-worker blocks."""
    world, rank = distributed.world_size(), distributed.rank()
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    steps = n // (per_worker * world)
    perm = perm[: steps * per_worker * world].reshape(steps, world, per_worker)
    return perm[:, rank, :].reshape(-1)


def precision(train: TrainConfig, device: torch.device) -> str:
    """The autocast precision ``amp`` resolves to on ``device``: ``auto`` is bf16 on CUDA and off on CPU (CPU bf16
    autocast is slower than fp32 for convolutions on most CPUs)."""
    if train.amp != "auto":
        return train.amp
    return "bf16" if device.type == "cuda" else "off"


def memory_format(train: TrainConfig, device: torch.device) -> str:
    """The memory format ``memory_format`` resolves to: ``auto`` is channels_last on every device (tensor cores want
    NHWC; on CPU oneDNN's NHWC convolutions measured 1.0-1.5x faster trial steps, BENCHMARKS.md, issue 16)."""
    if train.memory_format != "auto":
        return train.memory_format
    return "channels_last"


def peak_mem_mb(device: torch.device) -> float:
    """Peak memory of this worker: CUDA allocator peak on GPU, process peak RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _evaluate(method: Method, model: nn.Module, data: ImageData, train: TrainConfig, device: torch.device,
              *, final: bool) -> dict[str, float]:
    """kNN top-1 on the val split every epoch; at the end also the linear (and logistic-regression) probes."""
    module = unwrap(model)
    module.eval()
    kw = dict(mean=data.mean, std=data.std, batch_size=train.eval_batch_size, device=device)
    fn = lambda x: method.eval_features(module, x)  # noqa: E731
    bank = extract_features(fn, data.train_labeled.images, **kw)
    val = extract_features(fn, data.val.images, **kw)
    test = extract_features(fn, data.test.images, **kw) if final else None
    module.train()
    if distributed.rank() != 0:
        return {}
    y_bank, y_val = torch.from_numpy(np.array(data.train_labeled.labels)), torch.from_numpy(np.array(data.val.labels))
    metrics = {"knn_top1": knn_top1(bank["backbone"], y_bank, val["backbone"], y_val, num_classes=data.num_classes,
                                    k=train.knn_k, temperature=train.knn_temperature)}
    if not final:
        return metrics
    y_test = torch.from_numpy(np.array(data.test.labels))
    logits = {}
    for name in bank:  # "backbone" plus any extra features (e.g. SelfCon exits)
        logits[name] = linear_probe(bank[name], y_bank, {"val": (val[name], y_val), "test": (test[name], y_test)},
                                    num_classes=data.num_classes, epochs=train.probe_epochs, lr=train.probe_lr,
                                    weight_decay=train.probe_weight_decay, seed=train.seed)
    metrics["linear_top1"] = top1(logits["backbone"]["test"], y_test)
    metrics["linear_val_top1"] = top1(logits["backbone"]["val"], y_val)
    for name, out in logits.items():
        if name != "backbone":
            metrics[f"{name}_top1"] = top1(out["test"], y_test)
    if len(logits) > 1:
        metrics["ensemble_top1"] = top1(ensemble_logits([out["test"] for out in logits.values()]), y_test)
    if train.logreg_probe:
        scores = logreg_probe(bank["backbone"], y_bank, {"test": (test["backbone"], y_test)}, seed=train.seed)
        metrics["logreg_top1"] = scores["test"]
    if train.probe == "seed":
        metrics.update(_seed_probe(method, module, data, train, device, bank["backbone"], y_bank,
                                   test["backbone"], y_test))
    return metrics


def _seed_probe(method: Method, module: nn.Module, data: ImageData, train: TrainConfig, device: torch.device,
                bank: torch.Tensor, y_bank: torch.Tensor, test: torch.Tensor, y_test: torch.Tensor) -> dict[str, float]:
    """``probe=seed``: the method's seed evaluation (:attr:`Method.seed_probe`) on the labelled training images."""
    name = seed_probe_metric(type(method))
    if method.seed_probe == "logreg":
        return {name: calibrated_logreg_probe(bank, y_bank, {"test": (test, y_test)})["test"]}
    augment = BatchAugment(AugmentConfig(size=data.image_size, scale=(0.2, 1.0), jitter_p=0.0, grayscale_p=0.0),
                           mean=data.mean, std=data.std)
    module.eval()
    try:
        top = seed_linear_probe(
            lambda x: method.eval_features(module, x)["backbone"], augment,
            lambda x: eval_transform(x, mean=data.mean, std=data.std),
            data.train_labeled.images, y_bank, data.test.images, y_test, num_classes=data.num_classes,
            epochs=train.seed_probe_epochs, batch_size=train.seed_probe_batch_size,
            lr=train.seed_probe_lr if train.seed_probe_lr is not None else method.seed_probe_lr,
            device=device, seed=train.seed)
    finally:
        module.train()
    return {name: top}


@dataclass
class Run:
    """What one training run holds from setup to its last report (built once by :func:`setup`)."""

    spec: TrialSpec
    data: ImageData
    device: torch.device
    method: Method
    model: nn.Module  # the module itself (optimiser, checkpoints)
    ddp_model: nn.Module  # what forwards: DDP- and/or torch.compile-wrapped
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    autocast: Any  # context manager
    channels_last: bool
    shape: RunShape
    per_worker: int
    peak_lr: float
    progress: Progress
    generator: torch.Generator
    warmup_steps: int  # steps left out of the timings (torch.compile's compilation)
    memory: MemoryGuard = field(default_factory=lambda: MemoryGuard(None))  # the worker's memory limit

    def lr(self, step: int) -> float:
        return lr_at(step, self.spec.train, steps_per_epoch=self.shape.steps_per_epoch,
                     total_steps=self.shape.total_steps, peak=self.peak_lr)


def setup(spec: TrialSpec, *, data: ImageData | None, device: torch.device | None,
           resume_state: dict[str, Any] | None) -> Run:
    """Device, precision, determinism, data, the method's model (DDP, compile), optimiser and restored state."""
    train = spec.train
    world = distributed.world_size()
    spec.check_world(world)
    device = device or _device()
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if train.num_threads:
        torch.set_num_threads(train.num_threads)
    if train.amp == "fp16" and device.type != "cuda":
        raise ConfigError("`amp=fp16` needs a GPU; on CPU use amp=bf16 or amp=off")
    amp = precision(train, device)
    channels_last = memory_format(train, device) == "channels_last"
    if train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    seed_everything(train.seed)

    data = data or load_data(train)
    check_data(spec, data)
    shape = RunShape.of(train, num_samples=len(data.train), world_size=world)
    method = get_method(spec.method)(spec.method_config, train=train, data=data)
    method.setup(shape)
    model = method.build()
    if train.sync_bn and world > 1:
        model = convert_sync_batchnorm(model, device)
    model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    ddp_model: nn.Module = model
    if world > 1:
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    if train.compile:
        ddp_model = torch.compile(ddp_model)
    optimizer = build_optimizer(model, train)
    scaler = torch.amp.GradScaler("cuda", enabled=amp == "fp16")
    autocast = (torch.autocast(device.type, dtype=torch.float16 if amp == "fp16" else torch.bfloat16)
                if amp != "off" else nullcontext())
    progress = Progress()
    if resume_state is not None:
        _restore(resume_state, spec, model, optimizer, scaler, method, progress)
    return Run(spec, data, device, method, model, ddp_model, optimizer, scaler, autocast, channels_last, shape,
                train.batch_size // world, train.scaled_lr(), progress, torch.Generator(device=device),
                warmup_steps=1 if train.compile else 0)


def train_epoch(run: Run, epoch: int) -> dict[str, Any]:
    """One epoch of optimiser steps; returns its training metrics (means over the workers)."""
    train, device, method, progress = run.spec.train, run.device, run.method, run.progress
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    run.generator.manual_seed(int(np.random.SeedSequence([train.seed, epoch, distributed.rank()]).generate_state(1)[0]))
    order = epoch_order(len(run.data.train), train.seed, epoch, run.per_worker)
    loss_sum = torch.zeros((), device=device)
    log_sums: dict[str, torch.Tensor] = {}
    t0 = time.perf_counter()
    timed_steps = 0
    for batch in read_batches(run.data.train.images, run.data.train.labels, order, run.per_worker, device):
        lr = run.lr(progress.step)
        for group in run.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        with torch.no_grad():
            views = method.views(batch.images, run.generator)
            if run.channels_last:
                views = [v.contiguous(memory_format=torch.channels_last) if v.dim() == 4 else v for v in views]
        with run.autocast:
            loss, logs = method.loss(run.ddp_model, views, batch, step=progress.step)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at epoch {epoch}, step {progress.step}: "
                                     "the trial diverged (lower lr or temperature, or turn AMP off)")
        run.optimizer.zero_grad(set_to_none=True)
        run.scaler.scale(loss).backward()
        if train.grad_clip:
            run.scaler.unscale_(run.optimizer)
            nn.utils.clip_grad_norm_(run.model.parameters(), train.grad_clip)
        run.scaler.step(run.optimizer)
        run.scaler.update()
        progress.step += 1
        run.memory.check(f"epoch {epoch}, step {progress.step}")
        method.after_step(run.ddp_model, step=progress.step)
        loss_sum += loss.detach().float()
        for k, v in logs.items():
            log_sums[k] = log_sums.get(k, 0.0) + torch.as_tensor(v, dtype=torch.float32, device=device)
        if run.warmup_steps:  # restart the clock after the compile warm-up
            run.warmup_steps -= 1
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
        else:
            timed_steps += 1
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    train_time = time.perf_counter() - t0
    steps = run.shape.steps_per_epoch
    return {
        "train_loss": distributed.all_reduce_mean(loss_sum / steps).item(),
        **{k: distributed.all_reduce_mean(v / steps).item() for k, v in log_sums.items()},
        "current_lr": run.lr(progress.step - 1),
        "epoch_time_s": train_time,
        "images_per_s": timed_steps * train.batch_size / train_time if timed_steps else float("nan"),
        "peak_mem_mb": distributed.all_reduce_max(torch.tensor(peak_mem_mb(device), device=device)).item(),
    }


def epoch_report(run: Run, epoch: int, trained: dict[str, Any]) -> dict[str, Any]:
    """An epoch's report: its training metrics, the method's extras, the evaluation (probes at the end), bests."""
    train, progress = run.spec.train, run.progress
    final = epoch == train.epochs
    t1 = time.perf_counter()
    world = distributed.world_size()
    metrics: dict[str, Any] = {
        "epoch": epoch,
        "step": progress.step,
        **trained,
        "world_size": world,
        "per_worker_batch": run.per_worker,
        "gathered_negatives": world > 1,
        **run.method.epoch_logs(step=progress.step),
    }
    metrics.update(_evaluate(run.method, run.ddp_model, run.data, train, run.device, final=final))
    metrics["eval_time_s"] = time.perf_counter() - t1
    for key in ("knn_top1", "linear_top1"):
        if key in metrics:
            progress.best[key] = max(progress.best.get(key, 0.0), metrics[key])
            metrics[f"best_{key}"] = progress.best[key]
    metrics["finished"] = final  # this report holds the final probes ("done" is reserved by Tune)
    return metrics


def fit(
    spec: TrialSpec,
    *,
    reporter: Reporter | None = None,
    resume_state: dict[str, Any] | None = None,
    data: ImageData | None = None,
    device: torch.device | None = None,
    stop_after_epoch: int | None = None,
    memory_limit_mb: float | None = None,
) -> dict[str, Any]:
    """Train ``spec`` and return the metrics of the last epoch (final probes included when training finished).

    Args:
        spec: the validated trial specification.
        reporter: receives each epoch's metrics and (rank 0) the full checkpoint state; None = no reports.
        resume_state: a state dict produced by an earlier report of the same spec; training continues after it.
        data: an already-loaded dataset (default: ``load_data(spec.train)``, the node-level cache).
        device: default CUDA (``LOCAL_RANK``) when available, else CPU.
        stop_after_epoch: stop (without final probes) after this epoch; used to simulate an interruption.
        memory_limit_mb: this worker's resident memory limit (``trainables.memory``): over it, the run raises
            ``TrialOutOfMemory`` at the next step or evaluation; None = no limit.
    """
    with MemoryGuard(memory_limit_mb) as guard:
        run = setup(spec, data=data, device=device, resume_state=resume_state)
        run.memory = guard
        last: dict[str, Any] = {}
        for epoch in range(run.progress.epoch + 1, spec.train.epochs + 1):
            trained = train_epoch(run, epoch)
            run.progress.epoch = epoch
            last = epoch_report(run, epoch, trained)
            guard.check(f"epoch {epoch}'s evaluation")
            stopping = stop_after_epoch is not None and epoch >= stop_after_epoch
            if reporter is not None:
                keep = checkpoint_due(spec.train, epoch) or stopping
                state = (_state(spec, run.model, run.optimizer, run.scaler, run.method, run.progress)
                         if keep and distributed.rank() == 0 else None)
                reporter.report(last, state)
            if stopping:
                break
    return last


def checkpoint_due(train: TrainConfig, epoch: int) -> bool:
    """Whether the report of ``epoch`` carries the resume checkpoint: every ``checkpoint_every`` epochs and after
    the last epoch (so a finished trial always has its final state)."""
    return epoch % train.checkpoint_every == 0 or epoch == train.epochs


def evaluate_untrained(spec: TrialSpec, *, data: ImageData | None = None,
                       device: torch.device | None = None) -> dict[str, Any]:
    """The final metrics (kNN and probes) of the method's freshly initialised model: the baseline training must beat."""
    device = device or _device()
    seed_everything(spec.train.seed)
    data = data or load_data(spec.train)
    method = get_method(spec.method)(spec.method_config, train=spec.train, data=data)
    method.setup(RunShape.of(spec.train, num_samples=len(data.train)))
    model = method.build().to(device)
    return _evaluate(method, model, data, spec.train, device, final=True)


def _state(spec: TrialSpec, model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
           method: Method, progress: Progress) -> dict[str, Any]:
    """Every piece of state a resume needs (weights, optimiser, scaler, method schedules, loop position, RNG)."""
    return {
        "version": CHECKPOINT_VERSION,
        "spec": spec.flat(),
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict(),
        "method": method.state_dict(),
        "progress": {"epoch": progress.epoch, "step": progress.step, "best": dict(progress.best)},
        "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state()},
    }


def changed_fields(saved: dict[str, Any], spec: TrialSpec) -> list[str]:
    """Settings in which a checkpoint's flat spec differs from ``spec`` (``epochs`` may grow and ``checkpoint_every``
    change: they are not compared)."""
    now = spec.flat()
    free = ("epochs", "checkpoint_every")
    return sorted(k for k in set(saved) | set(now) if k not in free and saved.get(k) != now.get(k))


def _restore(state: dict[str, Any], spec: TrialSpec, model: nn.Module, optimizer: torch.optim.Optimizer,
             scaler: torch.amp.GradScaler, method: Method, progress: Progress) -> None:
    if state.get("version") != CHECKPOINT_VERSION:
        raise ValueError(f"checkpoint version {state.get('version')!r} is not {CHECKPOINT_VERSION}")
    changed = changed_fields(state["spec"], spec)
    if changed:
        raise ValueError(f"the checkpoint was written by a different configuration (fields {', '.join(changed)})")
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scaler.load_state_dict(state["scaler"])
    method.load_state_dict(state["method"])
    progress.epoch, progress.step = state["progress"]["epoch"], state["progress"]["step"]
    progress.best = dict(state["progress"]["best"])
    torch.set_rng_state(state["rng"]["torch"])
    np.random.set_state(state["rng"]["numpy"])



class RecordingReporter:
    """A Reporter that keeps every epoch's metrics and the latest state in memory (scripts, tests, benchmarks)."""

    def __init__(self) -> None:
        self.metrics: list[dict[str, Any]] = []
        self.state: dict[str, Any] | None = None
        self.checkpoint_epochs: list[int] = []  # the epochs whose report carried a checkpoint

    def report(self, metrics: dict[str, Any], state: dict[str, Any] | None) -> None:
        self.metrics.append(dict(metrics))
        if state is not None:
            self.state = state
            self.checkpoint_epochs.append(metrics["epoch"])
