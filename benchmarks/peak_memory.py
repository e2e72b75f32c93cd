"""Peak memory a timed section adds on top of what is already loaded (shared by the benchmark scripts)."""
from __future__ import annotations

import os
import resource


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class PeakMemory:
    """``start()`` before the section, ``extra_mb()`` after it: CUDA peak allocated growth, or the
    growth of the process's peak RSS on the CPU (MiB, never negative)."""

    def __init__(self, device: str):
        self.device = device

    def start(self) -> None:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = _rss_mb()

    def extra_mb(self) -> float:
        import torch

        if self.device == "cuda":
            torch.cuda.synchronize()
            return max((torch.cuda.max_memory_allocated() - self.base) / 2**20, 0.0)
        return max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - self.base, 0.0)
