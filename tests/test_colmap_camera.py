"""Camera accuracy with COLMAP (eval.camera.estimator=colmap): the RotErr / TransErr / CamMC formulas on
closed-form paths, and pycolmap's estimate on the synthetic scene rendered along a known path (small
errors) and scored against perturbed paths (errors grow with the perturbation)."""
import math

import pytest
import torch
from omegaconf import OmegaConf

from eval.colmap_camera import ColmapError, colmap_trajectory, trajectory_errors
from reangle.geometry.camera import intrinsics
from reangle.geometry.trajectory import motion_trajectory
from reangle.io.synthetic import SyntheticScene
from reangle.io.video import import_decord

import_decord()  # loaded before pycolmap, as in `python -m eval`: COLMAP must still read the frames

H, W, N = 480, 720, 12
PIVOT = 200.0


def _orbit(degrees, motion="orbit_left"):
    return motion_trajectory(motion, degrees, N, PIVOT, dynamic=True)


def _rotation_y(deg):
    a = math.radians(deg)
    return torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]],
                        dtype=torch.float64)


def test_errors_are_zero_up_to_the_world_frame_and_scale():
    gt = _orbit(20.0)
    similarity = torch.eye(4, dtype=torch.float64)  # another world frame, 3.7 times larger
    similarity[:3, :3] = _rotation_y(40.0) @ torch.tensor([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]], dtype=torch.float64)
    similarity[:3, 3] = torch.tensor([5.0, -2.0, 11.0])
    est = gt @ torch.linalg.inv(similarity)  # cam_from_world' = cam_from_world inv(S)
    est[:, :3, 3] *= 3.7
    errors = trajectory_errors(est, gt)
    assert errors.rot_err_deg == pytest.approx(0, abs=1e-5) and errors.trans_err == pytest.approx(0, abs=1e-9)
    assert errors.cam_mc == pytest.approx(0, abs=1e-9) and errors.registered == 1.0


def test_errors_by_hand():
    gt = torch.eye(4, dtype=torch.float64).repeat(3, 1, 1)
    gt[1, 0, 3], gt[2, 0, 3] = 1.0, 2.0  # a pure sideways path; extent 2
    est = gt.clone()
    est[2, :3, :3] = _rotation_y(10.0)  # frame 2 turned by 10 degrees
    est[1, 1, 3] = 0.5                   # frame 1 off by 0.5 (0.25 after the scale 1 / 2)
    errors = trajectory_errors(est, gt)
    assert errors.rot_err_deg == pytest.approx(10.0)
    # normalised: est extents max(|(1, .5, 0)|, |(2, 0, 0)|) = 2 -> frame 1 error |(0.5, 0.25) - (0.5, 0)| = 0.25
    assert errors.trans_err == pytest.approx(0.25)
    rotation_part = (est[2, :3, :3] - gt[2, :3, :3]).norm()
    assert errors.cam_mc == pytest.approx(0.25 + rotation_part.item())
    est[1] = math.nan  # frame 1 not registered: left out of the sums
    partial = trajectory_errors(est, gt)
    assert partial.registered == pytest.approx(2 / 3) and partial.rot_err_deg == pytest.approx(10.0)
    est[0] = math.nan
    with pytest.raises(ColmapError, match="first frame"):
        trajectory_errors(est, gt)


@pytest.fixture(scope="module")
def rendered():
    """The synthetic scene (static: time 0) along a 20-degree orbit to the left, 480 x 720, 12 frames."""
    K = intrinsics(H, W)
    frames, _ = SyntheticScene().render(_orbit(20.0), K, H, W, torch.zeros(N))
    return frames.float(), K


def test_colmap_recovers_the_rendered_path_and_errors_grow_with_perturbation(rendered):
    frames, K = rendered
    estimate = colmap_trajectory(frames, K)
    true = trajectory_errors(estimate, _orbit(20.0))
    assert true.registered == 1.0
    assert true.rot_err_deg / N < 2.5 and true.trans_err / N < 0.25  # per frame: degrees, fractions of the extent
    errors = [trajectory_errors(estimate, path) for path in (_orbit(26.0), _orbit(35.0), _orbit(20.0, "orbit_right"))]
    rot = [true.rot_err_deg] + [e.rot_err_deg for e in errors]
    mc = [true.cam_mc] + [e.cam_mc for e in errors]
    assert rot == sorted(rot) and mc == sorted(mc)
    assert errors[-1].rot_err_deg > 10 * true.rot_err_deg  # the opposite direction


def test_colmap_estimator_in_the_evaluation(rendered):
    from eval.evaluate import evaluate
    from eval.registry import EvalInputs

    frames, K = rendered
    settings = OmegaConf.create({"batch_size": 4, "models": {}, "camera": {"estimator": "colmap",
                                                                           "mapper": "incremental"}})
    inputs = EvalInputs(videos={"orbit_left_0": frames}, fps=8.0, mode="dynamic", settings=settings,
                        cameras={"orbit_left_0": {"K": K, "w2c": _orbit(20.0)}})
    result = evaluate(inputs, ["camera_rot_err", "camera_trans_err", "camera_cammc"], device=torch.device("cpu"),
                      cache_dir="unused", progress=False)
    detail = result.details["camera_cammc"]["orbit_left_0"]
    assert result.errors == {} and detail["registered"] == 1.0
    assert result.aggregate["camera_rot_err"] == pytest.approx(detail["rot_err_deg"])
    assert result.aggregate["camera_cammc"] == pytest.approx(detail["cam_mc"])
    assert result.aggregate["camera_rot_err"] / N < 2.5
    static = EvalInputs(videos={"v": frames}, fps=8.0, mode="static", settings=settings,
                        cameras={"v": {"K": K, "w2c": _orbit(20.0)}})
    failed = evaluate(static, ["camera_rot_err"], device=torch.device("cpu"), cache_dir="unused", progress=False)
    assert "in static mode each view's camera is fixed" in failed.errors["camera_rot_err"]
