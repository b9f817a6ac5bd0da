"""One harness for distributed tests: run a function on N gloo processes on CPU and collect what each rank returns.

``run_workers(fn, *args, tmp_path=...)`` spawns ``world_size`` processes (``torch.multiprocessing.spawn``), each with
a gloo process group rendezvousing through a file in ``tmp_path`` (no TCP port to race other processes for) over the
loopback interface; rank ``r`` calls ``fn(r, *args)`` and its (``torch.save``-able) return value comes back at index
``r``. ``fn`` must be a module-level function (spawn pickles it by name).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

__all__ = ["run_workers"]


def _entry(rank: int, fn: Callable[..., Any], args: tuple, world_size: int, out_dir: str) -> None:
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # ranks talk over loopback whatever the host name resolves to
    store = dist.FileStore(str(Path(out_dir) / "rendezvous"), world_size)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=world_size, timeout=timedelta(minutes=5))
    torch.save(fn(rank, *args), Path(out_dir) / f"rank{rank}.pt")
    # Every rank leaves together: a rank tearing its gloo pairs down while a peer still has a collective (or the
    # autograd engine's all_gather backward) in flight makes that peer abort ("terminate called without an active
    # exception").
    dist.barrier()
    dist.destroy_process_group()


def run_workers(fn: Callable[..., Any], *args: Any, tmp_path: Path, world_size: int = 2) -> list[Any]:
    """``[fn(0, *args), ..., fn(world_size - 1, *args)]``, each computed in its own process of one gloo group."""
    (Path(tmp_path) / "rendezvous").unlink(missing_ok=True)
    mp.spawn(_entry, args=(fn, args, world_size, str(tmp_path)), nprocs=world_size, join=True)
    return [torch.load(Path(tmp_path) / f"rank{rank}.pt", weights_only=False) for rank in range(world_size)]
