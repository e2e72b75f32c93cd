"""Z-buffered forward splatting of depth-lifted frames into new cameras.

Each source pixel becomes a 3D point (its depth along the optical axis), moves into the
target camera and lands on the target image:

- ``nearest``: on the closest pixel; the nearest point wins (ties averaged).
- ``bilinear``: on its four neighbours with bilinear weights; per target pixel only
  contributions within ``depth_tolerance`` (relative) of the nearest one are blended
  (a soft z-buffer), so surfaces blend and occluded points drop out.

Everything is batched over frames with scatter operations: the same code runs on CPU
and CUDA, with no Python loop over pixels or points.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from reangle.geometry.camera import project, transform, unproject

SPLAT_MODES = ("bilinear", "nearest")
_SNAP = 1e-4  # pixel coordinates this close to an integer are snapped (float round-off)


def relative_pose(src_w2c: torch.Tensor, dst_w2c: torch.Tensor) -> torch.Tensor:
    """``[..., 4, 4]`` mapping source-camera coordinates to target-camera coordinates (float64)."""
    return dst_w2c.double() @ torch.linalg.inv(src_w2c.double())


def dilate_holes(mask: torch.Tensor, kernel: int) -> torch.Tensor:
    """Grow the holes (False) of ``mask [N, H, W]`` by an odd ``kernel`` x ``kernel`` square."""
    if kernel <= 1:
        return mask
    if kernel % 2 == 0:
        raise ValueError(f"hole_dilation must be odd, got {kernel}")
    holes = (~mask).unsqueeze(1).to(torch.float16 if mask.is_cuda else torch.float32)
    grown = F.max_pool2d(holes, kernel, stride=1, padding=kernel // 2)
    return grown.squeeze(1) == 0


def _snap(coords: torch.Tensor) -> torch.Tensor:
    rounded = coords.round()
    return torch.where((coords - rounded).abs() < _SNAP, rounded, coords)


def splat(frames: torch.Tensor, depth: torch.Tensor, K: torch.Tensor, src_to_dst: torch.Tensor,
          mode: str = "bilinear", depth_tolerance: float = 0.02) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward-warp ``frames [N, C, H, W]`` with ``depth [N, H, W]`` by ``src_to_dst [N, 4, 4]``.

    ``K`` is ``[3, 3]`` (pixels) for both cameras. Returns the warped frames ``[N, C, H, W]``
    (0 where nothing lands) and the coverage mask ``[N, H, W]`` (True = something landed).
    """
    if mode not in SPLAT_MODES:
        raise ValueError(f"unknown splat mode {mode!r}; use one of {SPLAT_MODES}")
    n, c, h, w = frames.shape
    dtype, device = frames.dtype, frames.device
    points = unproject(depth.to(dtype), K.to(device))                          # [N, P, 3]
    points = transform(points, src_to_dst.to(device=device, dtype=dtype))
    uv, z = project(points, K.to(device))                                       # [N, P, 2], [N, P]
    uv = _snap(uv)
    # Splat into a canvas with a one-pixel border so that the four corners of a point are
    # base + (0, 1, W+2, W+3) in flat indices; the border is cropped at the end.
    hp, wp = h + 2, w + 2
    if mode == "nearest":
        x0, y0 = uv[..., 0].round(), uv[..., 1].round()
        offsets = torch.zeros(1, 1, 1, dtype=torch.long, device=device)
    else:
        x0, y0 = uv[..., 0].floor(), uv[..., 1].floor()
        offsets = torch.tensor([0, 1, wp, wp + 1], device=device).view(4, 1, 1)
    inside = (z > 1e-6) & (x0 >= -1) & (x0 <= w - 1) & (y0 >= -1) & (y0 <= h - 1)
    frame = torch.arange(n, device=device).view(n, 1) * (hp * wp)
    base = frame + (y0.clamp(-1, h - 1).long() + 1) * wp + (x0.clamp(-1, w - 1).long() + 1)
    target = (base.unsqueeze(0) + offsets).view(-1)                            # [C*N*P]
    if mode == "nearest":
        weights = inside.to(dtype).unsqueeze(0)
    else:
        fx, fy = uv[..., 0] - x0, uv[..., 1] - y0
        gx, gy = (1 - fx) * inside, 1 - fy
        weights = torch.stack([gx * gy, fx * inside * gy, gx * fy, fx * inside * fy])  # [4, N, P]

    z_c = torch.where(weights > 0, z, float("inf")).view(-1)  # zero-weight corners take no part
    nearest = torch.full((n * hp * wp,), float("inf"), dtype=dtype, device=device)
    nearest.scatter_reduce_(0, target, z_c, reduce="amin")
    front = nearest[target]
    keep = z_c <= front * (1 + depth_tolerance) if mode == "bilinear" else z_c == front
    weights = weights.view(-1) * keep                                          # [C*N*P]

    def accumulate(values: torch.Tensor) -> torch.Tensor:                       # [C*N*P] -> [N, H, W]
        canvas = torch.zeros(n * hp * wp, dtype=dtype, device=device).scatter_add_(0, target, values)
        return canvas.view(n, hp, wp)[:, 1:-1, 1:-1]

    weight = accumulate(weights)
    covered = weight > 0
    inv = torch.where(covered, 1.0 / weight.clamp_min(1e-12), 0.0)
    colors = frames.reshape(n, c, h * w)
    out = torch.stack([accumulate((weights.view(-1, n, h * w) * colors[:, k]).view(-1)) * inv
                       for k in range(c)], dim=1)                               # [N, C, H, W]
    return out, covered

def warp_video(frames: torch.Tensor, depth: torch.Tensor, K: torch.Tensor, src_w2c: torch.Tensor,
               dst_w2c: torch.Tensor, mode: str = "bilinear", depth_tolerance: float = 0.02,
               hole_dilation: int = 1, chunk_frames: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp a video into a target trajectory, ``chunk_frames`` frames at a time.

    ``frames [N, 3, H, W]`` in [0, 1], ``depth [N, H, W]``, ``K [3, 3]``, ``src_w2c`` and
    ``dst_w2c`` ``[N, 4, 4]`` (or ``[4, 4]``) world-to-camera. Returns warped frames (holes
    set to 0) and the visibility mask ``[N, H, W]`` (True = visible) after growing the
    holes by ``hole_dilation``.
    """
    n = frames.shape[0]
    src_to_dst = relative_pose(src_w2c.expand(n, 4, 4), dst_w2c.expand(n, 4, 4))
    outs, masks = [], []
    for start in range(0, n, chunk_frames):
        part = slice(start, start + chunk_frames)
        out, covered = splat(frames[part], depth[part], K, src_to_dst[part], mode, depth_tolerance)
        visible = dilate_holes(covered, hole_dilation)
        outs.append(out * visible.unsqueeze(1))
        masks.append(visible)
    return torch.cat(outs), torch.cat(masks)
