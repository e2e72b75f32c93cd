"""The metrics by name: what each needs and how it scores this rank's share.

Two kinds. *Item* metrics score work items (a video, or a MEt3R frame pair); an item has
the views it counts for and a weight; a view's score is the weighted mean of its items and
the dataset score the weighted mean of all items (VBench's aggregations). *Distribution*
metrics (FID, FVD) are torchmetrics ``Metric`` objects updated with this rank's generated and
reference videos; their ``compute`` syncs the states over ranks and ``counts`` gives their
sample counts (reference, generated, feature dimension).
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple, Sequence

import torch
from torch import Tensor
from tqdm.auto import tqdm

from eval import dynamic_degree as dyn
from eval.feature_consistency import video_consistency
from eval.met3r_pairs import FramePair, met3r_pairs
from eval.motion_smoothness import interpolate_midpoints, midpoint_pairs, smoothness_score
from eval.sed import MAX_ERROR, MIN_MATCHES, nearest_view_pairs, sed_tsed
from eval.models import EvalConfigError
from eval.temporal_flickering import temporal_flickering


CAMERA_ESTIMATORS = ("colmap", "dust3r")
STATIC_ONLY = ("sed", "tsed")  # compare neighbouring views of static view transport (_sed_items refuses others)


def metric_model(metric: "MetricDef", settings) -> str | None:
    """The network ``metric`` loads under ``settings`` (``eval/models.py``), or ``None``."""
    return metric.model(settings) if callable(metric.model) else metric.model


class Item(NamedTuple):
    """A unit of work: the views its score counts for, its weight, and what to score."""

    views: tuple[str, ...]
    weight: float
    payload: Any


@dataclass
class EvalInputs:
    """Generated videos ``{view: [N, 3, H, W] in [0, 1]}`` (each at its own size), their frame rate
    (``fps``, or per video in ``video_fps``), the run's mode, the settings (the ``eval`` config), the
    reference videos (FID/FVD), the views' requested cameras ``{view: {"K": [3, 3], "w2c": [N, 4, 4]}}``
    (SED, camera accuracy) and the run's Omega (its input video and cameras, the warped videos and masks)."""

    videos: dict[str, Tensor]
    fps: float
    mode: str
    settings: Any
    reference: list[Tensor] = field(default_factory=list)
    cameras: dict[str, dict[str, Tensor]] = field(default_factory=dict)
    omega: Any = None
    video_fps: dict[str, float] = field(default_factory=dict)

    def fps_of(self, view: str) -> float:
        return self.video_fps.get(view, self.fps)


def weighted_scores(items: Sequence[Item], scores: Sequence[float]) -> tuple[float, dict[str, float]]:
    """Dataset score (weighted mean over items; NaN without items) and per-view scores (over the
    items of each view)."""
    total = sum(i.weight for i in items)
    if not total:
        return math.nan, {}
    aggregate = sum(i.weight * s for i, s in zip(items, scores)) / total
    per_view: dict[str, list[float]] = {}
    for item, score in zip(items, scores):
        for view in item.views:
            acc = per_view.setdefault(view, [0.0, 0.0])
            acc[0] += item.weight * score
            acc[1] += item.weight
    return aggregate, {v: s / w for v, (s, w) in per_view.items()}


@dataclass(frozen=True)
class MetricDef:
    """A metric. Item metrics: ``items`` lists the work, ``score`` scores a share of it (one
    result per item), ``finalize`` turns all results into (dataset score, per-view scores).
    Metrics with the same network, ``items`` and ``score`` (SED and TSED; the two camera errors; the
    two warp scores) share one scoring pass. Distribution metrics: ``update``."""

    name: str
    label: str                 # column of eval.md (the paper's Tab. 1 abbreviations)
    higher_is_better: bool
    model: str | Callable[[Any], str | None] | None  # network (eval/models.py), or a function of the settings
    items: Callable[[EvalInputs], list[Item]] | None = None
    score: Callable[[Any, list[Item], EvalInputs, bool], list[Any]] | None = None
    finalize: Callable[[list[Item], list[Any]], tuple[float, dict[str, float]]] = weighted_scores
    update: Callable[[Any, list[Tensor], list[Tensor], EvalInputs, bool], None] | None = None
    counts: Callable[[Any], tuple[int, int, int]] | None = None  # (reference, generated, dimension) samples
    detail: Callable[[list[Item], list[Any]], Any] | None = None   # what eval.json keeps to debug a score
    one_size: bool = False     # compares frames across views: every video must have one frame size


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


