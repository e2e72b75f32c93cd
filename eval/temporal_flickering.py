"""VBench's temporal flickering: (255 - mean_t mean |f_t - f_{t+1}|) / 255 on full-resolution
uint8 frames (1: no change between frames). The dataset score is the mean over videos."""
from __future__ import annotations

import torch
from torch import Tensor


def to_uint8_levels(frames: Tensor) -> Tensor:
    """``[N, 3, H, W]`` in [0, 1] -> the uint8 values they were decoded from, as float64 (0..255)."""
    return frames.double().clamp(0, 1).mul(255).round()


def temporal_flickering(frames: Tensor) -> float:
    """Score of one video ``[N >= 2, 3, H, W]`` in [0, 1]."""
    if frames.ndim != 4 or frames.shape[0] < 2:
        raise ValueError(f"temporal flickering needs a video [N >= 2, 3, H, W], got {tuple(frames.shape)}")
    levels = to_uint8_levels(frames)
    mean_abs_diff = (levels[1:] - levels[:-1]).abs().mean(dim=(1, 2, 3)).mean()
    return float((255.0 - mean_abs_diff) / 255.0)
