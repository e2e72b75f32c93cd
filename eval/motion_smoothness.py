"""VBench's motion smoothness with a frame interpolator (AMT-S).

Keep frames 0, 2, 4, ...; interpolate the midpoint of each kept pair (embt = 0.5); compare
each interpolated frame with the original odd frame it replaces:
(255 - mean |original - interpolated|) / 255 on uint8 values (interpolated frames are
truncated to uint8 as VBench does, with a 1e-4
guard against float round-off). A video with an even number of frames has no
interpolated counterpart for its last frame, which is skipped. The dataset score is the
mean over videos.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from reangle.io.video import uint8_levels


def midpoint_pairs(frames: Tensor) -> tuple[Tensor, Tensor]:
    """The kept neighbours ``(frames[0:-1:2], frames[2::2])`` whose midpoints are interpolated."""
    if frames.ndim != 4 or frames.shape[0] < 3:
        raise ValueError(f"motion smoothness needs a video [N >= 3, 3, H, W], got {tuple(frames.shape)}")
    kept = frames[0::2]
    return kept[:-1], kept[1:]


def interpolate_midpoints(interpolate: Callable[[Tensor, Tensor, Tensor], Tensor], img0: Tensor, img1: Tensor) -> Tensor:
    """``interpolate(img0, img1, embt=0.5)`` on ``[B, 3, H, W]`` in [0, 1] (the interpolator pads
    to the sizes it needs and crops back, see ``reangle.models.vbench``)."""
    embt = img0.new_full((img0.shape[0], 1, 1, 1), 0.5)
    with torch.no_grad():
        return interpolate(img0, img1, embt).float()


def smoothness_score(frames: Tensor, interpolated: Tensor) -> float:
    """Score of a video ``[N, 3, H, W]`` from its interpolated midpoints ``[(N + 1) // 2 - 1, 3, H, W]``."""
    odd = frames[1::2]
    n = min(odd.shape[0], interpolated.shape[0])
    original = uint8_levels(odd[:n]).double()
    # VBench truncates (astype(uint8)); the 1e-4 keeps an exact level k / 255 from dropping to k - 1
    predicted = interpolated[:n].double().clamp(0, 1).mul(255).add(1e-4).floor()
    return float((255.0 - (original - predicted).abs().mean()) / 255.0)