def _batched_per_video(fn: Callable[..., Tensor], per_video: list[list[Tensor]], inputs: EvalInputs, model: Any,
                       desc: str, progress: bool) -> list[Tensor]:
    """``fn`` over row batches of each video's inputs; videos of one frame size share batches (which may
    cross them), sizes never mix. One CPU result per video."""
    groups: dict[tuple, list[int]] = {}
    for k, tensors in enumerate(per_video):
        groups.setdefault(tuple(tensors[0].shape[1:]), []).append(k)
    out: list[Tensor] = [torch.zeros(0)] * len(per_video)
    for members in groups.values():
        stacked = [torch.cat([per_video[k][j] for k in members]) for j in range(len(per_video[members[0]]))]
        result = run_batched(fn, stacked, inputs.settings.batch_size, _device(model), desc, progress)
        for k, part in zip(members, result.split([per_video[k][0].shape[0] for k in members])):
            out[k] = part
    return out


def _consistency_items(inputs: EvalInputs) -> list[Item]:
    return [Item((name,), float(v.shape[0] - 1), name) for name, v in inputs.videos.items()]


def _feature_consistency(model, items, inputs, progress):
    feats = _batched_per_video(model, [[inputs.videos[i.payload]] for i in items], inputs, model, "features", progress)
    return [video_consistency(f)[0] for f in feats]


def _flickering(model, items, inputs, progress):
    return [temporal_flickering(inputs.videos[i.payload]) for i in tqdm(items, disable=not progress, leave=False)]


def _smoothness(model, items, inputs, progress):
    videos = [inputs.videos[i.payload] for i in items]
    mids = _batched_per_video(lambda a, b: interpolate_midpoints(model, a, b), [list(midpoint_pairs(v)) for v in videos],
                              inputs, model, "interpolation", progress)
    return [smoothness_score(v, m) for v, m in zip(videos, mids)]


def _dynamic(model, items, inputs, progress):
    """Per video: (dynamic 0/1, pair motions, threshold in px, pairs needed, frame step)."""
    kept, steps = [], []
    for item in items:
        video = inputs.videos[item.payload]
        indices = dyn.subsample_indices(video.shape[0], inputs.fps_of(item.payload))
        kept.append(video[indices])
        steps.append(indices[1] - indices[0] if len(indices) > 1 else 1)
    motions = _batched_per_video(lambda a, b: dyn.pair_motion(model(a, b, padded=True)), [[k[:-1], k[1:]] for k in kept],
                                 inputs, model, "optical flow", progress)
    return [(float(dyn.is_dynamic(m, k.shape[0], *k.shape[-2:])), m.tolist(), dyn.motion_threshold(*k.shape[-2:]),
             dyn.pairs_needed(k.shape[0]), step) for k, m, step in zip(kept, motions, steps)]


def _dynamic_detail(items, results):
    return {i.payload: {"pair_motion": r[1], "threshold": r[2], "pairs_needed": r[3], "frame_step": r[4]}
            for i, r in zip(items, results)}


def _frame_mean(model, items, inputs, progress):
    """Per video: (mean over frames, per-frame scores)."""
    scores = _batched_per_video(model, [[inputs.videos[i.payload]] for i in items], inputs, model, "frames", progress)
    return [(float(s.double().mean()), s.tolist()) for s in scores]


def _per_frame_detail(items, results):
    return {i.payload: {"per_frame": r[1]} for i, r in zip(items, results)}


def _met3r_items(inputs: EvalInputs) -> list[Item]:
    opts = inputs.settings.met3r
    pairing = opts.pairing if opts.pairing != "auto" else ("views" if inputs.mode == "static" else "frames")
    num_frames = min(v.shape[0] for v in inputs.videos.values())
    pairs = met3r_pairs(pairing, list(inputs.videos), num_frames, int(opts.frame_stride))
    return [Item(tuple(dict.fromkeys((p.view_a, p.view_b))), 1.0, p) for p in pairs]


