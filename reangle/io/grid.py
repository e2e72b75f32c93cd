"""Tiling several videos into one grid video."""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F


def tile_videos(videos: Sequence[torch.Tensor], columns: int | None = None,
                max_width: int | None = None) -> torch.Tensor:
    """Videos ``[N, 3, H, W]`` (same N and size) tiled row by row -> ``[N, 3, rows*H, columns*W]``.

    ``columns`` defaults to ceil(sqrt(count)); empty cells are black. With ``max_width`` the grid
    is downscaled (aspect kept, sides rounded down to even numbers) to at most that many pixels wide.
    """
    if not videos:
        raise ValueError("no videos to tile")
    shapes = {tuple(v.shape) for v in videos}
    if len(shapes) != 1:
        raise ValueError(f"videos to tile must share one shape [N, 3, H, W]; got {sorted(shapes)}")
    n, c, h, w = videos[0].shape
    columns = columns or math.ceil(math.sqrt(len(videos)))
    rows = math.ceil(len(videos) / columns)
    grid = videos[0].new_zeros((n, c, rows * h, columns * w))
    for i, video in enumerate(videos):
        r, col = divmod(i, columns)
        grid[:, :, r * h:(r + 1) * h, col * w:(col + 1) * w] = video
    if max_width is not None and grid.shape[-1] > max_width:
        scale = max_width / grid.shape[-1]
        size = (max(2, int(grid.shape[-2] * scale) // 2 * 2), max(2, int(grid.shape[-1] * scale) // 2 * 2))
        grid = F.interpolate(grid, size=size, mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
    return grid
