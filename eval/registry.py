"""The metrics by name: what each needs and how it scores this rank's share.

Two kinds. *Item* metrics score work items (a video, or a MEt3R frame pair); an item has
the views it counts for and a weight; a view's score is the weighted mean of its items and
the dataset score the weighted mean of all items (VBench's aggregations). *Distribution*
metrics (FID, FVD) are torchmetrics ``Metric`` objects updated with this rank's generated and
reference videos; their ``compute`` syncs the states over ranks.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from eval import dynamic_degree as dyn
from eval.feature_consistency import video_consistency
from eval.met3r_pairs import FramePair, met3r_pairs
from eval.motion_smoothness import interpolate_midpoints, midpoint_pairs, smoothness_score
from eval.temporal_flickering import temporal_flickering


class Item(NamedTuple):
    """A unit of work: the views its score counts for, its weight, and what to score."""

    views: tuple[str, ...]
    weight: float
    payload: Any


@dataclass
class EvalInputs:
    """Generated videos ``{view: [N, 3, H, W] in [0, 1]}`` (one frame size), their frame rate,
    the run's mode, the reference videos (FID/FVD) and the settings (the ``eval`` config)."""

    videos: dict[str, Tensor]
    fps: float
    mode: str
    settings: Any
    reference: list[Tensor] = field(default_factory=list)


@dataclass(frozen=True)
class MetricDef:
    name: str
    label: str                 # column of eval.md (the paper's Tab. 1 abbreviations)
    higher_is_better: bool
    model: str | None          # network (eval/models.py), loaded once per evaluation
    items: Callable[[EvalInputs], list[Item]] | None = None              # item metrics
    score: Callable[[Any, list[Item], EvalInputs, bool], list[float]] | None = None
    update: Callable[[Any, list[Tensor], list[Tensor], EvalInputs, bool], None] | None = None  # distribution


def run_batched(fn: Callable[..., Tensor], inputs: Sequence[Tensor], batch_size: int, device: torch.device,
                desc: str, progress: bool) -> Tensor:
    """``fn`` over row batches of ``inputs`` (tensors with the same first size) on ``device``; CPU result."""
    n = inputs[0].shape[0]
    out = []
    with torch.no_grad():
        for start in tqdm(range(0, n, batch_size), desc=desc, disable=not progress, leave=False):
            out.append(fn(*(x[start:start + batch_size].to(device) for x in inputs)).float().cpu())
    return torch.cat(out) if out else torch.zeros(0)


def _device(model: Any) -> torch.device:
    param = next(model.parameters(), None) if isinstance(model, torch.nn.Module) else None
    return param.device if param is not None else torch.device("cpu")


def _video_items(inputs: EvalInputs) -> list[Item]:
    return [Item((name,), 1.0, name) for name in inputs.videos]


def _split(values: Tensor, sizes: Sequence[int]) -> list[Tensor]:
    return list(values.split(list(sizes)))


def _consistency_items(inputs: EvalInputs) -> list[Item]:
    return [Item((name,), float(v.shape[0] - 1), name) for name, v in inputs.videos.items()]


def _feature_consistency(model, items, inputs, progress):
    videos = [inputs.videos[i.payload] for i in items]
    feats = run_batched(model, [torch.cat(videos)], inputs.settings.batch_size, _device(model), "features", progress)
    return [video_consistency(f)[0] for f in _split(feats, [v.shape[0] for v in videos])]


def _flickering(model, items, inputs, progress):
    return [temporal_flickering(inputs.videos[i.payload]) for i in tqdm(items, disable=not progress, leave=False)]


def _smoothness(model, items, inputs, progress):
    videos = [inputs.videos[i.payload] for i in items]
    pairs = [midpoint_pairs(v) for v in videos]
    img0, img1 = torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])
    mids = run_batched(lambda a, b: interpolate_midpoints(model, a, b), [img0, img1], inputs.settings.batch_size,
                       _device(model), "interpolation", progress)
    return [smoothness_score(v, m) for v, m in zip(videos, _split(mids, [p[0].shape[0] for p in pairs]))]


