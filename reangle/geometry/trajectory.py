"""Target camera trajectories: the six motions, static and dynamic, and user-defined views.

Every pose is a world-to-camera ``[N, 4, 4]`` float64 tensor (one per frame) relative to
the input camera, which is the identity. Orbits turn the camera about a pivot on the
input camera's optical axis at ``pivot_distance`` and keep looking at it (magnitude in
degrees); dollies move the camera along the axis by a fraction of the pivot distance,
focal length fixed. Static views hold the full magnitude on every frame; dynamic views
start at the input camera and reach the full magnitude on the last frame.

Dynamic dollies follow the released code's per-frame angle form by default
(``dolly_profile="angle"``): with ``s`` the angle per frame, the camera of frame ``i`` is
``d cos(i s)`` from the pivot when zooming in and ``d (1 + sin(i s))`` when zooming out,
``d`` the pivot distance; ``s`` is chosen so that the last frame lands on the magnitude.
``dolly_profile="linear"`` ramps the distance linearly instead. Orbits always ramp their
angle linearly (``i s``, as released).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from reangle.errors import InputError
from reangle.geometry.camera import look_at

MOTIONS = ("orbit_left", "orbit_right", "orbit_up", "orbit_down", "dolly_in", "dolly_out")
DOLLY_PROFILES = ("angle", "linear")

# Camera-movement text for dynamic mode: "<TOKEN> Camera movement <words>, <caption>".
MOTION_TOKENS = {
    "orbit_left": ("CAMERA_ORBIT_LEFT", "orbit left"),
    "orbit_right": ("CAMERA_ORBIT_RIGHT", "orbit right"),
    "orbit_up": ("CAMERA_ORBIT_UP", "orbit up"),
    "orbit_down": ("CAMERA_ORBIT_DOWN", "orbit down"),
    "dolly_in": ("CAMERA_ZOOM_IN", "zoom in"),
    "dolly_out": ("CAMERA_ZOOM_OUT", "zoom out"),
}


# Magnitudes a view may ask for (inclusive): degrees for orbits (beyond 90 the camera sees the
# back of what the input shows), fractions of the pivot distance for dollies (dolly_in 1 would
# put the camera on the pivot).
MAGNITUDE_RANGES = {"orbit_left": (0.0, 90.0), "orbit_right": (0.0, 90.0), "orbit_up": (0.0, 90.0),
                    "orbit_down": (0.0, 90.0), "dolly_in": (0.0, 0.99), "dolly_out": (0.0, 1.0)}
MAX_CAMERA_DISTANCE = 2.0   # custom poses: camera centre within this many pivot distances of the input camera
POSE_TOLERANCE = 1e-4       # custom poses: |R R^T - I|, |det R - 1| and the last row's error, each entry
VIEW_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")   # names become file names (no /, no leading .)


class TrajectoryError(InputError):
    """An unknown motion or a malformed view definition."""


def check_view_name(name: Any) -> str:
    """``name`` if it is a safe file name (letters, digits, ``_ . -``; 1-64 characters, no leading ``.``)."""
    if not isinstance(name, str) or not VIEW_NAME.fullmatch(name):
        raise TrajectoryError(f"view name {name!r} is not a safe file name: use 1-64 letters, digits, '_', '.' or "
                              f"'-', starting with a letter or digit")
    return name


def check_magnitude(motion: str, magnitude: float, what: str) -> float:
    """``magnitude`` if it is finite and in :data:`MAGNITUDE_RANGES` of ``motion``."""
    low, high = MAGNITUDE_RANGES[check_motion(motion)]
    if not low <= magnitude <= high:   # NaN fails too
        unit = "degrees" if motion.startswith("orbit") else "fraction of the pivot distance"
        raise TrajectoryError(f"{what}: {motion} magnitude {magnitude} is outside [{low}, {high}] ({unit})")
    return magnitude


def check_poses(w2c: torch.Tensor, pivot_distance: float, name: str) -> torch.Tensor:
    """``w2c [N, 4, 4]`` if every matrix is a finite rigid world-to-camera transform: rotation
    orthonormal with det +1 and last row ``0 0 0 1`` (within :data:`POSE_TOLERANCE`), camera centre
    within :data:`MAX_CAMERA_DISTANCE` pivot distances of the input camera."""
    bad = ~torch.isfinite(w2c).flatten(1).all(dim=1)
    where = f"view {name!r}: pose {int(bad.nonzero()[0]) if bad.any() else 0}"
    if bad.any():
        raise TrajectoryError(f"{where} holds NaN or infinite values")
    rotation, translation = w2c[:, :3, :3], w2c[:, :3, 3]
    eye = torch.eye(3, dtype=w2c.dtype)
    errors = {
        "its last row is not 0 0 0 1": (w2c[:, 3] - torch.tensor([0.0, 0.0, 0.0, 1.0], dtype=w2c.dtype)).abs().amax(-1),
        "its rotation is not orthonormal (scaled or sheared)": (rotation @ rotation.transpose(1, 2) - eye).abs().flatten(1).amax(-1),
        "its rotation has determinant -1 (a reflection)": (torch.linalg.det(rotation) - 1).abs(),
    }
    for problem, error in errors.items():
        if (error > POSE_TOLERANCE).any():
            raise TrajectoryError(f"view {name!r}: pose {int((error > POSE_TOLERANCE).nonzero()[0])} is not a rigid "
                                  f"world-to-camera matrix: {problem} (tolerance {POSE_TOLERANCE})")
    distance = (rotation.transpose(1, 2) @ translation[..., None]).squeeze(-1).norm(dim=-1)   # |camera centre|
    if (distance > MAX_CAMERA_DISTANCE * pivot_distance).any():
        far = int((distance > MAX_CAMERA_DISTANCE * pivot_distance).nonzero()[0])
        raise TrajectoryError(f"view {name!r}: pose {far} puts the camera {float(distance[far]):.4g} from the input "
                              f"camera, more than {MAX_CAMERA_DISTANCE} x camera.pivot_distance "
                              f"({MAX_CAMERA_DISTANCE * pivot_distance:g}); check the units")
    return w2c


@dataclass
class TargetView:
    """A target camera trajectory: ``w2c`` ``[N, 4, 4]`` float64."""

    name: str
    motion: str | None
    magnitude: float
    w2c: torch.Tensor
    prompt_prefix: str = ""  # dynamic mode: the camera-movement text put before the caption

    def prompt(self, caption: str) -> str:
        return f"{self.prompt_prefix}{caption}"


def check_motion(motion: str) -> str:
    if motion not in MOTIONS:
        raise TrajectoryError(f"unknown camera motion {motion!r}; use one of {', '.join(MOTIONS)}")
    return motion


def motion_pose(motion: str, magnitude: torch.Tensor | float, pivot_distance: float) -> torch.Tensor:
    """World-to-camera ``[..., 4, 4]`` for ``motion`` at ``magnitude`` (any batch shape)."""
    check_motion(motion)
    mag = torch.as_tensor(magnitude, dtype=torch.float64)
    pivot = torch.tensor([0.0, 0.0, pivot_distance], dtype=torch.float64)
    if motion.startswith("orbit"):
        angle = torch.deg2rad(mag)
        sign = 1.0 if motion in ("orbit_left", "orbit_down") else -1.0
        s, c = torch.sin(sign * angle), torch.cos(sign * angle)
        zero = torch.zeros_like(s)
        if motion in ("orbit_left", "orbit_right"):   # about the vertical (y) axis; +angle moves left
            offset = torch.stack([-s, zero, -c], dim=-1) * pivot_distance
        else:                                          # about the x axis; +angle moves down
            offset = torch.stack([zero, s, -c], dim=-1) * pivot_distance
        return look_at(pivot + offset, pivot.expand_as(offset))
    sign = 1.0 if motion == "dolly_in" else -1.0
    w2c = torch.eye(4, dtype=torch.float64).repeat(*mag.shape, 1, 1)
    w2c[..., 2, 3] = -sign * mag * pivot_distance  # camera moves to z = sign * mag * d
    return w2c


def check_dolly_profile(profile: str) -> str:
    if profile not in DOLLY_PROFILES:
        raise TrajectoryError(f"unknown dolly profile {profile!r}; use one of {', '.join(DOLLY_PROFILES)}")
    return profile


def ramp(motion: str, magnitude: float, num_frames: int, dolly_profile: str = "angle") -> torch.Tensor:
    """``[num_frames]`` float64 magnitudes of a dynamic view: 0 on the first frame, ``magnitude``
    on the last; linear in the frame index, or for dollies with ``dolly_profile="angle"``
    ``1 - cos(i s)`` (in) and ``sin(i s)`` (out), ``s`` the angle per frame."""
    progress = torch.linspace(0.0, 1.0, num_frames, dtype=torch.float64)
    if not motion.startswith("dolly") or check_dolly_profile(dolly_profile) == "linear":
        return progress * magnitude
    if not 0.0 <= magnitude <= 1.0:
        raise TrajectoryError(f"{motion} magnitude {magnitude} must lie in [0, 1] (a fraction of the pivot "
                              f"distance) with the angle dolly profile")
    if motion == "dolly_in":
        return 1.0 - torch.cos(progress * math.acos(1.0 - magnitude))
    return torch.sin(progress * math.asin(magnitude))


def motion_trajectory(motion: str, magnitude: float, num_frames: int, pivot_distance: float,
                      dynamic: bool, dolly_profile: str = "angle") -> torch.Tensor:
    """``[num_frames, 4, 4]``: constant (static) or moving from the input pose along :func:`ramp` (dynamic)."""
    if dynamic:
        return motion_pose(motion, ramp(motion, magnitude, num_frames, dolly_profile), pivot_distance)
    return motion_pose(motion, magnitude, pivot_distance).expand(num_frames, 4, 4).clone()


def movement_prefix(motion: str) -> str:
    token, words = MOTION_TOKENS[check_motion(motion)]
    return f"{token} Camera movement {words}, "


def _custom_poses(spec: Any, num_frames: int, name: str, pivot_distance: float) -> torch.Tensor:
    if isinstance(spec, (str, Path)):
        path = Path(spec)
        if not path.is_file():
            raise TrajectoryError(f"view {name!r}: pose file not found: {path}")
        try:
            poses = torch.from_numpy(np.load(path).astype(np.float64))
        except (ValueError, OSError) as exc:
            raise TrajectoryError(f"view {name!r}: cannot read pose file {path} as a numeric .npy array ({exc})") from exc
    else:
        try:
            poses = torch.tensor(np.asarray(spec, dtype=np.float64))
        except (TypeError, ValueError) as exc:
            raise TrajectoryError(f"view {name!r}: poses must be numbers in 4x4 matrices ({exc})") from exc
    if poses.shape == (4, 4):
        poses = poses.expand(num_frames, 4, 4).clone()
    if poses.shape != (num_frames, 4, 4):
        raise TrajectoryError(f"view {name!r}: poses must be one 4x4 matrix or {num_frames} of them, "
                              f"got shape {tuple(poses.shape)}")
    return check_poses(poses, pivot_distance, name)


def build_views(mode: str, num_frames: int, pivot_distance: float, motions: Sequence[str],
                ranges: Mapping[str, Sequence[float]], per_motion: int | None = None, seed: int = 0,
                custom: Iterable[Mapping[str, Any]] = (), only_custom: bool = False,
                dolly_profile: str = "angle") -> list[TargetView]:
    """The target views of a run.

    Random views: ``per_motion`` of each motion (default 2 static, 1 dynamic), magnitudes
    uniform in ``ranges[motion]`` drawn from ``seed``. ``custom`` entries are
    ``{name, motion, magnitude}`` or ``{name, poses}`` (one or N 4x4 world-to-camera
    matrices, or a ``.npy`` path), each with an optional ``prompt_prefix``; names must be safe
    file names (:func:`check_view_name`), poses rigid (:func:`check_poses`), magnitudes (random
    ranges included) within :data:`MAGNITUDE_RANGES`. ``dolly_profile``:
    how dynamic dollies reach their magnitude (:func:`ramp`).
    """
    if mode not in ("static", "dynamic"):
        raise TrajectoryError(f"unknown mode {mode!r}; use static or dynamic")
    dynamic = mode == "dynamic"
    check_dolly_profile(dolly_profile)
    for motion in motions:
        check_motion(motion)
        if motion not in ranges or len(ranges[motion]) != 2:
            raise TrajectoryError(f"views.ranges.{motion} must be [low, high]")
        low, high = (check_magnitude(motion, float(bound), f"views.ranges.{motion}") for bound in ranges[motion])
        if low > high:
            raise TrajectoryError(f"views.ranges.{motion} must be [low, high] with low <= high, got {[low, high]}")
    count = per_motion if per_motion is not None else (1 if dynamic else 2)
    generator = torch.Generator().manual_seed(seed)
    views: list[TargetView] = []
    if not only_custom:
        for motion in motions:
            low, high = (float(x) for x in ranges[motion])
            for k in range(count):
                magnitude = low + (high - low) * torch.rand((), generator=generator, dtype=torch.float64).item()
                views.append(TargetView(
                    name=f"{motion}_{k:02d}", motion=motion, magnitude=magnitude,
                    w2c=motion_trajectory(motion, magnitude, num_frames, pivot_distance, dynamic, dolly_profile),
                    prompt_prefix=movement_prefix(motion) if dynamic else ""))
    for entry in custom:
        entry = dict(entry)
        if not entry.get("name"):
            raise TrajectoryError(f"custom view {entry} needs a 'name'")
        name = check_view_name(entry["name"])
        unknown = set(entry) - {"name", "motion", "magnitude", "poses", "prompt_prefix"}
        if unknown:
            raise TrajectoryError(f"custom view {name!r} has unknown key(s) {sorted(unknown)}")
        if "poses" in entry:
            w2c = _custom_poses(entry["poses"], num_frames, name, pivot_distance)
            motion, magnitude, prefix = entry.get("motion"), float(entry.get("magnitude", 0.0)), ""
        elif "motion" in entry and "magnitude" in entry:
            motion = check_motion(entry["motion"])
            magnitude = check_magnitude(motion, float(entry["magnitude"]), f"custom view {name!r}")
            w2c = motion_trajectory(motion, magnitude, num_frames, pivot_distance, dynamic, dolly_profile)
            prefix = movement_prefix(motion) if dynamic else ""
        else:
            raise TrajectoryError(f"custom view {name!r} needs 'motion' and 'magnitude', or 'poses'")
        views.append(TargetView(name=name, motion=motion, magnitude=magnitude, w2c=w2c,
                                prompt_prefix=entry.get("prompt_prefix", prefix)))
    names = [v.name for v in views]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates or "input" in names:
        raise TrajectoryError(f"view names must be unique and not 'input'; repeated: {duplicates or ['input']}")
    if not views:
        raise TrajectoryError("no target views: give views.motions or views.custom")
    return views

