"""torch.distributed helpers (DDP via torchrun). The memory bank stays identical on every rank because
every rank applies the same all-gathered (ids, features) update each step."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_from_env(device: torch.device) -> Dist:
    """Join the process group torchrun describes in the environment; a single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size())


def local_device(requested: str) -> torch.device:
    """`auto` -> cuda:LOCAL_RANK when a GPU is present, else cpu."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        requested = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    if requested.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {requested!r} requested but CUDA is not available (use --device cpu)")
    return torch.device(requested)


def all_gather_cat(t: torch.Tensor, d: Dist) -> torch.Tensor:
    """Concatenate a (no-grad) tensor from every rank along dim 0, in rank order."""
    if not d.enabled:
        return t
    parts = [torch.empty_like(t) for _ in range(d.world)]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def mean_over_ranks(t: torch.Tensor, d: Dist) -> torch.Tensor:
    if not d.enabled:
        return t
    t = t.detach().clone()
    dist.all_reduce(t)
    return t / d.world


def from_rank0(value: float, d: Dist) -> float:
    """Rank 0's value on every rank (a decision all ranks must take alike, e.g. from rank 0's clock)."""
    if not d.enabled:
        return value
    t = torch.tensor([value], dtype=torch.float64)
    dist.broadcast(t, src=0)
    return float(t.item())
