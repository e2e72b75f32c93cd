"""Evaluating a run directory: its config, its sampled views, the reference videos, and the
written results (``eval.json``, ``eval.md``, and a W&B table in the run's own W&B run when W&B
logging is on).

``eval.json`` is ``{"aggregate": {metric: float}, "videos": {view: {metric: float}},
"settings": {...}, "errors": {metric: str}, "details": {metric: ...}}`` (``eval.results``). Generated videos are every ``<view>.mp4`` that has its ``<view>.json``
in ``eval.samples_dir`` and belongs to the run (the ``run`` its JSON names); the reference (FID/FVD) is every video in ``eval.reference``, or
the run's input video (Omega's ``input`` view).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Sequence

import torch
from omegaconf import DictConfig

from eval.evaluate import EvalResult, evaluate
from eval.folder import video_sources
from eval.models import EvalConfigError
from eval.registry import EvalInputs
from eval.results import raise_for_errors, write_results
from reangle.config import RUN_CONFIG, load_run_config
from reangle.io.video import count_frames, read_video
from reangle.utils import resolve_device

OMEGA_METRICS = ("camera_rot_err", "camera_trans_err", "warp_psnr", "warp_lpips")  # need the run's Omega
START_FRAME_METRICS = ("met3r", "sed", "tsed")  # what eval.source=start_frames can score (paper Tab. 2)
SOURCES = ("samples", "start_frames")


def run_config(run_dir: str | os.PathLike, files: Sequence[str] = (), overrides: Iterable[str] = ()) -> DictConfig:
    """The run's resolved config with extra config ``files`` and ``overrides`` (e.g. ``eval.*``) on top."""
    run_dir = Path(run_dir)
    if not (run_dir / RUN_CONFIG).is_file():
        raise EvalConfigError(f"{run_dir} is not a run directory ({RUN_CONFIG} missing); give the run.dir of a "
                              f"train.py run")
    return load_run_config(run_dir, files, overrides)


def read_full_video(path: Path, height: int, width: int) -> torch.Tensor:
    """Every frame of a video ``[N, 3, height, width]`` in [0, 1] (resized and centre-cropped if needed)."""
    return read_video(path, count_frames(path), height, width)


def sampled_views(samples_dir: str | os.PathLike, height: int, width: int,
                  run_id: str | None = None) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """``{view: frames}`` and the metadata of every ``<view>.mp4`` + ``<view>.json`` in ``samples_dir``;
    with ``run_id``, only the views whose metadata names that run (``run``): videos another run left
    in the folder are never scored."""
    folder = Path(samples_dir)
    if not folder.is_dir():
        raise EvalConfigError(f"samples folder not found: {folder}; sample the views first (sample.py --run)")
    videos, metadata, others = {}, [], 0
    for meta_path in sorted(folder.glob("*.json")):
        video_path = meta_path.with_suffix(".mp4")
        if video_path.is_file():
            meta = json.loads(meta_path.read_text())
            if run_id is not None and meta.get("run") != run_id:
                others += 1
                continue
            videos[meta.get("view", video_path.stem)] = read_full_video(video_path, height, width)
            metadata.append(meta)
    if not videos:
        raise EvalConfigError(f"no sampled views (<view>.mp4 + <view>.json) of this run in {folder}"
                              + (f" ({others} of another run are not scored)" if others else ""))
    return videos, metadata


def run_identity(cfg: DictConfig) -> str:
    """The run whose samples are scored: the fingerprint ``run.dir/run.json`` records, else ``cfg``'s."""
    from reangle.run_folder import recorded_fingerprint, run_fingerprint

    return recorded_fingerprint(cfg.run.dir) or run_fingerprint(cfg)


def reference_videos(cfg: DictConfig, reference: str | os.PathLike | None) -> list[torch.Tensor]:
    """Videos of ``reference`` (a folder of video files, GIFs or frame folders) or, when ``None``,
    the run's input video; all at the run's frame size."""
    h, w = cfg.data.height, cfg.data.width
    if reference is None:
        from reangle.data.omega import INPUT_VIEW
        from reangle.sampling.run import find_omega
        omega = find_omega(cfg)
        return [read_full_video(omega.root / omega.view(INPUT_VIEW).video, h, w)]
    folder = Path(reference)
    if not folder.is_dir():
        raise EvalConfigError(f"reference folder not found: {folder} (eval.reference / --reference)")
    sources = video_sources(folder)
    if not sources:
        raise EvalConfigError(f"no videos in the reference folder {folder}")
    return [read_full_video(p, h, w) for p in sources]