def _met3r(model, items, inputs, progress):
    def images(pair: FramePair) -> Tensor:
        return torch.stack([inputs.videos[pair.view_a][pair.frame_a], inputs.videos[pair.view_b][pair.frame_b]])

    def score(index: Tensor) -> Tensor:  # pairs stacked per batch: all of a run's pairs at once would not fit in memory
        pairs = torch.stack([images(items[k].payload) for k in index.tolist()])
        return model(pairs.to(device) * 2 - 1)

    device = _device(model)
    return run_batched(score, [torch.arange(len(items))], inputs.settings.batch_size, torch.device("cpu"),
                       "MEt3R pairs", progress).tolist()


def _update_fid(metric, generated, reference, inputs, progress):
    from eval.fid import update_fid
    for videos, real in ((generated, False), (reference, True)):
        for video in tqdm(videos, desc="FID frames", disable=not progress, leave=False):
            update_fid(metric, video, real, inputs.settings.batch_size)


def _update_fvd(metric, generated, reference, inputs, progress):
    from eval.fvd import protocol_clips
    opts = inputs.settings.fvd
    rng = random.Random(int(opts.seed))  # StyleGAN-V's reference clip offsets
    for videos, real in ((generated, False), (reference, True)):
        for video in tqdm(videos, desc="FVD clips", disable=not progress, leave=False):
            clips = protocol_clips(video, opts.protocol, int(opts.clip_length), int(opts.clip_stride), real, rng)
            for batch in clips.split(inputs.settings.batch_size):
                metric.update(batch, real=real)


def _fid_counts(metric):
    from eval.fid import fid_counts
    return fid_counts(metric)


def _fvd_counts(metric):
    return metric.counts()


def _pick(index: int, keep: Callable[[tuple], bool] | None = None):
    """``finalize`` for tuple results: the weighted mean of element ``index`` over the items whose
    result passes ``keep`` (default: that element is finite); NaN when none does."""
    keep = keep or (lambda result: math.isfinite(result[index]))

    def finalize(items, scores):
        kept = [(i, s[index]) for i, s in zip(items, scores) if keep(s)]
        if not kept:
            return math.nan, {}
        return weighted_scores([i for i, _ in kept], [float(v) for _, v in kept])
    return finalize


def _check_cameras(inputs: EvalInputs, views: Sequence[str], metric: str) -> None:
    missing = [v for v in views if v not in inputs.cameras]
    if missing:
        raise EvalConfigError(f"{metric} needs the cameras of every view; {missing} have none (give each a "
                              f"<view>.json with a camera, or a cameras.json in the videos folder)")


def _sed_items(inputs: EvalInputs) -> list[Item]:
    if inputs.mode != "static":
        raise EvalConfigError("SED/TSED compare neighbouring views of static view transport; in dynamic mode every "
                         "view starts at the input camera: leave sed/tsed out of eval.metrics")
    views = list(inputs.videos)
    _check_cameras(inputs, views, "SED")
    first = torch.stack([inputs.cameras[v]["w2c"][0] for v in views])
    num_frames = min(v.shape[0] for v in inputs.videos.values())
    return [Item((views[i], views[j]), 1.0, (views[i], views[j], t))
            for t in range(0, num_frames, int(inputs.settings.sed.frame_stride)) for i, j in nearest_view_pairs(first)]


def _sed(model, items, inputs, progress):
    """(median SED, number of matches) of each (view pair, time step), grouped by time step."""
    results: dict[int, tuple[float, int]] = {}
    for t in tqdm(sorted({i.payload[2] for i in items}), desc="SED", disable=not progress, leave=False):
        mine = [(n, i.payload) for n, i in enumerate(items) if i.payload[2] == t]
        views = list(dict.fromkeys(v for _, (a, b, _) in mine for v in (a, b)))
        index = {v: k for k, v in enumerate(views)}
        out = sed_tsed(torch.stack([inputs.videos[v][t] for v in views]),
                       torch.stack([inputs.cameras[v]["K"] for v in views]),
                       torch.stack([inputs.cameras[v]["w2c"][t] for v in views]),
                       [(index[a], index[b]) for _, (a, b, _) in mine])
        for (n, _), median, count in zip(mine, out.medians.tolist(), out.num_matches.tolist()):
            results[n] = (median, count)
    return [results[n] for n in range(len(items))]


