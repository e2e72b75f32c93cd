"""Sampling a set of views on this rank's share, writing them, gathering them, and the grid."""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from reangle.io.video import read_video, to_uint8
from reangle.sampling.outputs import finished_view, view_metadata, write_grid, write_view
from reangle.sampling.plan import ViewJob
from reangle.sampling.sampler import SampleRequest, SamplingSettings, VideoSampler
from reangle.sampling.shard import gather, shard
from reangle.utils import clean_stale_staging


SOURCE_LABEL = "source"  # the grid's first tile: the input video itself (a sampled "input" view may follow)


@dataclass
class SampledView:
    """A written view: its mp4, its metadata, and its frames (uint8 ``[N, H, W, 3]``)."""

    name: str
    path: Path
    metadata: dict
    frames: Any


@dataclass
class MultiViewResult:
    """All ranks' views in job order, and the grid files (rank 0 only, when an input video was given)."""

    views: list[SampledView]
    grid: tuple[Path, Path] | None


def sample_views(sampler: VideoSampler, jobs: Sequence[ViewJob], settings: SamplingSettings,
                 num_frames: int, out_dir: str | os.PathLike, fps: float, *,
                 input_video: torch.Tensor | None = None, rank: int = 0, world_size: int = 1,
                 grid_max_width: int | None = None,
                 extra_metadata: Mapping[str, Any] | None = None) -> MultiViewResult:
    """Sample this rank's share of ``jobs`` and write ``<view>.mp4/.json`` under ``out_dir``.

    A view whose ``<view>.json`` already holds exactly the metadata this job would write (same run,
    settings, seed, start frame, ...) and whose mp4 exists is kept, not sampled again (a resumed run
    samples only the views not yet written). Text embeddings are computed once for the prompts of the
    views to sample and the negative prompt, then the sampler's T5 encoder is released. All
    ranks return every view (gathered); rank 0 also writes the grid of ``input_video``
    (``[N, 3, H, W]`` in [0, 1]) and the views.
    """
    mine = shard(list(jobs), rank, world_size)
    local: list[SampledView] = []
    record = {**asdict(settings), "scheduler": type(sampler.scheduler).__name__, "num_frames": num_frames, "fps": fps}
    if rank == 0:
        clean_stale_staging(out_dir)
    todo = []
    for job in mine:
        meta = view_metadata(job, record, extra_metadata)
        kept = finished_view(out_dir, meta)
        if kept is not None:
            h, w = job.start_frame.shape[-2:]
            local.append(SampledView(job.name, kept, meta, to_uint8(read_video(kept, num_frames, h, w))))
        else:
            todo.append((job, meta))
    if todo:
        embeddings = sampler.encode_prompts([j.prompt for j, _ in todo] + [settings.negative_prompt])
        sampler.release_text_encoder()
        requests = [SampleRequest(image=j.start_frame, prompt=j.prompt, seed=j.seed, num_frames=num_frames)
                    for j, _ in todo]
        for (job, meta), video in zip(todo, sampler.sample(requests, embeddings, settings)):
            path = write_view(out_dir, video, meta, fps)
            local.append(SampledView(job.name, path, meta, to_uint8(video)))
    order = {j.name: i for i, j in enumerate(jobs)}
    views = sorted(gather(local), key=lambda v: order[v.name])
    grid = None
    if rank == 0 and input_video is not None and views:
        frames = [input_video.float().cpu()] + [torch.from_numpy(v.frames).permute(0, 3, 1, 2).float() / 255
                                               for v in views]
        grid = write_grid(out_dir, frames, fps, max_width=grid_max_width,
                          labels=[SOURCE_LABEL] + [v.name for v in views])
    return MultiViewResult(views=views, grid=grid)
