"""Evaluating a set of videos: each metric's network loaded once, this rank's share scored in
big batches, the shares gathered, and per-view and dataset scores formed identically on
every rank (so 1 and N processes give the same numbers)."""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from omegaconf import OmegaConf

from eval.frechet import small_sample_warning
from eval.fvd import check_fvd_settings
from eval.models import TINY, EvalConfigError, check_model_config, load_model, release_memory
from eval.registry import METRICS, EvalInputs, metric_model
from reangle.errors import InputError
from reangle.sampling.shard import gather, shard


@dataclass
class EvalResult:
    """``aggregate``: {metric: dataset score}; ``videos``: {view: {metric: score}} (item metrics
    only: FID and FVD are scores of the whole set); ``settings``: what was evaluated and how;
    ``errors``: {metric: why it has no score}; ``details``: {metric: what a score is made of}
    (dynamic degree's pair motions and threshold, per-frame MUSIQ / aesthetic scores, per-pair
    MEt3R and SED). A score that is undefined (see :func:`finite_or_none`) is ``None``."""

    aggregate: dict[str, float]
    videos: dict[str, dict[str, float]]
    settings: dict
    errors: dict[str, str] = field(default_factory=dict)
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"aggregate": self.aggregate, "videos": self.videos, "settings": self.settings,
                "errors": self.errors, "details": self.details}


def check_request(metrics: Sequence[str], inputs: EvalInputs) -> None:
    """Metric names and that there are videos, checked before anything else."""
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise EvalConfigError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRICS)}")
    if not inputs.videos:
        raise EvalConfigError("no videos to evaluate: sample the views first (sample.py or train.py)")


def check_metric(name: str, inputs: EvalInputs) -> None:
    """What metric ``name`` needs (model keys, frame sizes, reference videos, FVD settings), checked
    before any network loads."""
    metric = METRICS[name]
    model = metric_model(metric, inputs.settings)
    if model:
        check_model_config(inputs.settings, model)
    shapes = {tuple(v.shape[1:]) for v in inputs.videos.values()}
    if metric.one_size and len(shapes) > 1:
        raise EvalConfigError(f"{name} compares frames across videos, which must share one frame size; got "
                              f"{sorted(shapes)} (evaluate them in separate folders or pass --resize HxW)")
    if name == "fvd":
        check_fvd_settings(inputs.settings.fvd, real_detector=inputs.settings.models.get("i3d") != TINY)
    if metric.update is not None and not inputs.reference:
        raise EvalConfigError(f"{name} needs reference videos: set eval.reference (or --reference DIR), "
                              f"or evaluate a run whose Omega has its input video")


def finite_or_none(value: float) -> float | None:
    """A score, or ``None`` (JSON null) where it is undefined or infinite (e.g. no SED pair with
    enough matches, PSNR of identical pixels)."""
    return float(value) if math.isfinite(value) else None


def evaluate(inputs: EvalInputs, metrics: Sequence[str], *, device: torch.device, cache_dir: str,
             rank: int = 0, world_size: int = 1, progress: bool = True) -> EvalResult:
    """Score ``inputs`` with ``metrics`` on this rank's share; every rank returns the full result.

    On one process a metric that fails (a bad setting, a missing checkpoint, an unreadable file)
    is recorded in ``errors`` and the others are still scored; with several ranks the first error
    is raised (a rank cannot skip a metric the others gather)."""
    check_request(metrics, inputs)
    problems: dict[str, str] = {}
    for name in metrics:
        try:
            check_metric(name, inputs)
        except InputError as exc:
            if world_size > 1:
                raise
            problems[name] = str(exc)
    aggregate: dict[str, float | None] = {}
    videos: dict[str, dict[str, float | None]] = {name: {} for name in inputs.videos}
    details: dict[str, Any] = {}
    scored: dict[tuple, tuple[list, list]] = {}  # one scoring pass for metrics that share it
    warnings: list[str] = []
    for name in (m for m in metrics if m not in problems):
        try:
            warning = _score_metric(name, inputs, device, cache_dir, rank, world_size, progress, scored, aggregate,
                                    videos, details)
        except Exception as exc:  # recorded per metric; the others still run
            if world_size > 1 or isinstance(exc, (KeyboardInterrupt, MemoryError)):
                raise
            problems[name] = str(exc) if isinstance(exc, InputError) else f"{type(exc).__name__}: {exc}"
            continue
        finally:
            release_memory()
        if warning:
            warnings.append(warning)
            if rank == 0:
                print(f"warning: {warning}", file=sys.stderr)
    settings = {"metrics": list(metrics), "num_videos": len(inputs.videos), "num_reference": len(inputs.reference),
                "fps": inputs.fps, "mode": inputs.mode, "world_size": world_size, "warnings": warnings,
                "eval": OmegaConf.to_container(inputs.settings, resolve=True)
                if OmegaConf.is_config(inputs.settings) else inputs.settings}
    if inputs.video_fps:
        settings["video_fps"] = dict(inputs.video_fps)
    return EvalResult(aggregate, videos, settings, {m: problems[m] for m in metrics if m in problems}, details)


def _score_metric(name, inputs, device, cache_dir, rank, world_size, progress, scored, aggregate, videos,
                  details) -> str | None:
    """Score one metric into ``aggregate`` / ``videos`` / ``details``; returns its small-sample warning."""
    metric = METRICS[name]
    network = metric_model(metric, inputs.settings)
    shared = (network, metric.items, metric.score)
    model = load_model(network, inputs.settings, device, cache_dir) if network and shared not in scored else None
    if metric.update is not None:
        model.reset()
        metric.update(model, shard(list(inputs.videos.values()), rank, world_size),
                      shard(inputs.reference, rank, world_size), inputs, progress)
        aggregate[name] = finite_or_none(float(model.compute()))
        return small_sample_warning(name, *metric.counts(model))
    if shared not in scored:
        items = metric.items(inputs)
        mine = shard(range(len(items)), rank, world_size)
        scores = metric.score(model, [items[i] for i in mine], inputs, progress) if mine else []
        gathered = dict(gather(list(zip(mine, scores))))
        scored[shared] = (items, [gathered[i] for i in range(len(items))])
    value, per_view = metric.finalize(*scored[shared])
    aggregate[name] = finite_or_none(value)
    for view, score in per_view.items():
        videos[view][name] = finite_or_none(score)
    if metric.detail is not None:
        details[name] = metric.detail(*scored[shared])
    return None
