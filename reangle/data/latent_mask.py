"""Pixel visibility masks -> latent visibility masks (CogVideoX VAE grid).

The CogVideoX VAE maps ``N = 1 + 4n`` frames of ``H x W`` pixels to ``1 + n`` latent
frames of ``H/8 x W/8``. A latent position counts as visible only when every frame it
summarises is: spatially the mask is subsampled by nearest neighbour (factor 8), then
temporally the first frame is kept alone and each following group of 4 frames is
combined by logical AND (49 frames -> 13 latent frames).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def latent_mask(mask: torch.Tensor, spatial: int = 8, temporal: int = 4) -> torch.Tensor:
    """``[..., N, H, W]`` bool (True = visible) -> ``[..., 1 + (N-1)/temporal, H/spatial, W/spatial]`` bool."""
    *lead, n, h, w = mask.shape
    if (n - 1) % temporal or h % spatial or w % spatial:
        raise ValueError(f"mask of {n} frames of {h}x{w} does not fit the VAE grid: frames must be 1 + "
                         f"{temporal}k and height/width multiples of {spatial}")
    flat = mask.reshape(-1, n, h, w).to(torch.uint8)
    small = F.interpolate(flat, size=(h // spatial, w // spatial), mode="nearest").bool()
    first, rest = small[:, :1], small[:, 1:]
    rest = rest.reshape(rest.shape[0], (n - 1) // temporal, temporal, *rest.shape[2:]).all(dim=2)
    return torch.cat([first, rest], dim=1).reshape(*lead, 1 + (n - 1) // temporal, h // spatial, w // spatial)
