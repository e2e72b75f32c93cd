"""VBench's subject / background consistency formula on per-frame features.

For frames i >= 1: s_i = (max(0, cos(f_{i-1}, f_i)) + max(0, cos(f_0, f_i))) / 2. A video's
score is the mean of s_i; the dataset score weights each video by its N - 1 terms (VBench
sums s_i over all videos and divides by their number). Subject consistency uses DINO
ViT-B/16 CLS features, background consistency CLIP ViT-B/32 image features.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def frame_consistency(features: Tensor) -> Tensor:
    """The terms s_i ``[N - 1]`` of one video's features ``[N, D]`` (any scale: they are normalised)."""
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"consistency needs features [N >= 2, D] of one video, got {tuple(features.shape)}")
    f = F.normalize(features.double(), dim=-1)
    previous = (f[1:] * f[:-1]).sum(-1).clamp(min=0)
    first = (f[1:] * f[:1]).sum(-1).clamp(min=0)
    return (previous + first) / 2


def video_consistency(features: Tensor) -> tuple[float, int]:
    """A video's score (mean of its terms) and its weight in the dataset score (N - 1)."""
    terms = frame_consistency(features)
    return float(terms.mean()), terms.numel()
