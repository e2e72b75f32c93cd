"""VBench's dynamic degree from optical flow (RAFT-large, 20 updates).

Frames are subsampled to about 8 fps (every round(fps / 8)-th frame). Each consecutive pair
scores the mean of its top 5 % flow magnitudes (int(0.05 H8 W8) pixels of the flow of the
frames replicate-padded to H8 x W8, multiples of 8, as VBench ranks RAFT's padded output). A
video of n subsampled frames of H x W is dynamic when at least round(4 n / 16) pairs score
above 6 min(H, W) / 256 pixels. The dataset score is the fraction of dynamic videos (the mean
of the per-video 0/1 scores, ``eval.registry``).
"""
from __future__ import annotations

from torch import Tensor

TARGET_FPS = 8.0


def subsample_indices(num_frames: int, fps: float, target_fps: float = TARGET_FPS) -> list[int]:
    """Indices of the frames kept: every round(fps / target_fps)-th (at least every frame)."""
    step = max(1, round(fps / target_fps))
    return list(range(0, num_frames, step))


def pair_motion(flow: Tensor) -> Tensor:
    """Mean of the top 5 % flow magnitudes of each pair: flows ``[P, 2, H8, W8]`` (pixels) -> ``[P]``."""
    magnitude = flow.float().norm(dim=1).flatten(1)
    k = max(1, int(magnitude.shape[1] * 0.05))
    return magnitude.topk(k, dim=1).values.mean(1)


def motion_threshold(height: int, width: int) -> float:
    """Pixels a pair's motion must exceed: 6 min(H, W) / 256."""
    return 6.0 * min(height, width) / 256.0


def is_dynamic(motion: Tensor, num_frames: int, height: int, width: int) -> bool:
    """Whether a video with pair motions ``[n - 1]`` of ``n`` subsampled frames of ``H x W`` is dynamic."""
    if motion.numel() == 0:
        return False
    moving = int((motion > motion_threshold(height, width)).sum())
    return moving >= pairs_needed(num_frames)


def pairs_needed(num_frames: int) -> int:
    """Moving pairs that make a video of ``num_frames`` subsampled frames dynamic: round(4 n / 16)."""
    return round(4 * num_frames / 16)

