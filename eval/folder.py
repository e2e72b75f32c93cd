"""Evaluating any folder of videos (``python -m eval --videos DIR``, e.g. a baseline's outputs) and
the pooled samples of several runs (``python -m eval --runs A B ...``).

Folder mode reads every video file, GIF or frame folder of DIR at its own size and frame rate
(VBench reads videos as they are; a frame folder or a file without a rate takes ``data.fps``);
``--resize HxW`` (resize + centre crop, printed) is the only resize besides each metric's own
preprocessing. Cameras are read only for the metrics that need them (SED/TSED, camera accuracy
with COLMAP): from
``<name>.json`` beside the video (``{"camera": {"K": [3, 3], "w2c": [N, 4, 4]}}``, as sampled
views have) or from ``DIR/cameras.json`` (``{name: {"K": ..., "w2c": ...}}``). The settings are
``configs/base.yaml``'s (plus ``--config`` files and ``key=value`` overrides).

Runs mode pools the sampled views of several runs, named ``<run>/<view>`` (run folder names
must differ), against ``--reference DIR`` or, by default, every run's input video.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Sequence

import torch
from omegaconf import DictConfig

from eval.evaluate import EvalResult, evaluate
from eval.models import EvalConfigError
from eval.registry import EvalInputs
from eval.results import raise_for_errors, write_results
from reangle.config import load_config
from reangle.io.video import IMAGE_SUFFIXES, VIDEO_SUFFIXES, read_all_frames, resize_center_crop, video_fps
from reangle.utils import resolve_device

CAMERAS_FILE = "cameras.json"
CAMERA_METRICS = ("sed", "tsed", "camera_rot_err", "camera_trans_err", "camera_cammc")  # read cameras for these


def video_sources(folder: Path) -> list[Path]:
    """The videos of ``folder``: video files, GIFs and folders of frames, by name."""
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES | {".gif"} or
                  (p.is_dir() and any(f.suffix.lower() in IMAGE_SUFFIXES for f in p.iterdir())))


def parse_size(text: str) -> tuple[int, int]:
    """``"480x720"`` -> (480, 720)."""
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise EvalConfigError(f"--resize {text!r} is not HEIGHTxWIDTH, e.g. 480x720") from None
    if height <= 0 or width <= 0:
        raise EvalConfigError(f"--resize {text!r} needs a positive height and width")
    return height, width


def read_folder(folder: Path, resize: tuple[int, int] | None, default_fps: float
                ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """``{name: frames [N, 3, H, W]}`` (each at its own size unless ``resize``) and ``{name: fps}``."""
    if not folder.is_dir():
        raise EvalConfigError(f"videos folder not found: {folder}")
    sources = video_sources(folder)
    if not sources:
        raise EvalConfigError(f"no videos (video files, GIFs or frame folders) in {folder}")
    videos, fps = {}, {}
    for path in sources:
        name = path.stem if path.is_file() else path.name
        if name in videos:
            raise EvalConfigError(f"two videos in {folder} are both named {name!r}; rename one")
        frames = read_all_frames(path)
        videos[name] = resize_center_crop(frames, *resize).clamp(0, 1) if resize else frames
        fps[name] = video_fps(path) or default_fps
    return videos, fps


def folder_cameras(folder: Path, names: Iterable[str]) -> dict[str, dict[str, torch.Tensor]]:
    """Cameras ``{name: {"K", "w2c"}}`` from ``<name>.json`` sidecars, else from ``cameras.json``."""
    table = json.loads((folder / CAMERAS_FILE).read_text()) if (folder / CAMERAS_FILE).is_file() else {}
    cameras = {}
    for name in names:
        sidecar = folder / f"{name}.json"
        camera = json.loads(sidecar.read_text()).get("camera") if sidecar.is_file() else table.get(name)
        if camera:
            cameras[name] = {k: torch.tensor(camera[k], dtype=torch.float64) for k in ("K", "w2c")}
    return cameras


def settings(files: Sequence[str] = (), overrides: Iterable[str] = ()) -> DictConfig:
    """``configs/base.yaml`` + ``files`` + ``overrides``, without a run (``data.video`` is not used here)."""
    return load_config(files, ["data.video=synthetic", *overrides])


def inputs_from_folder(folder: str | os.PathLike, cfg: DictConfig, metrics: Sequence[str],
                       reference: str | os.PathLike | None, resize: tuple[int, int] | None) -> EvalInputs:
    """The videos of ``folder`` (and of ``reference`` for FID/FVD), with cameras where a metric needs them."""
    folder = Path(folder)
    videos, fps = read_folder(folder, resize, float(cfg.data.fps))
    refs = []
    if reference is not None and any(m in ("fid", "fvd") for m in metrics):
        refs = list(read_folder(Path(reference), resize, float(cfg.data.fps))[0].values())
    cameras = folder_cameras(folder, videos) if any(m in CAMERA_METRICS for m in metrics) else {}
    return EvalInputs(videos=videos, fps=float(cfg.data.fps), mode=cfg.mode, settings=cfg.eval, reference=refs,
                      cameras=cameras, video_fps=fps)


def inputs_from_runs(run_dirs: Sequence[str | os.PathLike], cfg: DictConfig, metrics: Sequence[str],
                     reference: str | os.PathLike | None, resize: tuple[int, int] | None,
                     files: Sequence[str] = (), overrides: Iterable[str] = ()) -> EvalInputs:
    """The sampled views of every run as ``<run>/<view>`` (each run's frame rate), and the reference: the
    videos of ``reference``, or every run's input video."""
    from eval.run import inputs_from_config, run_config

    names = [Path(r).name for r in run_dirs]
    if len(set(names)) != len(names):
        raise EvalConfigError(f"the runs' folder names must differ to name their views <run>/<view>; got {names}")
    needs_reference = any(m in ("fid", "fvd") for m in metrics)
    videos, fps, cameras, refs = {}, {}, {}, []
    for run_dir, name in zip(run_dirs, names):
        run_cfg = run_config(run_dir, files, list(overrides) + ([f"eval.reference={reference}"] if reference else []))
        if run_cfg.mode != cfg.mode:
            raise EvalConfigError(f"run {run_dir} is in {run_cfg.mode} mode, the pool in {cfg.mode} mode; pool runs "
                                  f"of one mode (or set mode=...)")
        run_inputs = inputs_from_config(run_cfg, [m for m in metrics if m not in ("fid", "fvd")])
        for view, frames in run_inputs.videos.items():
            videos[f"{name}/{view}"] = resize_center_crop(frames, *resize).clamp(0, 1) if resize else frames
            fps[f"{name}/{view}"] = run_inputs.fps
        cameras.update({f"{name}/{view}": cam for view, cam in run_inputs.cameras.items()})
        if needs_reference and reference is None:
            from eval.run import reference_videos
            refs += [resize_center_crop(v, *resize).clamp(0, 1) if resize else v
                     for v in reference_videos(run_cfg, None)]
    if needs_reference and reference is not None:
        refs = list(read_folder(Path(reference), resize, float(cfg.data.fps))[0].values())
    return EvalInputs(videos=videos, fps=float(cfg.data.fps), mode=cfg.mode, settings=cfg.eval, reference=refs,
                      cameras=cameras, video_fps=fps)


def evaluate_folder(videos: str | os.PathLike | None = None, runs: Sequence[str | os.PathLike] = (),
                    metrics: Sequence[str] | None = None, reference: str | os.PathLike | None = None,
                    out_dir: str | os.PathLike | None = None, resize: str | None = None, files: Sequence[str] = (),
                    overrides: Iterable[str] = (), progress: bool = True) -> EvalResult:
    """``python -m eval --videos DIR`` / ``--runs A B ...``: evaluate, write ``eval.json`` / ``eval.md`` into
    ``out_dir`` (default: the videos folder; required for runs), raise :class:`MetricsFailed` if a metric failed."""
    if (videos is None) == (not runs):
        raise EvalConfigError("give either --videos DIR or --runs A B ...")
    if out_dir is None and videos is None:
        raise EvalConfigError("--runs needs --out DIR for the pooled eval.json")
    out_dir = Path(out_dir if out_dir is not None else videos)
    cfg = settings(files, overrides)
    metrics = list(metrics) if metrics else list(cfg.eval.metrics)
    size = parse_size(resize) if resize else None
    if size:
        print(f"resizing every video to {size[0]}x{size[1]} (resize to cover, centre crop) before evaluation")
    inputs = (inputs_from_folder(videos, cfg, metrics, reference, size) if videos is not None else
              inputs_from_runs(runs, cfg, metrics, reference, size, files, overrides))
    result = evaluate(inputs, metrics, device=resolve_device(cfg.eval.device), cache_dir=cfg.run.cache_dir,
                      progress=progress)
    result.settings["source"] = {"videos": str(videos)} if videos is not None else {"runs": [str(r) for r in runs]}
    result.settings["resize"] = list(size) if size else None
    out_dir.mkdir(parents=True, exist_ok=True)
    write_results(result, out_dir, Path(videos).name if videos is not None else "pooled runs")
    raise_for_errors(result, out_dir)
    return result
