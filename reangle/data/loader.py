"""A resumable, seeded, rank-sharded DataLoader for small in-memory datasets.

Epoch ``e`` visits the dataset in the order ``randperm(n, seed + e)``; with ``world_size``
ranks, rank ``r`` takes positions ``r, r + world, ...`` of that order, padded by wrapping
so every rank sees the same number of batches.

Lightning fetches a batch ahead of the one being trained on, so the loader cannot tell
from its own iteration what was used. Whoever consumes a batch calls
:meth:`ResumableLoader.mark_consumed` (the data module does, when Lightning moves a
training batch to the device); ``state_dict`` is the position after the last consumed
batch, which Lightning stores in checkpoints and hands back through ``load_state_dict``,
so a resumed run continues with exactly the batch an uninterrupted run would take next.
"""
from __future__ import annotations

import math
from collections import deque
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class _EpochBatches(Sampler[list[int]]):
    def __init__(self, size: int, batch_size: int, seed: int, rank: int, world_size: int):
        if size < 1:
            raise ValueError("cannot load batches from an empty dataset")
        self.size, self.batch_size, self.seed = size, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.per_rank = math.ceil(size / world_size)
        self.start = (0, 0)              # (epoch, batch) where the next iteration begins
        self.handed_out: deque[tuple[int, int]] = deque()

    def __len__(self) -> int:
        return math.ceil(self.per_rank / self.batch_size)

    def order(self, epoch: int) -> list[int]:
        """Dataset indices of this rank in ``epoch``."""
        perm = torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed + epoch)).tolist()
        total = self.per_rank * self.world_size
        padded = (perm * math.ceil(total / self.size))[:total]
        return padded[self.rank::self.world_size]

    def __iter__(self) -> Iterator[list[int]]:
        epoch, first = self.start
        mine = self.order(epoch)
        batches = [mine[i:i + self.batch_size] for i in range(0, len(mine), self.batch_size)]
        for index in range(first, len(batches)):
            self.handed_out.append((epoch, index))
            yield batches[index]
        self.start = (epoch + 1, 0)


class ResumableLoader(DataLoader):
    """``DataLoader`` over ``dataset`` in the seeded, sharded, resumable order above (no workers)."""

    def __init__(self, dataset: Dataset, batch_size: int = 1, seed: int = 0, rank: int = 0, world_size: int = 1):
        self.batches = _EpochBatches(len(dataset), batch_size, seed, rank, world_size)
        self.consumed_until = (0, 0)
        super().__init__(dataset, batch_sampler=self.batches, num_workers=0)

    def mark_consumed(self) -> None:
        """Record that the oldest handed-out batch was trained on."""
        if self.batches.handed_out:
            epoch, index = self.batches.handed_out.popleft()
            self.consumed_until = (epoch + 1, 0) if index + 1 == len(self.batches) else (epoch, index + 1)
            if not self.batches.handed_out:  # Lightning may start the next epoch without exhausting this one
                self.batches.start = self.consumed_until

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.consumed_until[0], "batch": self.consumed_until[1]}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.consumed_until = (int(state["epoch"]), int(state["batch"]))
        self.batches.start = self.consumed_until
        self.batches.handed_out.clear()
