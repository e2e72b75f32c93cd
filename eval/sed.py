"""Symmetric epipolar distance (SED) and thresholded SED (TSED) between views with known cameras.

The metric of the paper's Tab. 2 (from Yu et al., "Long-term photometric consistent
novel view synthesis with diffusion models", ICCV 2023):

1. SIFT keypoints of both images (OpenCV, grayscale uint8), matched by nearest
   descriptor with Lowe's ratio test and a mutual (cross-check) test; defaults are
   COLMAP's matcher defaults (ratio 0.8, cross-check on), which the reference used.
2. The fundamental matrix from the known cameras, ``F = K2^-T [t]x R K1^-1`` with
   ``(R, t)`` taking camera-1 coordinates to camera-2 coordinates, so ``x2^T F x1 = 0``.
3. Per match ``SED = 0.5 (d(x2, F x1) + d(x1, F^T x2))``: pixel distances of each point
   to the epipolar line of its partner; per pair the median over its matches.
4. A pair is consistent when it has at least ``min_matches`` (T_m = 10) matches and a
   median below ``max_error`` (T_e = 1.25 px in the paper); TSED = the fraction of
   consistent pairs. SED (one number) = the mean of the medians of the pairs with at
   least ``min_matches`` matches.

Conventions: images ``[3, H, W]`` float in [0, 1]; cameras world-to-camera 4x4, OpenCV
axes; intrinsics ``K`` 3x3 in pixels with pixel centres at integer coordinates (as
OpenCV's keypoints). Geometry runs in float64.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

from reangle.errors import MissingPackageError
from reangle.geometry.camera import camera_center
from reangle.geometry.splat import relative_pose
from reangle.io.video import to_uint8

RATIO = 0.8          # Lowe's ratio test (COLMAP's default max_ratio)
MAX_ERROR = 1.25     # T_e, pixels
MIN_MATCHES = 10     # T_m
MIN_BASELINE = 1e-9  # camera centres closer than this have no epipolar geometry


@dataclass
class SedResult:
    """SED of view pairs: ``pairs`` ``[(i, j), ...]`` of view indices and ``frames`` (the time
    step of each pair; 0 for single images), ``medians`` ``[P]`` float64 pixels (NaN without
    matches), ``num_matches`` ``[P]`` int64, ``sed`` (mean median over pairs with at least
    ``min_matches`` matches; NaN when there is none) and ``tsed`` in [0, 1]."""

    pairs: list[tuple[int, int]]
    frames: list[int]
    medians: Tensor
    num_matches: Tensor
    sed: float
    tsed: float


def skew(v: Tensor) -> Tensor:
    """Cross-product matrices ``[..., 3, 3]`` of ``v [..., 3]``: ``skew(a) @ b = a x b``."""
    x, y, z = v.unbind(-1)
    zero = torch.zeros_like(x)
    return torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).unflatten(-1, (3, 3))


def fundamental_matrix(K1: Tensor, K2: Tensor, w2c1: Tensor, w2c2: Tensor) -> Tensor:
    """``F [..., 3, 3]`` (float64, unit Frobenius norm) with ``x2^T F x1 = 0`` for pixels ``x1``, ``x2``.

    ``K1``, ``K2`` ``[..., 3, 3]``; ``w2c1``, ``w2c2`` ``[..., 4, 4]``. Raises ValueError
    when two cameras share their centre (no baseline: F is zero).
    """
    rel = relative_pose(w2c1, w2c2)
    rot, t = rel[..., :3, :3], rel[..., :3, 3]
    if (t.norm(dim=-1) < MIN_BASELINE).any():
        raise ValueError("two cameras share their centre, so they have no epipolar geometry; "
                         "pair views whose cameras are apart")
    F = torch.linalg.inv(K2.double()).transpose(-1, -2) @ skew(t) @ rot @ torch.linalg.inv(K1.double())
    return F / F.flatten(-2).norm(dim=-1)[..., None, None]


def symmetric_epipolar_distance(x1: Tensor, x2: Tensor, F: Tensor) -> Tensor:
    """Per-match SED ``[..., P]`` in pixels of matches ``x1``, ``x2`` ``[..., P, 2]`` under ``F [..., 3, 3]``."""
    h1 = torch.cat([x1.double(), torch.ones_like(x1[..., :1], dtype=torch.float64)], dim=-1)
    h2 = torch.cat([x2.double(), torch.ones_like(x2[..., :1], dtype=torch.float64)], dim=-1)
    F = F.double()
    lines2 = h1 @ F.transpose(-1, -2)   # epipolar lines F x1 in image 2
    lines1 = h2 @ F                     # epipolar lines F^T x2 in image 1
    algebraic = (h2 * lines2).sum(-1).abs()
    return 0.5 * (algebraic / lines2[..., :2].norm(dim=-1) + algebraic / lines1[..., :2].norm(dim=-1))


def sift_features(images: Tensor) -> list[tuple[Tensor, Tensor]]:
    """SIFT of ``images [B, 3, H, W]`` in [0, 1]: per image keypoints ``[K, 2]`` (x, y pixels,
    float64) and descriptors ``[K, 128]`` float32 (OpenCV ``SIFT_create`` defaults)."""
    try:
        import cv2
    except ImportError as exc:
        raise MissingPackageError("SED needs OpenCV's SIFT: pip install opencv-python-headless") from exc
    sift = cv2.SIFT_create()
    features = []
    for rgb in to_uint8(images):
        keypoints, descriptors = sift.detectAndCompute(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), None)
        # OpenCV 4 gives descriptors None for no keypoints, OpenCV 5 an empty [0, 128] array (and
        # KeyPoint_convert an empty tuple); reading .pt of each keypoint works under both.
        xy = np.array([kp.pt for kp in keypoints], dtype=np.float64).reshape(-1, 2)
        desc = np.zeros((0, 128), np.float32) if descriptors is None else descriptors.reshape(-1, 128)
        features.append((torch.from_numpy(xy), torch.from_numpy(np.ascontiguousarray(desc, np.float32))))
    return features


def match_descriptors(desc1: Tensor, desc2: Tensor, ratio: float = RATIO, cross_check: bool = True) -> Tensor:
    """Indices ``[M, 2]`` (into ``desc1 [K1, D]``, ``desc2 [K2, D]``) of nearest-neighbour matches
    passing the ratio test (best distance < ``ratio`` x second best) and, with ``cross_check``,
    mutual nearest neighbours."""
    if len(desc1) == 0 or len(desc2) < 2:
        return torch.zeros(0, 2, dtype=torch.long)
    dist = torch.cdist(desc1.float()[None], desc2.float()[None])[0]
    best, nearest = dist.topk(2, dim=1, largest=False)
    keep = best[:, 0] < ratio * best[:, 1]
    if cross_check:
        keep &= dist.argmin(dim=0)[nearest[:, 0]] == torch.arange(len(desc1))
    rows = keep.nonzero().squeeze(1)
    return torch.stack([rows, nearest[rows, 0]], dim=1)


def tsed(medians: Tensor, num_matches: Tensor, max_error: float = MAX_ERROR,
         min_matches: int = MIN_MATCHES) -> float:
    """Fraction of pairs with ``num_matches >= min_matches`` and ``median < max_error`` (``[P]`` each)."""
    if medians.numel() == 0:
        raise ValueError("TSED needs at least one view pair")
    consistent = (num_matches >= min_matches) & (medians < max_error)
    return consistent.double().mean().item()


def consecutive_pairs(num_views: int) -> list[tuple[int, int]]:
    """``[(0, 1), (1, 2), ...]``: neighbours along an ordered trajectory."""
    return [(i, i + 1) for i in range(num_views - 1)]


def nearest_view_pairs(w2c: Tensor) -> list[tuple[int, int]]:
    """Each view with the view whose camera centre is nearest (and apart), as sorted unique pairs.

    ``w2c [V, 4, 4]``; a view set without an order (e.g. the orbit and dolly views).
    """
    if len(w2c) < 2:
        raise ValueError(f"neighbouring pairs need at least two views, got {len(w2c)}")
    centres = camera_center(w2c.double())
    dist = torch.cdist(centres[None], centres[None])[0]
    dist[dist < MIN_BASELINE] = float("inf")
    nearest = dist.argmin(dim=1)
    pairs = {tuple(sorted((i, int(j)))) for i, j in enumerate(nearest) if torch.isfinite(dist[i, j])}
    return sorted(pairs)


def _checked_pairs(pairs: Sequence[tuple[int, int]] | None, num_views: int) -> list[tuple[int, int]]:
    pairs = consecutive_pairs(num_views) if pairs is None else [tuple(map(int, p)) for p in pairs]
    if not pairs or any(not (0 <= i < num_views and 0 <= j < num_views and i != j) for i, j in pairs):
        raise ValueError(f"pairs must be non-empty pairs of distinct view indices in [0, {num_views}), got {pairs}")
    return pairs


def sed_tsed(images: Tensor, K: Tensor, w2c: Tensor, pairs: Sequence[tuple[int, int]] | None = None,
             ratio: float = RATIO, cross_check: bool = True, max_error: float = MAX_ERROR,
             min_matches: int = MIN_MATCHES) -> SedResult:
    """SED and TSED of view pairs of one time step.

    ``images [V, 3, H, W]`` in [0, 1] (one image per view); ``K [3, 3]`` or ``[V, 3, 3]``;
    ``w2c [V, 4, 4]``; ``pairs`` of view indices (default :func:`consecutive_pairs`).
    SIFT runs once per image; matching and distances are vectorised per pair.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [V, 3, H, W], got {tuple(images.shape)}")
    num_views = images.shape[0]
    if w2c.shape != (num_views, 4, 4):
        raise ValueError(f"w2c must be [{num_views}, 4, 4] (one camera per image), got {tuple(w2c.shape)}")
    K = K.double().expand(num_views, 3, 3)
    pairs = _checked_pairs(pairs, num_views)
    first, second = torch.tensor(pairs).T
    F = fundamental_matrix(K[first], K[second], w2c[first], w2c[second])
    features = sift_features(images)
    medians, counts = [], []
    for p, (i, j) in enumerate(pairs):
        (xy1, desc1), (xy2, desc2) = features[i], features[j]
        idx = match_descriptors(desc1, desc2, ratio, cross_check)
        distances = symmetric_epipolar_distance(xy1[idx[:, 0]], xy2[idx[:, 1]], F[p])
        medians.append(distances.quantile(0.5) if len(idx) else torch.tensor(float("nan"), dtype=torch.float64))
        counts.append(len(idx))
    medians, counts = torch.stack(medians), torch.tensor(counts)
    enough = counts >= min_matches
    sed = medians[enough].mean().item() if enough.any() else float("nan")
    return SedResult(pairs=pairs, frames=[0] * len(pairs), medians=medians, num_matches=counts, sed=sed,
                     tsed=tsed(medians, counts, max_error, min_matches))


