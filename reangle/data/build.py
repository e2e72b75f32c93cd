"""Stage I: from the input video to Omega (warped views + masks + cameras + prompts).

``build_omega(cfg)`` checks the inputs, then reuses the cached Omega built from the same
inputs and parameters, or builds it: frames -> depth -> one warp per target view ->
files -> manifest last (see :mod:`reangle.data.omega`). A new caption alone (``data.prompt``)
reuses the warped files of the same inputs and writes new prompts; ``data.fps`` only sets
the frame rate of newly written videos and is not part of any key.
"""
from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm.auto import tqdm

from reangle.config import ConfigError
from reangle.data.omega import (INPUT_VIEW, MANIFEST, Omega, OmegaError, link_file, publish, relink_view,
                                staging_dir, write_view)
from reangle.geometry.camera import intrinsics
from reangle.geometry.depth import DepthAnything, DepthError, NpyDepth, cached_depth
from reangle.geometry.splat import SPLAT_MODES, warp_video
from reangle.geometry.trajectory import TargetView, build_views
from reangle.io.grid import tile_videos
from reangle.io.synthetic import SyntheticScene
from reangle.io.video import count_frames, frame_indices, read_video, write_gif, write_mp4
from reangle.utils import cache_lock, clean_stale_staging, file_fingerprint, fingerprint, resolve_device

SYNTHETIC = "synthetic"
DEPTH_SOURCES = ("depth_anything", "npy", "synthetic")
PREVIEW_MAX_WIDTH = 960  # pixels
PREVIEW_FILES = ("preview.mp4", "preview.gif")


def _views(cfg: DictConfig) -> list[TargetView]:
    v = cfg.views
    return build_views(cfg.mode, cfg.data.num_frames, cfg.camera.pivot_distance, list(v.motions),
                       OmegaConf.to_container(v.ranges), v.per_motion, v.seed,
                       OmegaConf.to_container(v.custom), v.only_custom, v.dolly_profile)


def check_inputs(cfg: DictConfig) -> tuple[list[int] | None, list[TargetView]]:
    """Fail fast on bad stage I input (cheap: no decoding); returns the frame indices of a
    video file (None for the synthetic scene) and the target views."""
    d = cfg.data
    if cfg.depth.source not in DEPTH_SOURCES:
        raise DepthError(f"unknown depth.source {cfg.depth.source!r}; use one of {DEPTH_SOURCES}")
    if cfg.warp.splat not in SPLAT_MODES:
        raise ConfigError(f"unknown warp.splat {cfg.warp.splat!r}; use one of {SPLAT_MODES}")
    if d.video == SYNTHETIC:
        indices = None
    else:
        if cfg.depth.source == "synthetic":
            raise DepthError("depth.source=synthetic needs data.video=synthetic (true depth exists only for "
                             "the built-in scene)")
        indices = frame_indices(count_frames(d.video), d.num_frames, d.frame_start, d.frame_stride,
                                d.short_video, source=str(d.video))
    if cfg.depth.source == "npy" and not (cfg.depth.npy_dir and Path(cfg.depth.npy_dir).is_dir()):
        raise DepthError(f"depth.source=npy needs depth.npy_dir to be a folder of .npy files, got {cfg.depth.npy_dir!r}")
    return indices, _views(cfg)  # _views refuses unknown motions and malformed custom views


def depth_estimator(cfg: DictConfig, indices: list[int] | None = None) -> DepthAnything | NpyDepth | None:
    """The depth source of ``cfg`` (``None``: the synthetic scene's true depth)."""
    p = cfg.depth
    if p.source == "synthetic":
        return None
    if p.source == "npy":
        return NpyDepth(p.npy_dir, indices, p.output, p.disparity_scale, p.disparity_eps, tuple(p.clip))
    return DepthAnything(p.model, p.output, p.disparity_scale, p.disparity_eps, tuple(p.clip), p.input_size,
                         p.batch_size, p.device)


def _views_key(cfg: DictConfig) -> dict:
    """``views`` with each custom pose file's content hash beside its path."""
    views = OmegaConf.to_container(cfg.views)
    for entry in views["custom"]:
        poses = entry.get("poses")
        if isinstance(poses, str) and Path(poses).is_file():
            entry["poses_sha256"] = file_fingerprint(poses)
    return views


def warp_key(cfg: DictConfig) -> str:
    """Key of the warped content (frames, masks, cameras) ``cfg`` describes: input bytes + every
    stage I parameter (depth as its estimator keys it; ``.npy`` depth files and custom pose files
    by content). The caption and the frame rate are not part of it."""
    source = ("synthetic", OmegaConf.to_container(cfg.data.synthetic)) if cfg.data.video == SYNTHETIC \
        else file_fingerprint(cfg.data.video)
    estimator = depth_estimator(cfg)
    params = {"source": source, "mode": cfg.mode,
              "data": {k: v for k, v in OmegaConf.to_container(cfg.data).items() if k not in ("video", "synthetic", "prompt", "fps")},
              "depth": {"source": "synthetic"} if estimator is None else estimator.key(),
              "camera": OmegaConf.to_container(cfg.camera), "views": _views_key(cfg),
              "warp": {k: v for k, v in OmegaConf.to_container(cfg.warp).items() if k not in ("device", "chunk_frames")}}
    return fingerprint(params)