def start_frame_views(cfg: DictConfig) -> EvalInputs:
    """Stage III's ``run.dir/start_frames/<view>.png`` as one-frame videos ``[1, 3, H, W]`` with their
    views' cameras from the run's Omega (``K``, ``w2c[:1]``)."""
    from reangle.sampling.plan import INPAINTED_DIR, inpainted_views, read_image
    from reangle.sampling.run import find_omega

    folder = Path(cfg.run.dir) / INPAINTED_DIR
    omega = find_omega(cfg)
    names = inpainted_views(cfg.run.dir, omega) & {v.name for v in omega.views}  # this Omega's finished frames
    paths = sorted(p for p in folder.glob("*.png") if p.stem in names)
    if len(paths) < 2:
        raise EvalConfigError(f"eval.source=start_frames needs two or more start frames of Omega views in {folder}; "
                              f"found {len(paths)} (run stage III first: python -m reangle.inpaint --run)")
    videos = {p.stem: read_image(p, omega.height, omega.width)[None] for p in paths}
    cameras = {}
    for name in videos:
        camera = omega.read_camera(omega.view(name))
        cameras[name] = {"K": camera["K"], "w2c": camera["w2c"][:1]}
    return EvalInputs(videos=videos, fps=float(cfg.data.fps), mode=cfg.mode, settings=cfg.eval, cameras=cameras,
                      omega=omega)


def inputs_from_config(cfg: DictConfig, metrics: Sequence[str], run_id: str | None = None) -> EvalInputs:
    """The generated views of the run ``run_id`` (default: :func:`run_identity`), their fps and the
    reference videos (read only when FID/FVD are asked); with ``eval.source=start_frames`` stage III's
    start frames instead (:func:`start_frame_views`)."""
    if cfg.eval.source not in SOURCES:
        raise EvalConfigError(f"unknown eval.source {cfg.eval.source!r}; use one of {list(SOURCES)}")
    if cfg.eval.source == "start_frames":
        others = [m for m in metrics if m not in START_FRAME_METRICS]
        if others:
            raise EvalConfigError(f"eval.source=start_frames scores {', '.join(START_FRAME_METRICS)} only, not "
                                  f"{', '.join(others)}: pass --metrics {','.join(START_FRAME_METRICS)}")
        return start_frame_views(cfg)
    videos, metadata = sampled_views(cfg.eval.samples_dir, cfg.data.height, cfg.data.width,
                                     run_id or run_identity(cfg))
    fps = float(metadata[0].get("settings", {}).get("fps", cfg.data.fps))
    needs_reference = any(m in ("fid", "fvd") for m in metrics)
    reference = reference_videos(cfg, cfg.eval.reference) if needs_reference else []
    cameras = {meta["view"]: {k: torch.tensor(v, dtype=torch.float64) for k, v in meta["camera"].items()}
               for meta in metadata if meta.get("camera")}
    omega = None
    if any(m in OMEGA_METRICS for m in metrics):
        from reangle.sampling.run import find_omega
        omega = find_omega(cfg)
    return EvalInputs(videos=videos, fps=fps, mode=cfg.mode, settings=cfg.eval, reference=reference,
                      cameras=cameras, omega=omega)


def log_table(loggers: Iterable, result: EvalResult, step: int | None = None) -> None:
    """Dataset scores to every logger (``eval/<metric>``), and the per-view table where the logger
    has ``log_table`` (W&B)."""
    data = result.to_json()
    names = sorted({n for scores in data["videos"].values() for n in scores})
    for logger in loggers:
        logger.log_metrics({f"eval/{k}": v for k, v in data["aggregate"].items() if v is not None}, step=step)
        if hasattr(logger, "log_table") and names:
            rows = [[view] + [scores.get(n) for n in names] for view, scores in data["videos"].items()]
            logger.log_table(key="eval/videos", columns=["view"] + names, data=rows, step=step)


def evaluate_run(run_dir: str | os.PathLike, metrics: Sequence[str] | None = None,
                 reference: str | os.PathLike | None = None, files: Sequence[str] = (),
                 overrides: Iterable[str] = (), progress: bool = True) -> EvalResult:
    """``python -m eval``: evaluate a run's samples and write ``eval.json`` / ``eval.md``."""
    overrides = list(overrides) + ([f"eval.reference={Path(reference)}"] if reference is not None else [])
    cfg = run_config(run_dir, files, overrides)
    metrics = list(metrics) if metrics else list(cfg.eval.metrics)
    inputs = inputs_from_config(cfg, metrics)
    result = evaluate(inputs, metrics, device=resolve_device(cfg.eval.device), cache_dir=cfg.run.cache_dir,
                      progress=progress)
    write_results(result, cfg.eval.out_dir, cfg.run.name)
    if cfg.logger.kind == "wandb":
        from reangle.training.build import build_loggers
        loggers = [lg for lg in build_loggers(cfg, resume_recorded=True) if hasattr(lg, "log_table")]
        log_table(loggers, result)
        for logger in loggers:
            logger.finalize("success")
    raise_for_errors(result, cfg.eval.out_dir)
    return result
