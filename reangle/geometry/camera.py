"""Pinhole cameras: intrinsics by convention, look-at extrinsics, projection.

Conventions: OpenCV camera axes (x right, y down, z forward); extrinsics are
world-to-camera 4x4 matrices ``w2c`` with ``X_cam = R @ X_world + t``; the input
video's camera is the identity (its frame is the world frame); pixel centres are at
integer coordinates.
"""
from __future__ import annotations

import torch

# The world "up" of a camera looking along +z in OpenCV axes (y points down).
WORLD_UP = (0.0, -1.0, 0.0)


def intrinsics(height: int, width: int, focal: float = 260.0, reference_height: int = 480,
               dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """``[3, 3]`` K with fx = fy = ``focal * height / reference_height``, principal point at the centre."""
    f = focal * height / reference_height
    return torch.tensor([[f, 0.0, (width - 1) / 2.0],
                         [0.0, f, (height - 1) / 2.0],
                         [0.0, 0.0, 1.0]], dtype=dtype)


def look_at(eye: torch.Tensor, target: torch.Tensor, up=WORLD_UP) -> torch.Tensor:
    """World-to-camera ``[..., 4, 4]`` for cameras at ``eye [..., 3]`` looking at ``target [..., 3]``.

    The camera's y axis points along ``-up`` (image down), z towards the target.
    """
    eye, target = torch.broadcast_tensors(eye, target)
    up = torch.as_tensor(up, dtype=eye.dtype, device=eye.device).expand_as(eye)
    z = torch.nn.functional.normalize(target - eye, dim=-1)
    x = torch.nn.functional.normalize(torch.linalg.cross(-up, z, dim=-1), dim=-1)
    y = torch.linalg.cross(z, x, dim=-1)
    rot = torch.stack([x, y, z], dim=-2)  # rows: camera axes in world coordinates
    w2c = torch.zeros(*eye.shape[:-1], 4, 4, dtype=eye.dtype, device=eye.device)
    w2c[..., :3, :3] = rot
    w2c[..., :3, 3] = -(rot @ eye.unsqueeze(-1)).squeeze(-1)
    w2c[..., 3, 3] = 1.0
    return w2c


def camera_center(w2c: torch.Tensor) -> torch.Tensor:
    """Camera centres ``[..., 3]`` in world coordinates."""
    rot, t = w2c[..., :3, :3], w2c[..., :3, 3:]
    return -(rot.transpose(-1, -2) @ t).squeeze(-1)


def transform(points: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
    """Apply ``[..., 4, 4]`` to points ``[..., P, 3]``."""
    return points @ matrix[..., :3, :3].transpose(-1, -2) + matrix[..., None, :3, 3]


def project(points_cam: torch.Tensor, K: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Camera-space points ``[..., P, 3]`` -> pixel coordinates ``[..., P, 2]`` and depth ``[..., P]``."""
    z = points_cam[..., 2]
    uv = points_cam[..., :2] / z.unsqueeze(-1).clamp_min(1e-12)
    K = K.to(points_cam.dtype)
    u = K[..., 0, 0, None] * uv[..., 0] + K[..., 0, 2, None]
    v = K[..., 1, 1, None] * uv[..., 1] + K[..., 1, 2, None]
    return torch.stack([u, v], dim=-1), z


def unproject(depth: torch.Tensor, K: torch.Tensor) -> torch.Tensor:
    """Depth maps ``[..., H, W]`` (z along the optical axis) -> camera-space points ``[..., H*W, 3]``."""
    h, w = depth.shape[-2:]
    K = K.to(depth.dtype)
    v, u = torch.meshgrid(torch.arange(h, dtype=depth.dtype, device=depth.device),
                          torch.arange(w, dtype=depth.dtype, device=depth.device), indexing="ij")
    x = (u - K[..., 0, 2, None, None]) / K[..., 0, 0, None, None]
    y = (v - K[..., 1, 2, None, None]) / K[..., 1, 1, None, None]
    points = torch.stack(torch.broadcast_tensors(x * depth, y * depth, depth), dim=-1)
    return points.flatten(-3, -2)
