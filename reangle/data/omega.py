"""The training set Omega on disk: the input video and its warped views.

Layout of an Omega folder::

    manifest.json          format, key, mode, frames/size/fps, caption, views (below)
    <view>/video.mp4       [N, H, W] RGB, holes black
    <view>/mask.npz        "bits": the bool [N, H, W] mask (1 = visible) as np.packbits of its
                           C-order values, "shape": [N, H, W]
    <view>/camera.json     "K" 3x3 pixels, "w2c" [N, 4, 4] world-to-camera (OpenCV axes)
    <view>/prompt.txt      the training prompt of the view
    preview.mp4 / .gif     all views in a grid, each tile labelled with its view name (optional)

``manifest.json`` is written last: a folder without it (an interrupted build) is never
trusted. Each view entry holds ``name``, ``motion`` (null for the input), ``magnitude``,
``prompt`` and the relative paths ``video``, ``mask``, ``camera``.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from reangle.errors import InputError
from reangle.io.video import read_video, write_mp4
from reangle.utils import temporary_path

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
INPUT_VIEW = "input"


class OmegaError(InputError):
    """An Omega folder that is missing, incomplete or inconsistent."""


@dataclass
class ViewRecord:
    """One entry of the manifest; paths are relative to the Omega folder."""

    name: str
    motion: str | None
    magnitude: float
    prompt: str
    video: str
    mask: str
    camera: str


@dataclass
class Omega:
    """A built Omega folder (see module docstring)."""

    root: Path
    key: str
    mode: str
    num_frames: int
    height: int
    width: int
    fps: float
    caption: str
    views: list[ViewRecord] = field(default_factory=list)

    @classmethod
    def load(cls, root: str | os.PathLike) -> "Omega":
        """Read and check ``root/manifest.json`` and that every file it names exists."""
        root = Path(root)
        manifest = root / MANIFEST
        if not manifest.is_file():
            raise OmegaError(f"no Omega at {root}: {MANIFEST} is missing (build it with "
                             f"`python -m reangle.warp --config FILE`)")
        try:
            data = json.loads(manifest.read_text())
            if data.get("format") != FORMAT_VERSION:
                raise OmegaError(f"{manifest} has format {data.get('format')!r}, expected {FORMAT_VERSION}; rebuild it")
            views = [ViewRecord(**v) for v in data.pop("views")]
            data.pop("format")
            omega = cls(root=root, views=views, **data)
        except (json.JSONDecodeError, TypeError, KeyError) as exc:
            raise OmegaError(f"corrupt Omega manifest {manifest}: {exc}; delete the folder to rebuild it") from exc
        for view in omega.views:
            for rel in (view.video, view.mask, view.camera):
                if not (root / rel).is_file():
                    raise OmegaError(f"Omega at {root} is incomplete: {rel} (view {view.name!r}) is missing; "
                                     f"delete the folder to rebuild it")
        return omega

    def view(self, name: str) -> ViewRecord:
        for view in self.views:
            if view.name == name:
                return view
        raise OmegaError(f"Omega at {self.root} has no view {name!r}; it has {[v.name for v in self.views]}")

    def read_frames(self, view: ViewRecord) -> torch.Tensor:
        """``[N, 3, H, W]`` float in [0, 1]."""
        return read_video(self.root / view.video, self.num_frames, self.height, self.width)

    def read_mask(self, view: ViewRecord) -> torch.Tensor:
        """``[N, H, W]`` bool, True = visible."""
        path = self.root / view.mask
        try:
            with np.load(path) as data:
                mask = torch.from_numpy(np.unpackbits(data["bits"])[: int(np.prod(data["shape"]))]
                                        .reshape(tuple(data["shape"])).astype(bool))
        except Exception as exc:
            raise OmegaError(f"cannot read mask {path}: {exc}; delete the Omega folder to rebuild it") from exc
        if tuple(mask.shape) != (self.num_frames, self.height, self.width):
            raise OmegaError(f"mask {path} has shape {tuple(mask.shape)}, expected "
                             f"{(self.num_frames, self.height, self.width)}")
        return mask

    def read_camera(self, view: ViewRecord) -> dict[str, torch.Tensor]:
        """``{"K": [3, 3], "w2c": [N, 4, 4]}`` float64."""
        data = json.loads((self.root / view.camera).read_text())
        return {"K": torch.tensor(data["K"], dtype=torch.float64),
                "w2c": torch.tensor(data["w2c"], dtype=torch.float64)}


def write_view(root: Path, name: str, frames: torch.Tensor, mask: torch.Tensor, K: torch.Tensor,
               w2c: torch.Tensor, prompt: str, motion: str | None, magnitude: float, fps: float) -> ViewRecord:
    """Write one view's files under ``root/name``; returns its manifest entry.

    ``frames`` ``[N, 3, H, W]`` in [0, 1]; ``mask`` ``[N, H, W]`` bool; ``K`` ``[3, 3]``;
    ``w2c`` ``[N, 4, 4]``.
    """
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    write_mp4(frames, folder / "video.mp4", fps=fps)
    mask_np = mask.cpu().numpy().astype(bool)
    np.savez_compressed(folder / "mask.npz", bits=np.packbits(mask_np), shape=np.array(mask_np.shape))
    (folder / "camera.json").write_text(json.dumps({
        "K": K.double().cpu().tolist(), "w2c": w2c.double().cpu().tolist(),
        "motion": motion, "magnitude": magnitude}))
    (folder / "prompt.txt").write_text(prompt)
    return ViewRecord(name=name, motion=motion, magnitude=float(magnitude), prompt=prompt,
                      video=f"{name}/video.mp4", mask=f"{name}/mask.npz", camera=f"{name}/camera.json")


def link_file(source: Path, target: Path) -> Path:
    """``target`` as a hard link to ``source`` (a copy where the file system has no links)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
    return target


def relink_view(source: Omega, root: Path, view: ViewRecord, prompt: str) -> ViewRecord:
    """``view`` of ``source`` under ``root`` with a new ``prompt``: its video, mask and camera
    files are linked, not rewritten; returns the new manifest entry."""
    for rel in (view.video, view.mask, view.camera):
        link_file(source.root / rel, root / rel)
    (root / view.name / "prompt.txt").write_text(prompt)
    return ViewRecord(**{**asdict(view), "prompt": prompt})


def staging_dir(final: Path) -> Path:
    """A fresh temporary folder beside ``final`` to build into before :func:`publish`."""
    tmp = temporary_path(final)
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def publish(staging: Path, final: Path, omega: Omega) -> Omega:
    """Write the manifest into ``staging`` last, then move it to ``final``. A folder already at
    ``final`` is not deleted (another process may be reading it): it is moved aside to a staging name
    of this process, which the first build after this process has ended deletes
    (:func:`reangle.utils.clean_stale_staging`). Call it under the cache lock."""
    data = asdict(omega)
    data.pop("root")
    data = {"format": FORMAT_VERSION, **data}
    (staging / MANIFEST).write_text(json.dumps(data, indent=1))
    if final.exists():
        aside = temporary_path(final.with_name(final.name + ".old"))
        shutil.rmtree(aside, ignore_errors=True)  # this process's own earlier copy
        os.replace(final, aside)
    os.replace(staging, final)
    omega.root = final
    return omega
