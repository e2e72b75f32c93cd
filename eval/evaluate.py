"""Evaluating a set of videos: each metric's network loaded once, this rank's share scored in
big batches, the shares gathered, and per-view and dataset scores formed identically on
every rank (so 1 and N processes give the same numbers)."""
from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Sequence

import torch
from omegaconf import OmegaConf

from eval.frechet import small_sample_warning
from eval.fvd import check_fvd_settings
from eval.models import TINY, EvalConfigError, check_model_config, load_model, release_memory
from eval.registry import METRICS, EvalInputs
from reangle.sampling.shard import gather, shard


@dataclass
class EvalResult:
    """``aggregate``: {metric: dataset score}; ``videos``: {view: {metric: score}} (item metrics
    only: FID and FVD are scores of the whole set); ``settings``: what was evaluated and how.
    A score that is undefined (see :func:`finite_or_none`) is ``None``."""

    aggregate: dict[str, float]
    videos: dict[str, dict[str, float]]
    settings: dict

    def to_json(self) -> dict:
        return {"aggregate": self.aggregate, "videos": self.videos, "settings": self.settings}


def check_request(metrics: Sequence[str], inputs: EvalInputs) -> None:
    """Metric names, model keys and inputs, checked before any network loads."""
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise EvalConfigError(f"unknown metric(s) {', '.join(unknown)}; choose from {', '.join(METRICS)}")
    if not inputs.videos:
        raise EvalConfigError("no videos to evaluate: sample the views first (sample.py or train.py)")
    shapes = {tuple(v.shape[1:]) for v in inputs.videos.values()}
    if len(shapes) > 1:
        raise EvalConfigError(f"the evaluated videos must share one frame size, got {sorted(shapes)}")
    for name in metrics:
        metric = METRICS[name]
        if metric.model:
            check_model_config(inputs.settings, metric.model)
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
    """Score ``inputs`` with ``metrics`` on this rank's share; every rank returns the full result."""
    check_request(metrics, inputs)
    aggregate: dict[str, float | None] = {}
    videos: dict[str, dict[str, float | None]] = {name: {} for name in inputs.videos}
    scored: dict[tuple, tuple[list, list]] = {}  # one scoring pass for metrics that share it
    warnings: list[str] = []
    for name in metrics:
        metric = METRICS[name]
        shared = (metric.model, metric.items, metric.score)
        needs_model = metric.model and shared not in scored
        model = load_model(metric.model, inputs.settings, device, cache_dir) if needs_model else None
        try:
            if metric.update is not None:
                model.reset()
                metric.update(model, shard(list(inputs.videos.values()), rank, world_size),
                              shard(inputs.reference, rank, world_size), inputs, progress)
                aggregate[name] = finite_or_none(float(model.compute()))
                warning = small_sample_warning(name, *metric.counts(model))
                if warning:
                    warnings.append(warning)
                    if rank == 0:
                        print(f"warning: {warning}", file=sys.stderr)
                continue
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
        finally:
            model = None
            release_memory()
    settings = {"metrics": list(metrics), "num_videos": len(inputs.videos), "num_reference": len(inputs.reference),
                "fps": inputs.fps, "mode": inputs.mode, "world_size": world_size, "warnings": warnings,
                "eval": OmegaConf.to_container(inputs.settings, resolve=True)
                if OmegaConf.is_config(inputs.settings) else inputs.settings}
    return EvalResult(aggregate, videos, settings)
