"""Tiling several videos into one grid video, each tile optionally labelled with its name."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

LABEL_PAD = 2           # pixels between the label text and its box edge
LABEL_BOX_OPACITY = 0.6  # the box darkens the picture under the text by this fraction


def label_ink(text: str, width: int) -> torch.Tensor:
    """Float ``[h, w]`` mask in [0, 1] of ``text`` in PIL's default font with a ``LABEL_PAD`` margin
    (the label's box), cut to at most ``width`` pixels (a narrow tile shows the label's start)."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    left, top, right, bottom = font.getbbox(text)
    h, w = bottom + 2 * LABEL_PAD, min(width, right - left + 2 * LABEL_PAD)
    image = Image.new("L", (w, h), 0)
    ImageDraw.Draw(image).text((LABEL_PAD - left, LABEL_PAD), text, fill=255, font=font)
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0)


def draw_label(tile: torch.Tensor, text: str) -> torch.Tensor:
    """``tile`` ``[N, 3, H, W]`` in [0, 1] with ``text`` in white on a dark box in its top-left corner
    (the same on every frame; the rest of the tile is unchanged)."""
    ink = label_ink(text, tile.shape[-1])[:tile.shape[-2]].to(tile)
    h, w = ink.shape
    out = tile.clone()
    out[..., :h, :w] = out[..., :h, :w] * (1 - LABEL_BOX_OPACITY) * (1 - ink) + ink
    return out


def tile_videos(videos: Sequence[torch.Tensor], columns: int | None = None,
                max_width: int | None = None, labels: Sequence[str] | None = None) -> torch.Tensor:
    """Videos ``[N, 3, H, W]`` (same N and size) tiled row by row -> ``[N, 3, rows*H, columns*W]``.

    ``columns`` defaults to ceil(sqrt(count)); empty cells are black. With ``max_width`` each tile
    is downscaled first (aspect kept, sides even) so the grid is at most that many pixels wide.
    ``labels`` (one per video, e.g. the view names) are drawn into the top-left corner of each tile.
    """
    if not videos:
        raise ValueError("no videos to tile")
    if labels is not None and len(labels) != len(videos):
        raise ValueError(f"got {len(labels)} labels for {len(videos)} videos; give one label per video")
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
        grid[:, :, r * h:(r + 1) * h, col * w:(col + 1) * w] = video if labels is None else draw_label(video, labels[i])
    return grid