def _met3r_detail(items, results):
    return [{"view_a": i.payload.view_a, "frame_a": i.payload.frame_a, "view_b": i.payload.view_b,
             "frame_b": i.payload.frame_b, "score": r} for i, r in zip(items, results)]


def _sed_detail(items, results):
    return [{"view_a": a, "view_b": b, "frame": t, "median_sed": median, "matches": count}
            for (a, b, t), (median, count) in zip((i.payload for i in items), results)]


def _tsed_finalize(items, scores):
    """TSED: the fraction of (pair, time step) items with >= T_m matches and a median SED < T_e."""
    consistent = [float(count >= MIN_MATCHES and median < MAX_ERROR) for median, count in scores]
    return weighted_scores(items, consistent)


def _target_views(inputs: EvalInputs) -> list[Item]:
    from reangle.data.omega import INPUT_VIEW
    if inputs.omega is None:
        raise EvalConfigError("this metric needs the run's Omega (the input video, cameras and warped videos)")
    names = {v.name for v in inputs.omega.views}
    return [Item((v,), 1.0, v) for v in inputs.videos if v != INPUT_VIEW and v in names]


def _camera_estimator(settings) -> str:
    estimator = settings.camera.estimator
    if estimator not in CAMERA_ESTIMATORS:
        raise EvalConfigError(f"unknown eval.camera.estimator {estimator!r}; use one of {list(CAMERA_ESTIMATORS)}")
    return estimator


def _camera_model(settings) -> str | None:
    """The network camera accuracy loads: DUSt3R, or none for COLMAP."""
    return "dust3r" if _camera_estimator(settings) == "dust3r" else None


def _camera_items(inputs: EvalInputs) -> list[Item]:
    """DUSt3R: the run's target views (against its input video); COLMAP: every view but the input (each
    against its own requested path; dynamic camera control, where the camera moves along the video)."""
    from reangle.data.omega import INPUT_VIEW
    if _camera_estimator(inputs.settings) == "dust3r":
        return _target_views(inputs)
    if inputs.mode != "dynamic":
        raise EvalConfigError("eval.camera.estimator=colmap recovers a camera that moves along the video (dynamic "
                              "camera control); in static mode each view's camera is fixed: use dust3r")
    return [Item((v,), 1.0, v) for v in inputs.videos if v != INPUT_VIEW]


def _camera(model, items, inputs, progress):
    """DUSt3R: (rotation error, translation-direction error) in degrees, means over frame pairs; COLMAP:
    (RotErr, TransErr, CamMC, fraction registered) of :mod:`eval.colmap_camera`."""
    _check_cameras(inputs, [i.payload for i in items], "camera accuracy")
    if model is None:
        return [_colmap_errors(inputs, item.payload) for item in tqdm(items, desc="COLMAP", disable=not progress,
                                                                      leave=False)]
    from eval.camera_accuracy import camera_accuracy
    from reangle.data.omega import INPUT_VIEW
    record = inputs.omega.view(INPUT_VIEW)
    frames_a, w2c_a = inputs.omega.read_frames(record), inputs.omega.read_camera(record)["w2c"]
    out = []
    for item in tqdm(items, desc="camera accuracy", disable=not progress, leave=False):
        frames_b = inputs.videos[item.payload]
        n = min(len(frames_a), len(frames_b))
        acc = camera_accuracy(model, frames_a[:n], frames_b[:n], w2c_a[:n], inputs.cameras[item.payload]["w2c"][:n],
                              size=int(inputs.settings.camera.size), batch_size=inputs.settings.batch_size)
        summary = acc.summary()
        out.append((summary["rotation_error_deg"], summary["translation_direction_error_deg"]))
    return out


