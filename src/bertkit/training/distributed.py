"""Thin helpers over torch.distributed. Processes are started by `torchrun` (never by bertkit):
it sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous; we read them, pick NCCL on GPUs and gloo
on CPU, and expose the few collectives the trainer needs. Only rank 0 logs and saves.
"""

from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(flag: str, local_rank: int = 0) -> torch.device:
    """`--device auto|cpu|cuda|cuda:N` -> torch.device; under torchrun, cuda means cuda:LOCAL_RANK."""
    if flag == "auto":
        flag = "cuda" if torch.cuda.is_available() else "cpu"
    if flag.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError(f"--device {flag}: no CUDA device is visible; use --device cpu")
        if flag == "cuda":
            flag = f"cuda:{local_rank}"
    elif flag != "cpu":
        raise ValueError(f"--device {flag!r}: expected auto, cpu, cuda or cuda:N")
    return torch.device(flag)


def setup(device_flag: str = "auto", timeout_minutes: int = 60) -> DistInfo:
    """Join the process group when started by torchrun (WORLD_SIZE > 1); otherwise one process.
    The long timeout lets rank 0 tokenize and cache a large data set while the others wait."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_flag, local_rank)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=timeout_minutes))
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=device)


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's `obj`, in rank order (a list of one item without a process group)."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj: Any, info: DistInfo, src: int = 0) -> Any:
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_mean(value: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        value = value.clone()
        dist.all_reduce(value, op=dist.ReduceOp.SUM)
        value /= info.world_size
    return value


@contextlib.contextmanager
def main_process_first(info: DistInfo) -> Iterator[None]:
    """Rank 0 runs the block first (e.g. tokenize and write a cache), then the others run it
    (reading the cache) — so preprocessing happens once, not N times."""
    if info.enabled and not info.is_main:
        barrier()
    yield
    if info.enabled and info.is_main:
        barrier()


def shutdown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
