"""Training beyond one process: PyTorch's own engine (torchrun + DistributedDataParallel).

    torchrun --standalone --nproc-per-node 2 -m surfad train --data ... --out runs/x
    torchrun --nnodes 2 --node-rank R --rdzv-endpoint HOST:PORT --nproc-per-node 4 -m surfad train ...

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; with WORLD_SIZE > 1 training joins the process group
(gloo on CPU, NCCL on CUDA, chosen from the device). Every process trains on its share of each
epoch's seeded permutation of the samples (process r takes every WORLD_SIZE-th one from position
r), so a step of N processes with --batch-size B sees the same N x B samples as one process with
--batch-size N x B; gradients are averaged by DDP. --batch-size is per process. Process 0 alone
validates, selects, checkpoints and writes the run folder; its decisions (stop for the time budget
or patience, an error) reach the others through the group, so none waits for ever, and a process
that dies makes the others fail at their next exchange, within the group's timeout at most.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from surfad.errors import SurfadError

T = TypeVar("T")
TIMEOUT = timedelta(minutes=float(os.environ.get("SURFAD_DIST_TIMEOUT_MIN", "30")))  # longest wait for a peer


@dataclass(frozen=True)
class World:
    """This process's place among the training processes (rank 0 of 1 when training alone)."""

    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


ALONE = World()  # one process


def join(device: torch.device) -> World:
    """Join the process group torchrun describes (WORLD_SIZE > 1), or train alone; idempotent."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return ALONE
    if not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=TIMEOUT)
    return World(dist.get_rank(), dist.get_world_size())


def launched_rank() -> int:
    """The rank torchrun gave this process (0 when not launched by it): who reports on the terminal."""
    return int(os.environ.get("RANK", "0"))


def leave(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def from_main(world: World, work: Callable[[], T]) -> T:
    """Run `work` on process 0 and give its result (or its SurfadError) to every process."""
    if not world.distributed:
        return work()
    box: list[Any] = [None]
    if world.main:
        try:
            box[0] = ("ok", work())
        except SurfadError as err:
            box[0] = ("error", str(err))
    exchange(lambda: dist.broadcast_object_list(box, src=0))
    kind, value = box[0]
    if kind == "error":
        raise SurfadError(value)
    return value


def exchange(operation: Callable[[], Any]) -> Any:
    """A collective operation; a peer that died or stopped answering becomes a clear error."""
    try:
        return operation()
    except (RuntimeError, dist.DistBackendError) as err:
        raise SurfadError(f"training process {dist.get_rank()} lost the other processes (one stopped or was killed): "
                          f"{str(err).splitlines()[0][:200]}") from None


def shard(indices: torch.Tensor, world: World) -> torch.Tensor:
    """This process's share of a permutation: every world.size-th index from position world.rank."""
    return indices[world.rank :: world.size]


def gather_in_order(part: torch.Tensor, world: World, total: int) -> torch.Tensor | None:
    """On process 0, the rows of every process's `part` (process r holds rows r, r + size, ...) back in
    their original order (total rows); None on the others."""
    if not world.distributed:
        return part
    parts: list[Any] = [None] * world.size if world.main else []
    exchange(lambda: dist.gather_object(part, parts if world.main else None, dst=0))
    if not world.main:
        return None
    out = torch.empty((total, *part.shape[1:]), dtype=part.dtype)
    for rank, rows in enumerate(parts):
        out[rank::world.size] = rows
    return out
