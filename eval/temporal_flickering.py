"""VBench's temporal flickering: (255 - mean_t mean |f_t - f_{t+1}|) / 255 on full-resolution
uint8 frames (1: no change between frames). The dataset score is the mean over videos."""
from __future__ import annotations

from torch import Tensor

from reangle.io.video import uint8_levels


def temporal_flickering(frames: Tensor) -> float:
    """Score of one video ``[N >= 2, 3, H, W]`` in [0, 1]."""
    if frames.ndim != 4 or frames.shape[0] < 2:
        raise ValueError(f"temporal flickering needs a video [N >= 2, 3, H, W], got {tuple(frames.shape)}")
    levels = uint8_levels(frames).double()
    mean_abs_diff = (levels[1:] - levels[:-1]).abs().mean(dim=(1, 2, 3)).mean()
    return float((255.0 - mean_abs_diff) / 255.0)