def sed_tsed_video(videos: Tensor, K: Tensor, w2c: Tensor, pairs: Sequence[tuple[int, int]] | None = None,
                   frames: Sequence[int] | None = None, **options) -> SedResult:
    """SED and TSED of synchronised videos, pairing views at the same time step.

    ``videos [V, N, 3, H, W]`` in [0, 1]; ``K [3, 3]`` or ``[V, 3, 3]``; ``w2c [V, N, 4, 4]``
    (per-frame cameras); ``pairs`` of view indices (default :func:`consecutive_pairs`);
    ``frames`` the time steps to use (default all). Every (pair, frame) counts as one pair
    for TSED; ``options`` go to :func:`sed_tsed`.
    """
    if videos.ndim != 5 or w2c.shape != (*videos.shape[:2], 4, 4):
        raise ValueError(f"videos must be [V, N, 3, H, W] with w2c [V, N, 4, 4], got {tuple(videos.shape)} "
                         f"and {tuple(w2c.shape)}")
    num_views, num_frames = videos.shape[:2]
    frames = list(range(num_frames)) if frames is None else [int(t) for t in frames]
    if not frames or any(not 0 <= t < num_frames for t in frames):
        raise ValueError(f"frames must be non-empty time steps in [0, {num_frames}), got {frames}")
    pairs = _checked_pairs(pairs, num_views)
    images = videos[:, frames].flatten(0, 1)                     # image v * len(frames) + k
    K = K.double().expand(num_views, 3, 3).repeat_interleave(len(frames), dim=0)
    flat = [(i * len(frames) + k, j * len(frames) + k) for k in range(len(frames)) for i, j in pairs]
    result = sed_tsed(images, K, w2c[:, frames].flatten(0, 1), flat, **options)
    result.pairs = [p for _ in frames for p in pairs]
    result.frames = [t for t in frames for _ in pairs]
    return result
