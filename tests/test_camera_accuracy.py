"""Camera accuracy: pose errors and Umeyama alignment against closed forms and scipy; DUSt3R end to end."""
import math

import pytest
import torch
from scipy.spatial.transform import Rotation

from eval.camera_accuracy import (camera_accuracy, estimate_relative_poses, point_map_input, pose_errors,
                                  relative_pose_from_point_maps, rotation_error_deg, translation_direction_error_deg,
                                  umeyama)
from reangle.geometry.camera import intrinsics, transform, unproject
from reangle.geometry.splat import relative_pose
from reangle.nets.dust3r import PairPrediction
from reangle.geometry.trajectory import motion_trajectory
from reangle.nets.dust3r import load_dust3r

TINY_DUST3R = dict(enc_embed_dim=32, enc_depth=2, enc_num_heads=2, dec_embed_dim=32, dec_depth=2,
                   dec_num_heads=2, head_type="linear", img_size=(32, 32))


def _rotations(n, seed):
    return torch.from_numpy(Rotation.random(n, random_state=seed).as_matrix())


def _poses(rot, trans):
    pose = torch.eye(4, dtype=torch.float64).repeat(len(rot), 1, 1)
    pose[:, :3, :3], pose[:, :3, 3] = rot, trans
    return pose


def test_rotation_error_is_zero_for_equal_rotations_and_gives_back_a_known_offset():
    R = _rotations(6, seed=0)
    assert rotation_error_deg(R, R).abs().max() < 1e-5
    angles = torch.tensor([0.5, 3.0, 10.0, 45.0, 120.0, 179.0], dtype=torch.float64)
    axes = torch.randn(6, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    offsets = torch.from_numpy(Rotation.from_rotvec(
        (torch.nn.functional.normalize(axes, dim=-1)
         * torch.deg2rad(angles)[:, None]).numpy()).as_matrix())
    torch.testing.assert_close(rotation_error_deg(offsets @ R, R), angles, atol=1e-6, rtol=0)
    torch.testing.assert_close(rotation_error_deg(R @ offsets, R), angles, atol=1e-6, rtol=0)


def test_translation_direction_error_ignores_scale_and_is_nan_without_translation():
    t = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 0.0]], dtype=torch.float64)
    est = torch.tensor([[5.0, 5.0, 0.0], [0.0, 0.1, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    err = translation_direction_error_deg(est, t)
    torch.testing.assert_close(err[:2], torch.tensor([45.0, 0.0], dtype=torch.float64), atol=1e-6, rtol=0)
    assert math.isnan(err[2])


def test_umeyama_recovers_a_known_similarity():
    g = torch.Generator().manual_seed(0)
    src = torch.randn(2, 200, 3, generator=g, dtype=torch.float64) * 10
    R = _rotations(2, seed=1)
    scale = torch.tensor([2.5, 0.3], dtype=torch.float64)
    t = torch.tensor([[1.0, -2.0, 30.0], [0.0, 4.0, -1.0]], dtype=torch.float64)
    dst = scale[:, None, None] * src @ R.transpose(-1, -2) + t[:, None]
    weights = torch.rand(2, 200, generator=g, dtype=torch.float64)
    weights[:, :20] = 0.0
    dst[:, :20] += 100.0   # outliers without weight change nothing
    s_est, R_est, t_est = umeyama(src, dst, weights)
    torch.testing.assert_close(s_est, scale)
    torch.testing.assert_close(R_est, R)
    torch.testing.assert_close(t_est, t)


def test_umeyama_rotation_equals_scipy_align_vectors_on_noisy_points():
    g = torch.Generator().manual_seed(2)
    src = torch.randn(100, 3, generator=g, dtype=torch.float64)
    dst = src @ _rotations(1, seed=3)[0].T + 0.2 * torch.randn(100, 3, generator=g, dtype=torch.float64)
    weights = torch.rand(100, generator=g, dtype=torch.float64)
    _, R, t = umeyama(src, dst, weights, with_scale=False)
    mean = lambda x: (weights[:, None] * x).sum(0) / weights.sum()  # noqa: E731
    reference, _ = Rotation.align_vectors((dst - mean(dst)).numpy(), (src - mean(src)).numpy(), weights.numpy())
    torch.testing.assert_close(R, torch.from_numpy(reference.as_matrix()))
    torch.testing.assert_close(t, mean(dst) - R @ mean(src))


def test_relative_pose_from_point_maps_is_exact_for_exact_maps_at_another_scale():
    g = torch.Generator().manual_seed(4)
    rel_gt = _poses(_rotations(3, seed=5), torch.randn(3, 3, generator=g, dtype=torch.float64))
    points_a = torch.randn(3, 500, 3, generator=g, dtype=torch.float64) + torch.tensor([0.0, 0.0, 5.0])
    points_b = 0.37 * transform(points_a, rel_gt)   # camera b's map in its own, different scale
    rel = relative_pose_from_point_maps(points_a, points_b, torch.ones(3, 500))
    torch.testing.assert_close(rel, rel_gt)


def test_identical_trajectories_give_zero_errors_and_offsets_come_back():
    rel_gt = motion_trajectory("orbit_left", 20.0, 9, 200.0, dynamic=True)
    exact = pose_errors(rel_gt, rel_gt)
    assert exact.rotation_deg.abs().max() < 1e-5 and exact.translation_error.max() < 1e-9
    assert math.isnan(exact.translation_direction_deg[0])   # frame 0 is the input pose: no translation
    assert exact.translation_direction_deg[1:].abs().max() < 1e-5 and exact.scale == pytest.approx(1.0)
    assert exact.summary()["translation_direction_error_deg"] < 1e-5

    offset = torch.from_numpy(Rotation.from_euler("y", 7.0, degrees=True).as_matrix())
    rel_est = rel_gt.clone()
    rel_est[:, :3, :3] = offset @ rel_gt[:, :3, :3]
    rel_est[:, :3, 3] *= 0.01                            # DUSt3R's own units
    errors = pose_errors(rel_est, rel_gt)
    torch.testing.assert_close(errors.rotation_deg, torch.full((9,), 7.0, dtype=torch.float64))
    assert errors.scale == pytest.approx(100.0) and errors.translation_error.max() < 1e-9


class ExactPointMaps(torch.nn.Module):
    """A DUSt3R stand-in with exact geometry: image c (constant value c / C) is camera ``w2c[c]``
    seeing a wavy surface; it returns both point maps in the first image's camera."""

    def __init__(self, w2c):
        super().__init__()
        self.w2c = w2c
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def _camera_index(self, img_pm1):
        return ((img_pm1[:, 0, 0, 0] + 1) / 2 * len(self.w2c)).round().long()

    def forward(self, img1_pm1, img2_pm1):
        h, w = img1_pm1.shape[-2:]
        rows, cols = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
        depth = (300.0 + 20 * torch.sin(cols / 3.0) + 15 * torch.cos(rows / 4.0)).double()
        points = unproject(depth, intrinsics(h, w))                      # [h*w, 3] in the own camera
        c1, c2 = self._camera_index(img1_pm1), self._camera_index(img2_pm1)
        to_1 = relative_pose(self.w2c[c2], self.w2c[c1])                 # camera of image 2 -> camera of image 1
        pts_1, pts_2 = points.expand(len(c1), -1, -1), transform(points, to_1)
        conf = torch.full((len(c1), h, w), 2.0)
        return PairPrediction(pts_1.view(-1, h, w, 3).float(), conf, pts_2.view(-1, h, w, 3).float(), conf)


def test_relative_poses_from_exact_point_maps_are_the_cameras():
    w2c = torch.cat([torch.eye(4, dtype=torch.float64)[None],
                     motion_trajectory("orbit_left", 15.0, 3, 200.0, dynamic=True)[1:],
                     motion_trajectory("dolly_in", 0.3, 2, 200.0, dynamic=False)])
    frames = (torch.arange(len(w2c)) / len(w2c)).view(-1, 1, 1, 1).expand(-1, 3, 48, 64)
    first, second = torch.tensor([0, 0, 1, 3]), torch.tensor([1, 2, 3, 2])
    rel = estimate_relative_poses(ExactPointMaps(w2c), frames[first], frames[second], size=64, batch_size=3)
    torch.testing.assert_close(rel, relative_pose(w2c[first], w2c[second]), atol=1e-3, rtol=1e-4)


def test_point_map_input_is_a_multiple_of_the_patch_in_minus_one_to_one():
    frames = torch.rand(2, 3, 480, 720)
    out = point_map_input(frames)
    assert out.shape == (2, 3, 336, 512) and out.min() >= -1 and out.max() <= 1


def test_camera_accuracy_runs_end_to_end_on_a_tiny_random_dust3r():
    torch.manual_seed(0)
    model = load_dust3r(TINY_DUST3R)
    frames_a, frames_b = torch.rand(3, 3, 48, 64), torch.rand(3, 3, 48, 64)
    w2c_a = torch.eye(4, dtype=torch.float64).repeat(3, 1, 1)
    w2c_b = motion_trajectory("orbit_right", 10.0, 3, 200.0, dynamic=False)
    result = camera_accuracy(model, frames_a, frames_b, w2c_a, w2c_b, size=32, batch_size=2)
    for values in (result.rotation_deg, result.translation_direction_deg, result.translation_error):
        assert values.shape == (3,) and torch.isfinite(values).all()
    assert all(math.isfinite(v) for v in result.summary().values()) and math.isfinite(result.scale)
    with pytest.raises(ValueError, match="one camera per frame"):
        camera_accuracy(model, frames_a, frames_b, w2c_a[:2], w2c_b, size=32)
