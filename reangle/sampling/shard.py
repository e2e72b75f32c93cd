"""Splitting views over ranks and gathering what each rank made.

``shard`` is a pure function: rank ``r`` of ``w`` takes items ``r, r + w, r + 2w, ...``,
so every item is taken exactly once and ranks differ by at most one item.
"""
from __future__ import annotations

from typing import Any, Sequence, TypeVar

import torch.distributed as dist

T = TypeVar("T")


def shard(items: Sequence[T], rank: int, world_size: int) -> list[T]:
    """The items of ``rank`` (0-based) among ``world_size`` ranks."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
    return list(items[rank::world_size])


def gather(local: list[Any]) -> list[Any]:
    """All ranks' ``local`` lists concatenated in rank order (``local`` itself without a process group)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(local)
    parts: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(parts, local)
    return [item for part in parts for item in part]
