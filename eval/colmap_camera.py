"""Camera accuracy as camera-control papers report it (``eval.camera.estimator: colmap``).

The estimate follows the protocol of CameraCtrl (He et al. 2024), CamI2V (Zheng et al. 2024)
and ReCamMaster (Bai et al. 2025): the generated video's own camera path, recovered by
COLMAP through ``pycolmap`` — SIFT features, sequential matching, one pinhole camera with the
requested intrinsics held fixed, incremental mapping (``eval.camera.mapper: incremental``)
or the global mapper (``global``: GLOMAP) — compared with the requested path:

- both paths are made relative to frame 0: ``P_n = w2c_n inv(w2c_0)`` (``P_0 = I``);
- each path's translations are divided by its extent, the largest ``|t_n|`` (SfM has no
  scale; the requested path in its own units has none either once normalised);
- **RotErr** = sum over frames of the geodesic angle of ``R_est R_gt^T`` (degrees);
- **TransErr** = sum over frames of ``|t_est - t_gt|`` (normalised units);
- **CamMC** = sum over frames of the Frobenius norm of ``[R|t]_est - [R|t]_gt`` (CamI2V).

Sums run over the frames COLMAP registered (``registered`` is their fraction); frame 0 must be
registered. A path without translation (a pure rotation) keeps its zero translations.
Conventions: frames ``[N, 3, H, W]`` in [0, 1]; cameras world-to-camera 4x4, OpenCV axes (as
COLMAP's ``cam_from_world``), K in pixels.
"""
from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from reangle.errors import InputError
from reangle.io.video import to_uint8

MAPPERS = ("incremental", "global")
SEQUENTIAL_OVERLAP = 10  # frames each frame is matched with (COLMAP's sequential matcher default)
SIFT_PEAK_THRESHOLD = 0.02 / 3  # COLMAP's default (0.02 / octave resolution 3)
MIN_INLIERS = 30         # initial pair: inlier matches (COLMAP: 100)
MIN_TRI_ANGLE = 4.0      # initial pair: triangulation angle in degrees (COLMAP: 16)


class ColmapError(InputError):
    """A video whose camera path COLMAP cannot recover, or pycolmap missing."""


@dataclass
class TrajectoryErrors:
    """RotErr (degrees), TransErr and CamMC (normalised units), summed over the registered frames, and
    the fraction of frames registered."""

    rot_err_deg: float
    trans_err: float
    cam_mc: float
    registered: float


def relative_to_first(w2c: Tensor) -> Tensor:
    """``[N, 4, 4]`` poses relative to frame 0: ``w2c_n inv(w2c_0)``."""
    w2c = w2c.double()
    return w2c @ torch.linalg.inv(w2c[0])


def normalise_scale(poses: Tensor) -> Tensor:
    """Relative poses ``[N, 4, 4]`` with translations divided by the largest translation norm (unchanged if 0)."""
    extent = poses[:, :3, 3].norm(dim=-1).max()
    out = poses.clone()
    if extent > 0:
        out[:, :3, 3] /= extent
    return out


