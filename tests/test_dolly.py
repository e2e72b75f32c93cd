"""Dolly trajectories against the released code's closed form: the camera of frame i sits
d cos(i s) from the pivot when zooming in and d (1 + sin(i s)) when zooming out."""
import math

import pytest
import torch

from reangle.config import load_config
from reangle.geometry.camera import camera_center
from reangle.geometry.trajectory import TrajectoryError, build_views, motion_trajectory

PIVOT = 200.0
FRAMES = 49


def _distance_to_pivot(w2c):
    pivot = torch.tensor([0.0, 0.0, PIVOT], dtype=torch.float64)
    return (camera_center(w2c) - pivot).norm(dim=-1)


@pytest.mark.parametrize("motion,deg_per_frame", [("dolly_in", 0.4), ("dolly_in", 0.6),
                                                  ("dolly_out", 0.1), ("dolly_out", 0.2)])
def test_dynamic_dolly_follows_the_released_per_frame_angle(motion, deg_per_frame):
    s = math.radians(deg_per_frame)
    i = torch.arange(FRAMES, dtype=torch.float64)
    if motion == "dolly_in":
        expected = PIVOT * torch.cos(i * s)
        magnitude = 1 - math.cos((FRAMES - 1) * s)
    else:
        expected = PIVOT * (1 + torch.sin(i * s))
        magnitude = math.sin((FRAMES - 1) * s)
    poses = motion_trajectory(motion, magnitude, FRAMES, PIVOT, dynamic=True)
    assert torch.allclose(_distance_to_pivot(poses), expected, rtol=0, atol=1e-9)
    assert torch.allclose(camera_center(poses)[:, :2], torch.zeros(FRAMES, 2, dtype=torch.float64))
    static = motion_trajectory(motion, magnitude, FRAMES, PIVOT, dynamic=False)
    assert torch.allclose(_distance_to_pivot(static), expected[-1].expand(FRAMES), rtol=0, atol=1e-9)


def test_linear_dolly_profile_stays_available():
    poses = motion_trajectory("dolly_in", 0.12, 13, PIVOT, dynamic=True, dolly_profile="linear")
    expected = PIVOT * (1 - 0.12 * torch.linspace(0, 1, 13, dtype=torch.float64))
    assert torch.allclose(_distance_to_pivot(poses), expected, rtol=0, atol=1e-9)
    views = build_views("dynamic", 13, PIVOT, ["dolly_out"], {"dolly_out": [0.1, 0.1]}, dolly_profile="linear")
    assert torch.allclose(_distance_to_pivot(views[0].w2c), PIVOT * (1 + torch.linspace(0, 0.1, 13,
                                                                                         dtype=torch.float64)))


def test_default_dolly_ranges_are_the_released_end_magnitudes():
    views = load_config([], ["data.video=x.mp4"]).views
    assert views.dolly_profile == "angle"
    released = {"dolly_in": [1 - math.cos(math.radians(48 * s)) for s in (0.4, 0.6)],
                "dolly_out": [math.sin(math.radians(48 * s)) for s in (0.1, 0.2)]}
    for motion, (low, high) in released.items():
        assert list(views.ranges[motion]) == pytest.approx([low, high], abs=1e-4)


@pytest.mark.parametrize("kwargs,match", [({"dolly_profile": "cubic"}, "unknown dolly profile 'cubic'"),
                                          ({"ranges": {"dolly_in": [1.5, 1.5]}}, "outside")])
def test_bad_dolly_settings_are_clear_errors(kwargs, match):
    args = {"ranges": {"dolly_in": [0.1, 0.1]}, **kwargs}
    with pytest.raises(TrajectoryError, match=match):
        build_views("dynamic", 9, PIVOT, ["dolly_in"], args.pop("ranges"), **args)
