"""Which views to sample, from which start frame, with which prompt and seed.

A :class:`ViewJob` is everything one video needs besides the model. Start frames
(``[3, H, W]`` in [0, 1], the Omega's size) come from, by priority:

- static mode: a user image (``sample.start_frames: {view: file}``), else stage III's
  inpainted frame ``<run_dir>/start_frames/<view>.png`` when ``start_frames/scores.json``
  records it as finished for this Omega (its key; a frame of another run's Omega is never
  used), else the view's
  warped first frame (holes black; ``start_frame_source`` says so in the metadata);
- dynamic mode, and the input view in both modes: the input video's first frame.

Each view's seed is a stable hash of the base seed and the view's name, so a view's
video does not depend on which other views are sampled, in which order, or on which rank.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import torch

from reangle.data.omega import INPUT_VIEW, Omega
from reangle.errors import InputError
from reangle.io.video import read_video, resize_center_crop

INPAINTED_DIR = "start_frames"   # stage III writes <run_dir>/start_frames/<view>.png
SCORES_FILE = "scores.json"      # and start_frames/scores.json: their identity and the finished views
SOURCES = ("user", "inpainted", "warped_first_frame", "input_first_frame")
MODES = ("static", "dynamic")


class SamplingInputError(InputError):
    """Sampling inputs that cannot be used (unknown view, missing start frame)."""


@dataclass
class ViewJob:
    """One view to sample. ``start_frame`` ``[3, H, W]`` float in [0, 1]; ``camera``: K ``[3][3]``
    and w2c ``[N][4][4]`` as nested lists (world-to-camera, OpenCV axes)."""

    name: str
    motion: str | None
    magnitude: float
    prompt: str
    seed: int
    start_frame: torch.Tensor
    start_frame_source: str
    start_frame_path: str | None
    camera: dict = field(default_factory=dict)


def view_seed(base_seed: int, view: str) -> int:
    """Seed of ``view``: the first 63 bits of sha256(f"{base_seed}/{view}") (stable across runs)."""
    digest = hashlib.sha256(f"{int(base_seed)}/{view}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2 ** 63 - 1)


def select_views(omega: Omega, names: Sequence[str] | None = None) -> list[str]:
    """``names`` checked against the Omega (order kept); ``None``: every view but the input."""
    known = [v.name for v in omega.views]
    if names is None:
        return [n for n in known if n != INPUT_VIEW]
    names = list(names)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SamplingInputError(f"unknown view name(s) {unknown}; the Omega at {omega.root} has {known}")
    if len(set(names)) != len(names):
        raise SamplingInputError(f"view names are repeated in {names}; name each view once")
    return names


def read_image(path: str | os.PathLike, height: int, width: int) -> torch.Tensor:
    """An image file as ``[3, height, width]`` in [0, 1] (resized to cover, centre-cropped)."""
    from PIL import Image

    path = Path(path)
    try:
        with Image.open(path) as im:
            array = np.asarray(im.convert("RGB"))
    except Exception as exc:
        raise SamplingInputError(f"cannot read start frame image {path}: {exc}") from exc
    image = torch.from_numpy(array.copy()).permute(2, 0, 1)[None].float() / 255.0
    return resize_center_crop(image, height, width)[0].clamp(0, 1).contiguous()


def _first_frame(omega: Omega, view: str) -> torch.Tensor:
    """Frame 0 of an Omega view, ``[3, H, W]`` (decodes that frame only)."""
    return read_video(omega.root / omega.view(view).video, 1, omega.height, omega.width)[0]


def read_start_frames_record(run_dir: str | os.PathLike) -> dict | None:
    """``<run_dir>/start_frames/scores.json``, or ``None`` when there is none (or it is unreadable)."""
    try:
        return json.loads((Path(run_dir) / INPAINTED_DIR / SCORES_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def inpainted_views(run_dir: str | os.PathLike | None, omega: Omega) -> set[str]:
    """Views whose stage III start frame in ``run_dir`` was finished for ``omega`` (same Omega key)."""
    record = read_start_frames_record(run_dir) if run_dir is not None else None
    if record is None or record.get("omega") != omega.key:
        return set()
    return set(record.get("views", {}))


def _start_frame_file(view: str, mode: str, run_dir: Path | None, user_frames: Mapping[str, str],
                      inpainted: set[str]) -> tuple[str, Path | None]:
    """(source, file or None for a frame read from the Omega) of ``view``'s start frame."""
    if mode == "dynamic" or view == INPUT_VIEW:
        return "input_first_frame", None
    if view in user_frames:
        return "user", Path(user_frames[view])
    if view in inpainted and (run_dir / INPAINTED_DIR / f"{view}.png").is_file():
        return "inpainted", run_dir / INPAINTED_DIR / f"{view}.png"
    return "warped_first_frame", None


def plan_views(omega: Omega, mode: str, base_seed: int, names: Sequence[str] | None = None,
               run_dir: str | os.PathLike | None = None,
               user_frames: Mapping[str, str] | None = None) -> list[ViewJob]:
    """The jobs of the selected views; every input is checked (files exist) before any is read."""
    if mode not in MODES:
        raise SamplingInputError(f"unknown mode {mode!r}; use one of {MODES}")
    views = select_views(omega, names)
    user_frames = dict(user_frames or {})
    known = {v.name for v in omega.views}
    stray = sorted(set(user_frames) - known)
    if stray:
        raise SamplingInputError(f"sample.start_frames names unknown view(s) {stray}; the Omega has {sorted(known)}")
    run_dir = Path(run_dir) if run_dir is not None else None
    inpainted = inpainted_views(run_dir, omega)
    sources = {v: _start_frame_file(v, mode, run_dir, user_frames, inpainted) for v in views}
    for view, (source, path) in sources.items():
        if path is not None and not path.is_file():
            raise SamplingInputError(f"start frame of view {view!r} not found: {path}; fix sample.start_frames")
    jobs = []
    for view in views:
        record = omega.view(view)
        source, path = sources[view]
        if path is not None:
            frame = read_image(path, omega.height, omega.width)
        else:
            frame = _first_frame(omega, INPUT_VIEW if source == "input_first_frame" else view)
        camera = omega.read_camera(record)
        jobs.append(ViewJob(name=view, motion=record.motion, magnitude=record.magnitude, prompt=record.prompt,
                            seed=view_seed(base_seed, view), start_frame=frame, start_frame_source=source,
                            start_frame_path=str(path) if path is not None else None,
                            camera={k: v.tolist() for k, v in camera.items()}))
    return jobs
