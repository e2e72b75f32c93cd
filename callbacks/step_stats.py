"""Log seconds per optimizer step and peak memory (GPU allocator, else process RSS) in GB."""
from __future__ import annotations

import resource
import sys
import time

import lightning as L
import torch


def peak_memory_gb(device: torch.device) -> float:
    """Peak memory so far: CUDA allocator peak on GPU, the process's max RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 1e9
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / 1e9 if sys.platform == "darwin" else rss * 1024 / 1e9


class StepStats(L.Callback):
    def __init__(self):
        self._start: float | None = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._start is None:
            return
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)
        pl_module.log("perf/step_s", time.perf_counter() - self._start)
        pl_module.log("perf/peak_memory_gb", peak_memory_gb(pl_module.device))