def omega_key(cfg: DictConfig) -> str:
    """Key of the Omega ``cfg`` describes: its warp key and the caption."""
    return fingerprint({"warp": warp_key(cfg), "caption": cfg.data.prompt})


def omega_dir(cfg: DictConfig) -> Path:
    """``run.cache_dir/omega/<warp key>/<Omega key>``: Omegas that differ only in their caption
    are siblings and share their warped files."""
    return Path(cfg.run.cache_dir) / "omega" / warp_key(cfg) / omega_key(cfg)


def _warped_sibling(final: Path, names: set[str]) -> Omega | None:
    """A complete Omega beside ``final`` with the same warp key and views (another caption), if any."""
    if not final.parent.is_dir():
        return None
    for folder in sorted(final.parent.iterdir()):
        if folder != final and not folder.name.startswith(".") and (folder / MANIFEST).is_file():
            try:
                omega = Omega.load(folder)
            except OmegaError:
                continue
            if {v.name for v in omega.views} == names:
                return omega
    return None


def _recaption(source: Omega, final: Path, prompts: dict[str, str], caption: str) -> Omega:
    """A new Omega at ``final`` with ``source``'s warped files (linked) and new prompts."""
    staging = staging_dir(final)
    records = [relink_view(source, staging, view, prompts[view.name]) for view in source.views]
    for name in PREVIEW_FILES:
        if (source.root / name).is_file():
            link_file(source.root / name, staging / name)
    omega = Omega(root=staging, key=final.name, mode=source.mode, num_frames=source.num_frames,
                  height=source.height, width=source.width, fps=source.fps, caption=caption, views=records)
    return publish(staging, final, omega)


def _frames_and_depth(cfg: DictConfig, indices: list[int] | None, K: torch.Tensor):
    d = cfg.data
    cache = cfg.run.cache_dir
    if indices is None:
        scene = SyntheticScene(d.synthetic.seed)
        times = torch.linspace(0.0, 1.0, d.num_frames, dtype=torch.float64)
        frames, true_depth = scene.render(torch.eye(4, dtype=torch.float64), K, d.height, d.width, times)
    else:
        frames = read_video(d.video, d.num_frames, d.height, d.width, d.frame_start, d.frame_stride, d.short_video)
    if cfg.depth.source == "synthetic":
        return frames, true_depth
    return frames, cached_depth(depth_estimator(cfg, indices), frames, cache)


def build_omega(cfg: DictConfig, force: bool = False) -> Omega:
    """Build (or reuse) the Omega of ``cfg``; returns it loaded from disk.

    Building and publishing hold a file lock (``.<Omega key>.lock`` beside the folder): a second
    process waits, then reuses what the first published. Staging folders of dead processes are
    deleted when a build starts."""
    indices, views = check_inputs(cfg)
    final = omega_dir(cfg)
    final.parent.mkdir(parents=True, exist_ok=True)
    with cache_lock(final):
        clean_stale_staging(final.parent)
        return _build_locked(cfg, final, indices, views, force)


def _build_locked(cfg: DictConfig, final: Path, indices: list[int] | None, views: list[TargetView],
                  force: bool) -> Omega:
    if not force and (final / MANIFEST).is_file():
        try:
            return Omega.load(final)
        except OmegaError:
            pass  # incomplete or corrupt: rebuilt below
    d = cfg.data
    prompts = {INPUT_VIEW: d.prompt, **{view.name: view.prompt(d.prompt) for view in views}}
    sibling = None if force else _warped_sibling(final, set(prompts))
    if sibling is not None:  # only the caption changed: no depth, no warping
        return _recaption(sibling, final, prompts, d.prompt)
    K = intrinsics(d.height, d.width, cfg.camera.focal, cfg.camera.reference_height)
    frames, depth = _frames_and_depth(cfg, indices, K)
    device = resolve_device(cfg.warp.device)
    frames_dev, depth_dev = frames.to(device), depth.to(device)
    identity = torch.eye(4, dtype=torch.float64)
    staging = staging_dir(final)
    records = [write_view(staging, INPUT_VIEW, frames, torch.ones(d.num_frames, d.height, d.width, dtype=torch.bool),
                          K, identity.expand(d.num_frames, 4, 4), d.prompt, None, 0.0, d.fps)]
    previews = [frames]
    for view in tqdm(views, desc="warping views", unit="view"):
        warped, mask = warp_video(frames_dev, depth_dev, K, identity, view.w2c, cfg.warp.splat,
                                  cfg.warp.depth_tolerance, cfg.warp.hole_dilation, cfg.warp.chunk_frames)
        warped, mask = warped.cpu(), mask.cpu()
        records.append(write_view(staging, view.name, warped, mask, K, view.w2c, view.prompt(d.prompt),
                                  view.motion, view.magnitude, d.fps))
        previews.append(warped)
    if cfg.warp.preview:
        grid = tile_videos(previews, max_width=PREVIEW_MAX_WIDTH, labels=[INPUT_VIEW] + [v.name for v in views])
        write_mp4(grid, staging / PREVIEW_FILES[0], fps=d.fps)
        write_gif(grid, staging / PREVIEW_FILES[1], fps=d.fps)
    omega = Omega(root=staging, key=final.name, mode=cfg.mode, num_frames=d.num_frames, height=d.height,
                  width=d.width, fps=float(d.fps), caption=d.prompt, views=records)
    return publish(staging, final, omega)
