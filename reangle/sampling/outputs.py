"""Writing sampled videos: one mp4 + metadata JSON per view, and a grid of all views.

Layout of an output folder::

    <view>.mp4      the sampled video
    <view>.json     view, motion, magnitude, camera (K, w2c), prompt, seed, start frame
                    source, file and content hash, sampling settings, model and LoRA, and ``run`` (the
                    fingerprint of the run the view belongs to, :mod:`reangle.run_folder`);
                    written after the video: it marks the view as finished
    grid.mp4/.gif   the input video then every sampled view, tiled
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from reangle.io.grid import tile_videos
from reangle.io.video import write_gif, write_mp4
from reangle.sampling.plan import ViewJob
from reangle.utils import atomic_write_text, fingerprint


def view_metadata(job: ViewJob, settings: Mapping[str, Any], extra: Mapping[str, Any] | None = None) -> dict:
    """The JSON-ready record of one sampled view."""
    return {"view": job.name, "motion": job.motion, "magnitude": job.magnitude, "camera": job.camera,
            "prompt": job.prompt, "seed": job.seed, "start_frame_source": job.start_frame_source,
            "start_frame_path": job.start_frame_path, "start_frame_fingerprint": fingerprint({}, job.start_frame),
            "settings": dict(settings), **dict(extra or {})}


def write_view(out_dir: str | os.PathLike, video: torch.Tensor, metadata: Mapping[str, Any],
               fps: float) -> Path:
    """Write ``<view>.mp4`` (``video`` ``[N, 3, H, W]`` in [0, 1]) and ``<view>.json``; returns the mp4."""
    out_dir = Path(out_dir)
    path = write_mp4(video, out_dir / f"{metadata['view']}.mp4", fps=fps)
    atomic_write_text(out_dir / f"{metadata['view']}.json", json.dumps(dict(metadata), indent=1))
    return path


def finished_view(out_dir: str | os.PathLike, metadata: Mapping[str, Any]) -> Path | None:
    """The mp4 of a view already written with exactly ``metadata`` (its JSON is written after the video),
    else ``None``."""
    out_dir = Path(out_dir)
    meta_path, video = out_dir / f"{metadata['view']}.json", out_dir / f"{metadata['view']}.mp4"
    try:
        stored = json.loads(meta_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return video if video.is_file() and stored == json.loads(json.dumps(dict(metadata))) else None


def write_grid(out_dir: str | os.PathLike, videos: Sequence[torch.Tensor], fps: float,
               max_width: int | None = None, labels: Sequence[str] | None = None) -> tuple[Path, Path]:
    """Tile ``videos`` (the input first, then the views; ``labels`` their names) into ``grid.mp4``
    and ``grid.gif``."""
    out_dir = Path(out_dir)
    grid = tile_videos(videos, max_width=max_width, labels=labels)
    return write_mp4(grid, out_dir / "grid.mp4", fps=fps), write_gif(grid, out_dir / "grid.gif", fps=fps)