def trajectory_errors(w2c_est: Tensor, w2c_gt: Tensor) -> TrajectoryErrors:
    """Errors of an estimated path ``[N, 4, 4]`` (NaN rows: frames not registered) against the requested one."""
    registered = ~w2c_est.reshape(len(w2c_est), -1).isnan().any(-1)
    if not bool(registered[0]):
        raise ColmapError("COLMAP did not register the first frame, to which both paths are made relative")
    est = normalise_scale(relative_to_first(w2c_est[registered]))
    gt = normalise_scale(relative_to_first(w2c_gt[registered]))
    cos = ((est[:, :3, :3] @ gt[:, :3, :3].transpose(-1, -2)).diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2
    rot = torch.rad2deg(torch.arccos(cos.clamp(-1.0, 1.0))).sum()
    trans = (est[:, :3, 3] - gt[:, :3, 3]).norm(dim=-1).sum()
    cam_mc = (est[:, :3, :] - gt[:, :3, :]).flatten(1).norm(dim=-1).sum()
    return TrajectoryErrors(float(rot), float(trans), float(cam_mc), float(registered.double().mean()))


def _pycolmap():
    try:
        import pycolmap
    except ImportError as exc:
        raise ColmapError(f"eval.camera.estimator=colmap needs pycolmap: pip install pycolmap ({exc})") from exc
    return pycolmap


def colmap_trajectory(frames: Tensor, K: Tensor, mapper: str = "incremental",
                      peak_threshold: float = SIFT_PEAK_THRESHOLD) -> Tensor:
    """COLMAP's camera path of a video ``[N, 3, H, W]`` seen through the pinhole ``K [3, 3]`` (fixed):
    world-to-camera ``[N, 4, 4]`` in the largest reconstruction's frame, NaN for unregistered frames."""
    if mapper not in MAPPERS:
        raise ColmapError(f"unknown eval.camera.mapper {mapper!r}; use one of {list(MAPPERS)}")
    pycolmap = _pycolmap()
    from PIL import Image

    n = frames.shape[0]
    with tempfile.TemporaryDirectory(prefix="colmap_") as tmp:
        root = Path(tmp)
        images, database, output = root / "images", root / "database.db", root / "sparse"
        images.mkdir()
        output.mkdir()
        # BMP, not PNG: with decord's libraries loaded first (as in python -m eval), COLMAP's PNG reader
        # fails on zlib ("bad parameters to zlib") and no frame registers
        names = [f"{i:05d}.bmp" for i in range(n)]
        for name, image in zip(names, to_uint8(frames)):
            Image.fromarray(image).save(images / name)
        fx, fy, cx, cy = (float(v) for v in (K[0, 0], K[1, 1], K[0, 2], K[1, 2]))
        reader = pycolmap.ImageReaderOptions()
        reader.camera_model = "PINHOLE"
        reader.camera_params = f"{fx},{fy},{cx + 0.5},{cy + 0.5}"  # COLMAP's pixel centres are at +0.5
        extraction = pycolmap.FeatureExtractionOptions()
        extraction.sift.peak_threshold = peak_threshold
        pycolmap.extract_features(database, images, camera_mode=pycolmap.CameraMode.SINGLE, reader_options=reader,
                                  extraction_options=extraction, device=pycolmap.Device.cpu)
        pairing = pycolmap.SequentialPairingOptions()
        pairing.overlap = SEQUENTIAL_OVERLAP
        pycolmap.match_sequential(database, pairing_options=pairing, device=pycolmap.Device.cpu)
        if mapper == "incremental":
            options = pycolmap.IncrementalPipelineOptions()
            options.ba_refine_focal_length = False
            options.ba_refine_principal_point = False
            options.ba_refine_extra_params = False
            options.mapper.abs_pose_refine_focal_length = False
            options.mapper.abs_pose_refine_extra_params = False
            options.mapper.init_min_num_inliers = MIN_INLIERS  # generated videos are short: small baselines
            options.mapper.init_min_tri_angle = MIN_TRI_ANGLE
            reconstructions = pycolmap.incremental_mapping(database, images, output, options)
        else:
            options = pycolmap.GlobalPipelineOptions()
            reconstructions = pycolmap.global_mapping(database, images, output, options)
        if not reconstructions:
            raise ColmapError(f"COLMAP registered no frames of a {n}-frame video (too little texture or motion); "
                              f"use eval.camera.estimator=dust3r")
        best = max(reconstructions.values(), key=lambda r: r.num_reg_images())
        w2c = torch.full((n, 4, 4), math.nan, dtype=torch.float64)
        index = {name: i for i, name in enumerate(names)}
        for image in best.images.values():
            if image.has_pose:
                w2c[index[image.name]] = torch.eye(4, dtype=torch.float64)
                w2c[index[image.name], :3, :] = torch.from_numpy(image.cam_from_world().matrix())
        return w2c
