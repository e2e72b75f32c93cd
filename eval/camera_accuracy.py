"""Camera accuracy of generated videos: do their frames show the requested cameras?

Beyond the paper, in the way camera-control papers report RotErr / TransErr. For N
frame pairs (frame ``a_n`` of a reference video, frame ``b_n`` of a generated view) the
relative pose ``a -> b`` is estimated with DUSt3R and compared with the requested one,
``w2c_b[n] @ inv(w2c_a[n])``:

- **pose from point maps** — DUSt3R runs on both orders, ``(a, b)`` and ``(b, a)``. The
  first gives the points of both images in camera a, the second the same pixels in
  camera b; a confidence-weighted Umeyama similarity (scale, rotation, translation)
  between the two maps is camera b's pose in camera a. Both directions of one pair run
  in one batch; everything is batched over pairs.
- **rotation error** — the geodesic angle of ``R_est R_gt^T``, in degrees.
- **translation-direction error** — the angle in degrees between the estimated and the
  requested translation (scale-free: each DUSt3R pair has its own arbitrary scale). NaN
  where the requested translation is zero (e.g. the first frame of a dynamic view);
  means skip NaN.
- **scale-aligned translation error** — ``|s t_est - t_gt|`` with one least-squares
  scale ``s`` per trajectory (the N pairs), in the units of the requested cameras
  (Omega's depth units). It assumes DUSt3R's per-pair normalisation is similar across
  the pairs of a trajectory (the same scene at similar depths).

Pair at the same time step (the input video's frame n and the view's frame n) so scene
motion does not enter the estimate; ``a`` = the input video's first frame repeated is
the alternative for a static scene. Conventions: frames ``[N, 3, H, W]`` in [0, 1];
cameras world-to-camera 4x4, OpenCV axes; relative poses map camera-a coordinates to
camera-b coordinates.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from reangle.geometry.splat import relative_pose
from reangle.io.video import resize_center_crop

POINT_MAP_SIZE = 512  # DUSt3R's long image side (its 512 checkpoints)
PATCH = 16


@dataclass
class CameraAccuracy:
    """Per pair ``[N]``: ``rotation_deg``, ``translation_direction_deg`` (NaN without requested
    translation), ``translation_error`` (scale-aligned, the cameras' units); their means
    (NaN-skipping) and the trajectory ``scale`` (requested units per DUSt3R unit)."""

    rotation_deg: Tensor
    translation_direction_deg: Tensor
    translation_error: Tensor
    scale: float

    def summary(self) -> dict[str, float]:
        return {"rotation_error_deg": self.rotation_deg.nanmean().item(),
                "translation_direction_error_deg": self.translation_direction_deg.nanmean().item(),
                "translation_error": self.translation_error.nanmean().item()}


def rotation_error_deg(R_est: Tensor, R_gt: Tensor) -> Tensor:
    """Geodesic angle ``[...]`` in degrees between rotations ``[..., 3, 3]``."""
    cos = ((R_est.double() @ R_gt.double().transpose(-1, -2)).diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2
    return torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0)))


def translation_direction_error_deg(t_est: Tensor, t_gt: Tensor, eps: float = 1e-9) -> Tensor:
    """Angle ``[...]`` in degrees between translations ``[..., 3]``; NaN where either is shorter than ``eps``."""
    t_est, t_gt = t_est.double(), t_gt.double()
    norms = t_est.norm(dim=-1) * t_gt.norm(dim=-1)
    cos = (t_est * t_gt).sum(-1) / norms.clamp_min(eps * eps)
    angle = torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0)))
    short = (t_est.norm(dim=-1) < eps) | (t_gt.norm(dim=-1) < eps)
    return angle.masked_fill(short, math.nan)


def trajectory_scale(t_est: Tensor, t_gt: Tensor) -> Tensor:
    """The scale ``s`` minimising ``sum_n |s t_est[n] - t_gt[n]|^2`` over ``[N, 3]`` translations."""
    t_est, t_gt = t_est.double(), t_gt.double()
    return (t_est * t_gt).sum() / t_est.square().sum().clamp_min(1e-24)


def umeyama(src: Tensor, dst: Tensor, weights: Tensor | None = None,
            with_scale: bool = True) -> tuple[Tensor, Tensor, Tensor]:
    """Weighted least-squares similarity ``dst ~ s R src + t`` (Umeyama 1991), batched.

    ``src``, ``dst`` ``[..., P, 3]``; ``weights`` ``[..., P]`` (non-negative; default 1).
    Returns ``s [...]``, ``R [..., 3, 3]`` (a proper rotation), ``t [..., 3]``, float64;
    ``s = 1`` without ``with_scale``.
    """
    src, dst = src.double(), dst.double()
    w = torch.ones(src.shape[:-1], dtype=torch.float64, device=src.device) if weights is None else weights.double()
    w = (w / w.sum(-1, keepdim=True)).unsqueeze(-1)
    mu_src, mu_dst = (w * src).sum(-2), (w * dst).sum(-2)
    src_c, dst_c = src - mu_src.unsqueeze(-2), dst - mu_dst.unsqueeze(-2)
    cov = (w * dst_c).transpose(-1, -2) @ src_c                       # [..., 3, 3]
    U, S, Vh = torch.linalg.svd(cov)
    sign = torch.ones_like(S)
    sign[..., -1] = torch.sign(torch.linalg.det(U) * torch.linalg.det(Vh))
    R = U @ torch.diag_embed(sign) @ Vh
    if with_scale:
        scale = (S * sign).sum(-1) / (w * src_c.square()).sum((-2, -1))
    else:
        scale = torch.ones_like(S[..., 0])
    t = mu_dst - scale.unsqueeze(-1) * (R @ mu_src.unsqueeze(-1)).squeeze(-1)
    return scale, R, t


def relative_pose_from_point_maps(points_in_a: Tensor, points_in_b: Tensor, weights: Tensor) -> Tensor:
    """Relative pose ``[N, 4, 4]`` (camera a -> camera b, float64) from corresponding points.

    ``points_in_a``, ``points_in_b`` ``[N, P, 3]``: the same surface points in camera a's and
    camera b's frame, each up to its own scale; ``weights [N, P]``. The translation is in
    camera a's units.
    """
    scale, R, t = umeyama(points_in_b, points_in_a, weights)   # camera b -> camera a, similarity
    rel = torch.zeros(*R.shape[:-2], 4, 4, dtype=torch.float64, device=R.device)
    rel[..., :3, :3] = R.transpose(-1, -2)
    rel[..., :3, 3] = -(R.transpose(-1, -2) @ t.unsqueeze(-1)).squeeze(-1)
    rel[..., 3, 3] = 1.0
    return rel


def point_map_input(frames: Tensor, size: int = POINT_MAP_SIZE) -> Tensor:
    """``[N, 3, H, W]`` in [0, 1] -> DUSt3R input in [-1, 1]: the long side resized to ``size``,
    then centre-cropped to multiples of 16 (as DUSt3R's own loader)."""
    h, w = frames.shape[-2:]
    scale = size / max(h, w)
    height, width = (round(h * scale) // PATCH) * PATCH, (round(w * scale) // PATCH) * PATCH
    if height == 0 or width == 0:
        raise ValueError(f"frames of {h}x{w} are too small for point-map size {size}; raise the size")
    return resize_center_crop(frames.float(), height, width).clamp(0, 1) * 2 - 1


@torch.no_grad()
def estimate_relative_poses(model, frames_a: Tensor, frames_b: Tensor, size: int = POINT_MAP_SIZE,
                            batch_size: int = 4) -> Tensor:
    """Relative poses ``[N, 4, 4]`` (camera a -> camera b, DUSt3R units) of frame pairs ``[N, 3, H, W]``.

    ``model``: a :class:`reangle.nets.dust3r.DUSt3R` (or any module with its call and
    outputs). ``batch_size`` pairs (2 x that many DUSt3R pairs) run at once.
    """
    if frames_a.shape != frames_b.shape or frames_a.ndim != 4 or frames_a.shape[1] != 3:
        raise ValueError(f"frames_a and frames_b must both be [N, 3, H, W], got {tuple(frames_a.shape)} "
                         f"and {tuple(frames_b.shape)}")
    device = next(model.parameters()).device
    poses = []
    for start in range(0, len(frames_a), batch_size):
        a = point_map_input(frames_a[start:start + batch_size], size).to(device)
        b = point_map_input(frames_b[start:start + batch_size], size).to(device)
        out = model(torch.cat([a, b]), torch.cat([b, a]))
        ab, ba = slice(0, len(a)), slice(len(a), None)
        # the points of images a and b in camera a (pair a, b) and in camera b (pair b, a)
        in_a = torch.cat([out.pts3d_1[ab], out.pts3d_2[ab]], dim=1).flatten(1, 2)
        in_b = torch.cat([out.pts3d_2[ba], out.pts3d_1[ba]], dim=1).flatten(1, 2)
        weights = (torch.cat([out.conf_1[ab], out.conf_2[ab]], dim=1).double()
                   * torch.cat([out.conf_2[ba], out.conf_1[ba]], dim=1).double()).flatten(1, 2)
        poses.append(relative_pose_from_point_maps(in_a, in_b, weights).cpu())
    return torch.cat(poses)


def pose_errors(rel_est: Tensor, rel_gt: Tensor) -> CameraAccuracy:
    """Errors of estimated vs requested relative poses ``[N, 4, 4]`` (see the module docstring)."""
    t_est, t_gt = rel_est[:, :3, 3].double(), rel_gt[:, :3, 3].double()
    scale = trajectory_scale(t_est, t_gt)
    return CameraAccuracy(rotation_deg=rotation_error_deg(rel_est[:, :3, :3], rel_gt[:, :3, :3]),
                          translation_direction_deg=translation_direction_error_deg(t_est, t_gt),
                          translation_error=(scale * t_est - t_gt).norm(dim=-1), scale=scale.item())


def camera_accuracy(model, frames_a: Tensor, frames_b: Tensor, w2c_a: Tensor, w2c_b: Tensor,
                    size: int = POINT_MAP_SIZE, batch_size: int = 4) -> CameraAccuracy:
    """Camera accuracy of ``frames_b`` (a generated view) against ``frames_a`` (e.g. the input video).

    ``frames_a``, ``frames_b`` ``[N, 3, H, W]`` in [0, 1]; ``w2c_a``, ``w2c_b`` ``[N, 4, 4]`` the
    requested cameras of each frame (from Omega's ``camera.json``); ``model`` a DUSt3R
    (:func:`reangle.nets.dust3r.load_dust3r`).
    """
    if w2c_a.shape != (len(frames_a), 4, 4) or w2c_b.shape != (len(frames_b), 4, 4):
        raise ValueError(f"need one camera per frame: w2c_a {tuple(w2c_a.shape)} and w2c_b {tuple(w2c_b.shape)} "
                         f"for {len(frames_a)} and {len(frames_b)} frames")
    rel_est = estimate_relative_poses(model, frames_a, frames_b, size, batch_size)
    return pose_errors(rel_est, relative_pose(w2c_a, w2c_b))
