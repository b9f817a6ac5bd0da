"""One harness for distributed tests: run a function on N gloo processes on CPU and collect what each rank returns.

``run_workers(fn, *args, tmp_path=...)`` spawns ``world_size`` processes (``torch.multiprocessing.spawn``), each with
a gloo process group on a free local port; rank ``r`` calls ``fn(r, *args)`` and its (``torch.save``-able) return
value comes back at index ``r``. ``fn`` must be a module-level function (spawn pickles it by name).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

__all__ = ["free_port", "run_workers"]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _entry(rank: int, fn: Callable[..., Any], args: tuple, port: int, world_size: int, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        torch.save(fn(rank, *args), Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_workers(fn: Callable[..., Any], *args: Any, tmp_path: Path, world_size: int = 2) -> list[Any]:
    """``[fn(0, *args), ..., fn(world_size - 1, *args)]``, each computed in its own process of one gloo group."""
    mp.spawn(_entry, args=(fn, args, free_port(), world_size, str(tmp_path)), nprocs=world_size, join=True)
    return [torch.load(Path(tmp_path) / f"rank{rank}.pt", weights_only=False) for rank in range(world_size)]