def _dynamic(model, items, inputs, progress):
    kept = [inputs.videos[i.payload][dyn.subsample_indices(inputs.videos[i.payload].shape[0], inputs.fps)]
            for i in items]
    first, second = torch.cat([k[:-1] for k in kept]), torch.cat([k[1:] for k in kept])
    motion = dyn.pair_motion(run_batched(model, [first, second], inputs.settings.batch_size, _device(model),
                                         "optical flow", progress))
    return [float(dyn.is_dynamic(m, k.shape[0], *k.shape[-2:]))
            for k, m in zip(kept, _split(motion, [k.shape[0] - 1 for k in kept]))]


def _frame_mean(model, items, inputs, progress):
    videos = [inputs.videos[i.payload] for i in items]
    scores = run_batched(model, [torch.cat(videos)], inputs.settings.batch_size, _device(model), "frames", progress)
    return [float(s.double().mean()) for s in _split(scores, [v.shape[0] for v in videos])]


def _met3r_items(inputs: EvalInputs) -> list[Item]:
    opts = inputs.settings.met3r
    pairing = opts.pairing if opts.pairing != "auto" else ("views" if inputs.mode == "static" else "frames")
    num_frames = min(v.shape[0] for v in inputs.videos.values())
    pairs = met3r_pairs(pairing, list(inputs.videos), num_frames, int(opts.frame_stride))
    return [Item(tuple(dict.fromkeys((p.view_a, p.view_b))), 1.0, p) for p in pairs]


def _met3r(model, items, inputs, progress):
    def images(pair: FramePair) -> Tensor:
        return torch.stack([inputs.videos[pair.view_a][pair.frame_a], inputs.videos[pair.view_b][pair.frame_b]])

    batch = torch.stack([images(i.payload) for i in items]) * 2 - 1
    return run_batched(model, [batch], inputs.settings.batch_size, _device(model), "MEt3R pairs", progress).tolist()


def _update_fid(metric, generated, reference, inputs, progress):
    from eval.fid import update_fid
    for videos, real in ((generated, False), (reference, True)):
        for video in tqdm(videos, desc="FID frames", disable=not progress, leave=False):
            update_fid(metric, video, real, inputs.settings.batch_size)


def _update_fvd(metric, generated, reference, inputs, progress):
    from eval.fvd import video_clips
    opts = inputs.settings.fvd
    for videos, real in ((generated, False), (reference, True)):
        for video in tqdm(videos, desc="FVD clips", disable=not progress, leave=False):
            for clips in video_clips(video, int(opts.clip_length), int(opts.clip_stride)).split(
                    inputs.settings.batch_size):
                metric.update(clips, real=real)


METRICS: dict[str, MetricDef] = {m.name: m for m in [
    MetricDef("subject_consistency", "SubjC", True, "subject", _consistency_items, _feature_consistency),
    MetricDef("background_consistency", "BackC", True, "background", _consistency_items, _feature_consistency),
    MetricDef("temporal_flickering", "Flick", True, None, _video_items, _flickering),
    MetricDef("motion_smoothness", "Smooth", True, "interpolation", _video_items, _smoothness),
    MetricDef("dynamic_degree", "Dyn", True, "flow", _video_items, _dynamic),
    MetricDef("aesthetic_quality", "Aesth", True, "aesthetic", _video_items, _frame_mean),
    MetricDef("imaging_quality", "Imag", True, "imaging", _video_items, _frame_mean),
    MetricDef("met3r", "MEt3R", False, "met3r", _met3r_items, _met3r),
    MetricDef("fid", "FID", False, "inception", update=_update_fid),
    MetricDef("fvd", "FVD", False, "i3d", update=_update_fvd),
]}