def _colmap_errors(inputs: EvalInputs, view: str) -> tuple[float, float, float, float]:
    from eval.colmap_camera import ColmapError, colmap_trajectory, trajectory_errors
    camera = inputs.cameras[view]
    try:
        estimate = colmap_trajectory(inputs.videos[view], camera["K"], inputs.settings.camera.mapper)
        errors = trajectory_errors(estimate, camera["w2c"][:len(estimate)])
    except ColmapError:
        return math.nan, math.nan, math.nan, 0.0
    return errors.rot_err_deg, errors.trans_err, errors.cam_mc, errors.registered


def _camera_detail(items, results):
    return {i.payload: dict(zip(("rot_err_deg", "trans_err", "cam_mc", "registered")
                                if len(r) == 4 else ("rotation_deg", "translation_direction_deg"), r))
            for i, r in zip(items, results)}


def _cam_mc_finalize(items, results):
    if any(len(r) != 4 for r in results):
        raise EvalConfigError("camera_cammc is COLMAP's protocol: set eval.camera.estimator=colmap")
    return _pick(2)(items, results)


def _warp(model, items, inputs, progress):
    from eval.warp_fidelity import warp_fidelity
    out = []
    for item in tqdm(items, desc="warp fidelity", disable=not progress, leave=False):
        record = inputs.omega.view(item.payload)
        scores = warp_fidelity(inputs.videos[item.payload], inputs.omega.read_frames(record),
                               inputs.omega.read_mask(record), model, inputs.settings.batch_size)
        out.append((scores["psnr"], scores["lpips"]))
    return out


METRICS: dict[str, MetricDef] = {m.name: m for m in [
    MetricDef("subject_consistency", "SubjC", True, "subject", _consistency_items, _feature_consistency),
    MetricDef("background_consistency", "BackC", True, "background", _consistency_items, _feature_consistency),
    MetricDef("temporal_flickering", "Flick", True, None, _video_items, _flickering),
    MetricDef("motion_smoothness", "Smooth", True, "interpolation", _video_items, _smoothness),
    MetricDef("dynamic_degree", "Dyn", True, "flow", _video_items, _dynamic, _pick(0), detail=_dynamic_detail),
    MetricDef("aesthetic_quality", "Aesth", True, "aesthetic", _video_items, _frame_mean, _pick(0),
              detail=_per_frame_detail),
    MetricDef("imaging_quality", "Imag", True, "imaging", _video_items, _frame_mean, _pick(0),
              detail=_per_frame_detail),
    MetricDef("met3r", "MEt3R", False, "met3r", _met3r_items, _met3r, detail=_met3r_detail, one_size=True),
    MetricDef("fid", "FID", False, "inception", update=_update_fid, counts=_fid_counts),
    MetricDef("fvd", "FVD", False, "i3d", update=_update_fvd, counts=_fvd_counts),
    MetricDef("sed", "SED", False, None, _sed_items, _sed, _pick(0, lambda r: r[1] >= MIN_MATCHES),
              detail=_sed_detail, one_size=True),
    MetricDef("tsed", "TSED", True, None, _sed_items, _sed, _tsed_finalize, detail=_sed_detail, one_size=True),
    MetricDef("camera_rot_err", "RotErr", False, _camera_model, _camera_items, _camera, _pick(0),
              detail=_camera_detail),
    MetricDef("camera_trans_err", "TransErr", False, _camera_model, _camera_items, _camera, _pick(1),
              detail=_camera_detail),
    MetricDef("camera_cammc", "CamMC", False, _camera_model, _camera_items, _camera, _cam_mc_finalize,
              detail=_camera_detail),
    MetricDef("warp_psnr", "wPSNR", True, "lpips", _target_views, _warp, _pick(0)),
    MetricDef("warp_lpips", "wLPIPS", False, "lpips", _target_views, _warp, _pick(1)),
]}

TABLE_1 = ["subject_consistency", "background_consistency", "temporal_flickering", "motion_smoothness",
           "dynamic_degree", "aesthetic_quality", "imaging_quality", "met3r", "fid", "fvd"]  # the paper's columns
