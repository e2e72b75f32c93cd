"""Tiling several videos into one grid video."""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F


def tile_videos(videos: Sequence[torch.Tensor], columns: int | None = None,
                max_width: int | None = None) -> torch.Tensor:
    """Videos ``[N, 3, H, W]`` (same N and size) tiled row by row -> ``[N, 3, rows*H, columns*W]``.

    ``columns`` defaults to ceil(sqrt(count)); empty cells are black. With ``max_width`` each tile
    is downscaled first (aspect kept, sides even) so the grid is at most that many pixels wide.
    """
    if not videos:
        raise ValueError("no videos to tile")
    shapes = {tuple(v.shape) for v in videos}
    if len(shapes) != 1:
        raise ValueError(f"videos to tile must share one shape [N, 3, H, W]; got {sorted(shapes)}")
    n, c, h, w = videos[0].shape
    columns = columns or math.ceil(math.sqrt(len(videos)))
    rows = math.ceil(len(videos) / columns)
    if max_width is not None and columns * w > max_width:  # shrink the tiles first: the grid stays small
        tile_w = max(2, max_width // columns // 2 * 2)
        h, w = max(2, round(h * tile_w / w) // 2 * 2), tile_w
        videos = [F.interpolate(v, size=(h, w), mode="bilinear", align_corners=False, antialias=True).clamp(0, 1)
                  for v in videos]
    grid = videos[0].new_zeros((n, c, rows * h, columns * w))
    for i, video in enumerate(videos):
        r, col = divmod(i, columns)
        grid[:, :, r * h:(r + 1) * h, col * w:(col + 1) * w] = video
    return grid
