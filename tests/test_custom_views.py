"""``views.custom`` is checked before any work: safe names, rigid finite poses, documented magnitudes."""
import numpy as np
import pytest
import torch

from reangle.config import load_config
from reangle.data import build as build_module
from reangle.data.build import build_omega
from reangle.geometry.camera import look_at
from reangle.geometry.trajectory import MAGNITUDE_RANGES, MAX_CAMERA_DISTANCE, TrajectoryError, build_views

PIVOT = 200.0
RANGES = {"orbit_left": [10.0, 15.0]}


def views(custom, num_frames=5):
    return build_views("static", num_frames, PIVOT, [], RANGES, custom=custom, only_custom=True)


def orbit_poses(num_frames=5):
    """A real camera path as a user would export it: look-at poses around the pivot, saved as float32."""
    angles = torch.linspace(0, 0.3, num_frames, dtype=torch.float64)
    eyes = torch.stack([PIVOT * torch.sin(angles), torch.zeros_like(angles), PIVOT * (1 - torch.cos(angles))], -1)
    return look_at(eyes, torch.tensor([0.0, 0.0, PIVOT], dtype=torch.float64).expand_as(eyes)).float().numpy()


def test_float32_camera_paths_and_motion_views_at_the_range_ends_are_accepted(tmp_path):
    np.save(tmp_path / "path.npy", orbit_poses())
    got = views([{"name": "path_1.v2", "poses": str(tmp_path / "path.npy")},
                 {"name": "wide", "motion": "orbit_up", "magnitude": MAGNITUDE_RANGES["orbit_up"][1]},
                 {"name": "close", "motion": "dolly_in", "magnitude": MAGNITUDE_RANGES["dolly_in"][1]}])
    assert [v.name for v in got] == ["path_1.v2", "wide", "close"]


@pytest.mark.parametrize("name", ["../../x", "/tmp/abs", "a/b", ".hidden", "..", "x" * 65, "a b", 7])
def test_view_names_that_are_not_safe_file_names_are_refused(name):
    with pytest.raises(TrajectoryError, match="not a safe file name"):
        views([{"name": name, "motion": "orbit_left", "magnitude": 10.0}])


def _bad(kind):
    pose = torch.from_numpy(orbit_poses()).double()
    if kind == "nan":
        pose[2, 0, 3] = float("nan")
    elif kind == "scaled":
        pose[:, :3, :3] *= 2
    elif kind == "sheared":
        pose[:, 0, 1] += 0.2
    elif kind == "reflected":
        pose[:, 0, :3] *= -1
    elif kind == "last_row":
        pose[:, 3, 0] = 0.5
    elif kind == "far":
        pose[:, 2, 3] -= (MAX_CAMERA_DISTANCE + 0.5) * PIVOT
    return pose.tolist()


@pytest.mark.parametrize("kind,match", [("nan", "pose 2 holds NaN"), ("scaled", "not orthonormal"),
                                        ("sheared", "not orthonormal"), ("reflected", "a reflection"),
                                        ("last_row", "last row"), ("far", "more than 2.0 x camera.pivot_distance")])
def test_poses_that_are_not_rigid_camera_matrices_are_refused(kind, match):
    with pytest.raises(TrajectoryError, match=match):
        views([{"name": "bad", "poses": _bad(kind)}])


@pytest.mark.parametrize("motion,magnitude", [("orbit_left", 120.0), ("orbit_up", -5.0), ("dolly_in", 1.0),
                                              ("dolly_out", 3.0), ("orbit_down", float("nan"))])
def test_magnitudes_outside_the_documented_ranges_are_refused(motion, magnitude):
    with pytest.raises(TrajectoryError, match="outside"):
        views([{"name": "v", "motion": motion, "magnitude": magnitude}])
    with pytest.raises(TrajectoryError, match="outside"):
        build_views("static", 5, PIVOT, [motion], {motion: [magnitude, magnitude]})


def test_bad_custom_views_are_refused_before_depth_or_warping(tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("expensive work started before the views were checked")
    monkeypatch.setattr(build_module, "cached_depth", fail)
    monkeypatch.setattr(build_module, "warp_video", fail)
    base = [f"run.cache_dir={tmp_path / 'cache'}", "data.height=64", "data.width=96", "data.num_frames=5",
            "views.only_custom=true"]
    for custom, match in [("[{name: ../../escape, motion: orbit_left, magnitude: 10}]", "safe file name"),
                          ("[{name: v, poses: " + str(_bad("nan")).replace("nan", ".nan") + "}]", "NaN")]:
        with pytest.raises(TrajectoryError, match=match):
            build_omega(load_config(["configs/presets/tiny.yaml"], [*base, f"views.custom={custom}"]))
    assert not (tmp_path / "escape").exists()
