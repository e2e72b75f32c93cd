"""Point rasterizer and alpha compositor with PyTorch3D's semantics, in plain torch.

Conventions (PyTorch3D's ``rasterize_points`` + ``AlphaCompositor``):

- Points are given in NDC: ``(x, y)`` screen position, ``z`` view-space depth.
  +X points left and +Y up: pixel column 0 is at the largest x, row 0 at the
  largest y. The shorter image side spans [-1, 1]; the longer side spans
  ``[-s, s]`` with ``s = long / short``. Pixel centres sit mid-cell, so a pixel is
  ``2 / min(H, W)`` NDC units wide on both axes.
- A point covers a pixel when the squared NDC distance from the point to the pixel
  centre is ``< radius**2``; points with ``z < 0`` are skipped.
- Each pixel keeps its ``points_per_pixel`` (K) nearest covering points, sorted by
  ``z`` ascending (ties: lower point index first). ``idx`` holds point indices
  into the batch flattened to ``(B * P)`` (PyTorch3D's packed index, ``b * P + p``);
  empty slots hold ``idx = -1``, ``zbuf = -1``, ``dists = -1``.
- Compositing is front to back: ``out = sum_k alpha_k prod_{j<k}(1 - alpha_j) f_k``
  with ``alpha = 1 - dist2 / radius**2`` (clamped to [0, 1]).

Vectorised: every point lists the pixels of a square window that can reach it
(half-width ``ceil(radius / pixel + 0.5)``), the covering candidates are sorted by
(pixel, z, point) and the first K of each pixel are kept. Same code on CPU and CUDA.
The compositor is one sparse (pixels x points) by dense (points x C) product.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn


class PointFragments(NamedTuple):
    """Rasterizer output, each (B, H, W, K): packed point index (int64), depth, squared NDC distance."""

    idx: Tensor
    zbuf: Tensor
    dists: Tensor


def ndc_ranges(height: int, width: int) -> tuple[float, float]:
    """NDC extent (x range, y range): 2 on the shorter side, ``2 * long / short`` on the longer."""
    x_range = 2.0 * width / height if width > height else 2.0
    y_range = 2.0 * height / width if height > width else 2.0
    return x_range, y_range


def pixel_ndc(index: Tensor, size: int, ndc_range: float) -> Tensor:
    """NDC centre of pixel ``index`` along an axis of ``size`` pixels (flipped: index 0 -> +range/2)."""
    offset = ndc_range / 2.0
    flipped = (size - 1 - index).to(torch.float32)
    return -offset + (ndc_range * flipped + offset) / size


def _nearest_pixel(coord: Tensor, size: int, ndc_range: float, margin: int) -> Tensor:
    """Index of the pixel whose centre is nearest to NDC ``coord``; far/non-finite values land off-image."""
    index = size - 0.5 - (coord + ndc_range / 2) * size / ndc_range
    return index.clamp(-2 * margin, size + 2 * margin).nan_to_num(-2 * margin).round().long()


def rasterize_points(
    points: Tensor,
    image_size: int | tuple[int, int],
    radius: float = 0.01,
    points_per_pixel: int = 8,
    max_candidates: int = 1 << 24,
) -> PointFragments:
    """Rasterize point clouds ``points`` (B, P, 3) = (x_ndc, y_ndc, z_view) into (B, H, W, K) fragments.

    ``max_candidates`` bounds the number of (point, window pixel) pairs held at once;
    clouds are processed in groups under that bound. Gradients flow to ``points``
    through ``zbuf`` and ``dists``.
    """
    if points.ndim != 3 or points.shape[-1] != 3:
        raise ValueError(f"points must be (B, P, 3), got {tuple(points.shape)}")
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    k = points_per_pixel
    b, p, _ = points.shape
    x_range, y_range = ndc_ranges(height, width)
    radius2 = float(torch.tensor(radius, dtype=torch.float32).square())  # as PyTorch3D: r * r in float32
    pixel = 2.0 / min(height, width)
    half = math.ceil(radius / pixel + 0.5)
    side = 2 * half + 1
    window = torch.arange(-half, half + 1, device=points.device)

    idx = torch.full((b * height * width * k,), -1, dtype=torch.long, device=points.device)
    zbuf = points.new_full((b * height * width * k,), -1.0)
    dists = points.new_full((b * height * width * k,), -1.0)
    step = max(1, max_candidates // max(1, p * side * side))
    for start in range(0, b, step):
        chunk = points[start:start + step]
        n = chunk.shape[0]
        x, y, z = (t.reshape(-1) for t in chunk.unbind(-1))  # (n * P,)
        # Nearest pixel of each point (inverse of pixel_ndc), then a side x side window around it.
        col0 = _nearest_pixel(x, width, x_range, half)
        row0 = _nearest_pixel(y, height, y_range, half)
        cols, rows = col0.unsqueeze(1) + window, row0.unsqueeze(1) + window  # (n * P, side)
        dx = x.unsqueeze(1) - pixel_ndc(cols, width, x_range)
        dy = y.unsqueeze(1) - pixel_ndc(rows, height, y_range)
        dist2 = (dy * dy).unsqueeze(2) + (dx * dx).unsqueeze(1)  # (n * P, side rows, side cols)
        hit = (
            (dist2 < radius2)
            & ((rows >= 0) & (rows < height)).unsqueeze(2)
            & ((cols >= 0) & (cols < width)).unsqueeze(1)
            & ((z >= 0) & torch.isfinite(z)).view(-1, 1, 1)
        )
        flat = hit.view(-1).nonzero().squeeze(1)
        point = flat // (side * side)
        offset = flat % (side * side)
        cloud = point // p
        pix = (cloud * height + row0[point] + offset // side - half) * width + col0[point] + offset % side - half
        cand_z = z[point]
        # One stable sort on (pixel, z): z >= 0 compares like its float32 bit pattern.
        z_bits = (cand_z.detach().float() + 0.0).view(torch.int32).long()
        order = torch.sort((pix << 32) | z_bits, stable=True).indices
        pix = pix[order]
        counts = torch.bincount(pix, minlength=n * height * width)
        rank = torch.arange(pix.numel(), device=pix.device) - (counts.cumsum(0) - counts)[pix]
        keep = rank < k
        kept = order[keep]
        slot = (start * height * width + pix[keep]) * k + rank[keep]
        idx[slot] = start * p + point[kept]
        zbuf = zbuf.index_put((slot,), cand_z[kept])
        dists = dists.index_put((slot,), dist2.view(-1)[flat[kept]])
    shape = (b, height, width, k)
    return PointFragments(idx.view(shape), zbuf.view(shape), dists.view(shape))


class PointsRasterizer(nn.Module):
    """Module form of :func:`rasterize_points` holding its settings (``radius`` in NDC units)."""

    def __init__(
        self,
        image_size: int | tuple[int, int] = 256,
        radius: float = 0.01,
        points_per_pixel: int = 8,
        max_candidates: int = 1 << 24,
    ):
        super().__init__()
        self.image_size = image_size
        self.radius = radius
        self.points_per_pixel = points_per_pixel
        self.max_candidates = max_candidates

    def forward(self, points_ndc: Tensor) -> PointFragments:
        return rasterize_points(
            points_ndc, self.image_size, self.radius, self.points_per_pixel, self.max_candidates
        )


def alpha_composite(idx: Tensor, alphas: Tensor, features: Tensor) -> Tensor:
    """Front-to-back compositing of per-point features into images.

    ``idx``, ``alphas``: (B, H, W, K) z-sorted packed indices (``-1`` = empty) and
    opacities; ``features``: (B * P, C) packed (or (B, P, C)). Returns (B, C, H, W);
    pixels without points are 0.
    """
    features = features.reshape(-1, features.shape[-1])
    b, h, w, k = idx.shape
    idx = idx.reshape(-1, k)
    valid = idx >= 0
    alphas = torch.where(valid, alphas.reshape(-1, k), torch.zeros_like(alphas.reshape(-1, k)))
    transmittance = torch.cumprod(1 - alphas, dim=1)
    weights = alphas * torch.cat([torch.ones_like(transmittance[:, :1]), transmittance[:, :-1]], dim=1)
    pixel = torch.arange(idx.shape[0], device=idx.device).unsqueeze(1).expand_as(idx)
    blend = torch.sparse_coo_tensor(
        torch.stack([pixel[valid], idx[valid]]), weights[valid], (idx.shape[0], features.shape[0]),
        check_invariants=False,
    )
    out = torch.sparse.mm(blend, features)  # (B * H * W, C)
    return out.view(b, h, w, -1).permute(0, 3, 1, 2)


class AlphaCompositor(nn.Module):
    """Alpha compositing of rasterized points, with PyTorch3D's renderer weights.

    ``forward(fragments, features, radius)`` -> (B, C, H, W) with
    ``alpha = clamp(1 - dists / radius**2, 0, 1)``; pixels no point covers get
    ``background_color`` (a C-vector) when one is set, else 0.
    """

    def __init__(self, background_color: Tensor | list[float] | tuple[float, ...] | None = None):
        super().__init__()
        self.background_color = background_color

    def forward(self, fragments: PointFragments, features: Tensor, radius: float) -> Tensor:
        alphas = (1 - fragments.dists / (radius * radius)).clamp(0, 1)
        images = alpha_composite(fragments.idx, alphas, features)
        if self.background_color is None:
            return images
        color = torch.as_tensor(self.background_color, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
        empty = (fragments.idx[..., 0] < 0).unsqueeze(1)
        return torch.where(empty, color, images)
