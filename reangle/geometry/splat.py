"""Z-buffered forward splatting of depth-lifted frames into new cameras.

Each source pixel becomes a 3D point (its depth along the optical axis), moves into the
target camera and lands on the target image:

- ``bilinear``: on its four neighbours with bilinear weights; per target pixel only
  contributions within ``depth_tolerance`` (relative) of the nearest one are blended
  (a soft z-buffer), so surfaces blend and occluded points drop out.
- ``nearest``: no blending. A point covers the same neighbours (the pixel centres less than
  one pixel away in x and in y, its footprint), so a surface magnified up to 2x leaves no
  cracks; per target pixel, among the contributions within ``depth_tolerance`` of the
  nearest one, the point landing closest to the pixel centre wins (ties averaged).

Everything is batched over frames with scatter operations: the same code runs on CPU
and CUDA, with no Python loop over pixels or points.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch

SPLAT_MODES = ("bilinear", "nearest")
CPU_BLOCK_POINTS = 1 << 16  # source points per block on the CPU (fits the cache)
_QUANTUM = 8192.0  # pixel coordinates are rounded to 1/8192 px, which removes float round-off at integers


def relative_pose(src_w2c: torch.Tensor, dst_w2c: torch.Tensor) -> torch.Tensor:
    """``[..., 4, 4]`` mapping source-camera coordinates to target-camera coordinates (float64)."""
    return dst_w2c.double() @ torch.linalg.inv(src_w2c.double())


def dilate_holes(mask: torch.Tensor, kernel: int) -> torch.Tensor:
    """Grow the holes (False) of ``mask [N, H, W]`` by an odd ``kernel`` x ``kernel`` square.

    A square filter is a row filter then a column filter, each an AND of shifted copies
    (a loop over the kernel's offsets, not over pixels).
    """
    if kernel <= 1:
        return mask
    if kernel % 2 == 0:
        raise ValueError(f"hole_dilation must be odd, got {kernel}")
    out = mask
    for dim in (-1, -2):
        grown = out.clone()
        size = out.shape[dim]
        for shift in range(1, kernel // 2 + 1):
            if shift >= size:
                break
            grown.narrow(dim, shift, size - shift).logical_and_(out.narrow(dim, 0, size - shift))
            grown.narrow(dim, 0, size - shift).logical_and_(out.narrow(dim, shift, size - shift))
        out = grown
    return out


def project_depth(depth: torch.Tensor, K: torch.Tensor, src_to_dst: torch.Tensor, row0: int = 0):
    """Where each pixel of ``depth [N, R, W]`` (image rows ``row0 ...``) lands in the target camera.

    Returns target pixel coordinates ``u, v`` and depth ``z``, each ``[N, R*W]``. A pixel's
    ray ``K^-1 [x, y, 1]`` is separable in x and y, so the rotated ray is a sum of a row
    term and a column term: no per-point matrix product.
    """
    n, r, w = depth.shape
    dtype, device = depth.dtype, depth.device
    K = K.to(device=device, dtype=torch.float64)
    rx = (torch.arange(w, device=device, dtype=torch.float64) - K[0, 2]) / K[0, 0]              # [W]
    ry = (torch.arange(row0, row0 + r, device=device, dtype=torch.float64) - K[1, 2]) / K[1, 1]  # [R]
    rot, t = src_to_dst[:, :3, :3].to(device), src_to_dst[:, :3, 3].to(device)                   # float64
    coords = []
    for k in range(3):
        ray = (rot[:, k, 0, None, None] * rx + rot[:, k, 1, None, None] * ry[:, None]
               + rot[:, k, 2, None, None]).to(dtype)                                              # [N, R, W]
        coords.append(torch.addcmul(t[:, k, None, None].to(dtype), depth, ray).view(n, r * w))
    x, y, z = coords
    inv_z = z.reciprocal()
    u = (x.mul_(inv_z).mul_(K[0, 0].item()).add_(K[0, 2].item()) * _QUANTUM).round_().div_(_QUANTUM)
    v = (y.mul_(inv_z).mul_(K[1, 1].item()).add_(K[1, 2].item()) * _QUANTUM).round_().div_(_QUANTUM)
    return u, v, z


CORNER_OFFSETS = ((0, 0), (1, 0), (0, 1), (1, 1))  # (dx, dy) of the four neighbours of floor(u, v)


def _corners(u: torch.Tensor, v: torch.Tensor, z: torch.Tensor, h: int, w: int, mode: str,
             frame_base: torch.Tensor):
    """Canvas indices, weights, depth keys and (``nearest``) squared distances ``[4*M]`` of the
    four neighbours each point lands on.

    The canvas has a one-pixel border, so the four corners of a point are
    ``base + (0, 1, W+2, W+3)`` in flat indices; ``frame_base [N, 1]`` offsets each frame.
    Weights are bilinear; ``nearest`` uses them only as the footprint (weight > 0), with the
    squared distance from the landing point to the corner's centre. Corners with zero
    weight get an infinite depth key and distance: they take no part in the z-buffer.
    """
    device, dtype = u.device, u.dtype
    wp = w + 2
    x0, y0 = u.floor(), v.floor()
    offsets = torch.tensor([dx + dy * wp for dx, dy in CORNER_OFFSETS], device=device).view(4, 1, 1)
    inside = (z > 1e-6) & (x0 >= -1) & (x0 <= w - 1) & (y0 >= -1) & (y0 <= h - 1)
    # Canvas indices are below 2^24, so float arithmetic is exact before the conversion.
    base = torch.addcmul(x0.clamp(-1, w - 1) + (wp + 1), y0.clamp(-1, h - 1), torch.tensor(float(wp), device=device))
    target = (base.long().add_(frame_base).unsqueeze(0) + offsets).view(-1)
    fx, fy = u - x0, v - y0
    distance = None
    if mode == "nearest":
        distance = torch.stack([(fx - dx).square_().add_((fy - dy).square_()) for dx, dy in CORNER_OFFSETS])
    gx, gy = (1 - fx).mul_(inside), 1 - fy
    fx.mul_(inside)
    weights = torch.empty(4, *u.shape, dtype=dtype, device=device)              # [4, N, M]
    for k, (a, b) in enumerate(((gx, gy), (fx, gy), (gx, fy), (fx, fy))):
        torch.mul(a, b, out=weights[k])
    covers = weights > 0
    depth_key = torch.where(covers, z, float("inf")).view(-1)
    if distance is not None:
        distance = distance.masked_fill_(~covers, float("inf")).view(-1)
    return target, weights.view(-1), depth_key, distance


def splat(frames: torch.Tensor, depth: torch.Tensor, K: torch.Tensor, src_to_dst: torch.Tensor,
          mode: str = "bilinear", depth_tolerance: float = 0.02,
          block_points: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Forward-warp ``frames [N, C, H, W]`` with ``depth [N, H, W]`` by ``src_to_dst [N, 4, 4]``.

    ``K`` is ``[3, 3]`` (pixels) for both cameras. Returns the warped frames ``[N, C, H, W]``
    (0 where nothing lands) and the coverage mask ``[N, H, W]`` (True = something landed).
    ``block_points`` splits the work into blocks of about that many source points (rows of
    one frame), which keeps the temporaries in the CPU's cache; ``None``: one block.
    """
    if mode not in SPLAT_MODES:
        raise ValueError(f"unknown splat mode {mode!r}; use one of {SPLAT_MODES}")
    n, c, h, w = frames.shape
    dtype, device = frames.dtype, frames.device
    hp, wp = h + 2, w + 2
    depth = depth.to(dtype)
    if block_points is None:
        blocks = [(slice(0, n), slice(0, h))]
    else:
        rows = max(1, block_points // w)
        blocks = [(slice(i, i + 1), slice(r, min(h, r + rows))) for i in range(n) for r in range(0, h, rows)]

    # Pass 1: the nearest depth landing on each target pixel.
    nearest = torch.full((n * hp * wp,), float("inf"), dtype=dtype, device=device)
    landed = []
    for fs, rs in blocks:
        u, v, z = project_depth(depth[fs, rs], K, src_to_dst[fs], rs.start)
        frame_base = torch.arange(fs.start, fs.stop, device=device).view(-1, 1) * (hp * wp)
        target, weights, depth_key, distance = _corners(u, v, z, h, w, mode, frame_base)
        nearest.scatter_reduce_(0, target, depth_key, reduce="amin")
        landed.append((fs, rs, target, weights, depth_key, distance))

    # Contributions near the front (within the tolerance) count; nearest: only the closest of those.
    for _, _, target, weights, depth_key, distance in landed:
        weights.mul_(depth_key.le_(nearest.index_select(0, target).mul_(1 + depth_tolerance)))
    if mode == "nearest":
        closest = torch.full_like(nearest, float("inf"))
        for _, _, target, weights, _, distance in landed:
            distance.masked_fill_(weights == 0, float("inf"))
            closest.scatter_reduce_(0, target, distance, reduce="amin")
        for _, _, target, weights, _, distance in landed:
            weights.copy_(distance.eq(closest.index_select(0, target)).logical_and_(distance.isfinite()))

    # Pass 2: sum the weights and the weighted colours.
    sums = torch.zeros(c + 1, n * hp * wp, dtype=dtype, device=device)  # weight, then weighted colours
    for fs, rs, target, weights, depth_key, _ in landed:
        sums[0].scatter_add_(0, target, weights)
        colors = frames[fs, :, rs].transpose(0, 1).reshape(c, 1, -1)            # [C, 1, N*M]
        corners = weights.view(-1, colors.shape[-1])
        weighted = depth_key.view_as(corners)  # reused as a buffer
        for k in range(c):
            torch.mul(corners, colors[k], out=weighted)
            sums[k + 1].scatter_add_(0, target, weighted.view(-1))
    sums = sums.view(c + 1, n, hp, wp)[:, :, 1:-1, 1:-1]
    covered = sums[0] > 0
    inv = sums[0].reciprocal().nan_to_num_(posinf=0.0)  # 1 / weight, 0 where nothing landed
    return (sums[1:] * inv).transpose(0, 1), covered


def warp_video(frames: torch.Tensor, depth: torch.Tensor, K: torch.Tensor, src_w2c: torch.Tensor,
               dst_w2c: torch.Tensor, mode: str = "bilinear", depth_tolerance: float = 0.02,
               hole_dilation: int = 1, chunk_frames: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp a video into a target trajectory, ``chunk_frames`` frames at a time.

    ``frames [N, 3, H, W]`` in [0, 1], ``depth [N, H, W]``, ``K [3, 3]``, ``src_w2c`` and
    ``dst_w2c`` ``[N, 4, 4]`` (or ``[4, 4]``) world-to-camera. Returns warped frames (holes
    set to 0) and the visibility mask ``[N, H, W]`` (True = visible) after growing the
    holes by ``hole_dilation``.
    """
    n, _, h, w = frames.shape
    src_to_dst = relative_pose(src_w2c.expand(n, 4, 4), dst_w2c.expand(n, 4, 4))
    warped = torch.empty_like(frames)
    visible = torch.empty(n, h, w, dtype=torch.bool, device=frames.device)
    block_points = None if frames.is_cuda else CPU_BLOCK_POINTS

    def warp_chunk(start: int) -> None:
        part = slice(start, start + chunk_frames)
        out, covered = splat(frames[part], depth[part], K, src_to_dst[part], mode, depth_tolerance, block_points)
        visible[part] = dilate_holes(covered, hole_dilation)
        torch.mul(out, visible[part].unsqueeze(1), out=warped[part])

    starts = range(0, n, chunk_frames)
    threads = torch.get_num_threads()
    if frames.is_cuda or threads == 1:
        for start in starts:
            warp_chunk(start)
        return warped, visible
    # On the CPU, scatters run on one core: chunks in parallel threads beat threads inside ops.
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(warp_chunk, starts))
    finally:
        torch.set_num_threads(threads)
    return warped, visible
