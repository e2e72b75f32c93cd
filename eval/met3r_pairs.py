"""Which frames MEt3R compares.

``views``: every unordered pair of generated views at the same time step (static view
transport: the views show one moment from different cameras). ``frames``: consecutive
frames (t, t + stride) of each video (dynamic camera control: the camera moves along the
video). ``both``: the union. Time steps are taken every ``frame_stride`` frames. A pair
counts for each view it contains; the dataset score is the mean over all pairs.
"""
from __future__ import annotations

from itertools import combinations
from typing import NamedTuple, Sequence

PAIRINGS = ("views", "frames", "both")


class FramePair(NamedTuple):
    """Frame ``frame_a`` of view ``view_a`` against frame ``frame_b`` of view ``view_b``."""

    view_a: str
    frame_a: int
    view_b: str
    frame_b: int


def view_pairs(views: Sequence[str], num_frames: int, frame_stride: int = 1) -> list[FramePair]:
    """Every unordered pair of views at each time step 0, stride, ..."""
    return [FramePair(a, t, b, t) for t in range(0, num_frames, frame_stride) for a, b in combinations(views, 2)]


def frame_pairs(views: Sequence[str], num_frames: int, frame_stride: int = 1) -> list[FramePair]:
    """Frames (t, t + stride) of each view."""
    return [FramePair(v, t, v, t + frame_stride) for v in views for t in range(0, num_frames - frame_stride, frame_stride)]


def met3r_pairs(pairing: str, views: Sequence[str], num_frames: int, frame_stride: int = 1) -> list[FramePair]:
    """The pairs of ``pairing`` (views | frames | both)."""
    if pairing not in PAIRINGS:
        raise ValueError(f"unknown MEt3R pairing {pairing!r}; use one of {PAIRINGS}")
    if frame_stride < 1:
        raise ValueError(f"MEt3R frame stride must be >= 1, got {frame_stride}")
    pairs = []
    if pairing in ("views", "both"):
        pairs += view_pairs(views, num_frames, frame_stride)
    if pairing in ("frames", "both"):
        pairs += frame_pairs(views, num_frames, frame_stride)
    return pairs
