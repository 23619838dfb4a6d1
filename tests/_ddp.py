"""Run a function on W real processes (gloo, CPU, spawn) and collect what each rank returns.

Usage from a test module (the worker must be a module-level function so spawn can pickle it)::

    def _worker(rank: int, world: int) -> dict: ...

    @pytest.fixture(scope="module")
    def results() -> list[dict]:
        return run_ranks(_worker)
"""

from __future__ import annotations

import os
import socket
import tempfile
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

Worker = Callable[..., dict[str, Any]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _entry(rank: int, world: int, port: int, out_dir: str, worker: Worker, args: tuple[Any, ...]) -> None:
    torch.set_num_threads(1)  # two ranks share a small machine
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        result = worker(rank, world, *args)
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def run_ranks(worker: Worker, *args: Any, world: int = 2) -> list[dict[str, Any]]:
    """Spawn ``world`` ranks running ``worker(rank, world, *args)``; return their results in rank order."""
    with tempfile.TemporaryDirectory() as out_dir:
        mp.start_processes(
            _entry, args=(world, _free_port(), out_dir, worker, args), nprocs=world, join=True, start_method="spawn"
        )
        return [torch.load(os.path.join(out_dir, f"rank{r}.pt"), weights_only=False) for r in range(world)]
