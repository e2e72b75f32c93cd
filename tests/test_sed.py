"""SED / TSED: fundamental matrix against OpenCV, closed-form distances, thresholds, SIFT on a rendered pair."""
import math

import cv2
import numpy as np
import pytest
import torch

from eval.sed import (fundamental_matrix, match_descriptors, nearest_view_pairs, sed_tsed, sed_tsed_video,
                      sift_features, symmetric_epipolar_distance, tsed)
from reangle.geometry.camera import intrinsics, look_at, project, transform
from reangle.geometry.trajectory import motion_pose, motion_trajectory
from reangle.io.synthetic import SyntheticScene

K = intrinsics(240, 360, focal=260.0)


def _two_cameras():
    eyes = torch.tensor([[0.0, 0.0, 0.0], [40.0, -15.0, 10.0]], dtype=torch.float64)
    return look_at(eyes, torch.tensor([[5.0, 0.0, 200.0], [0.0, 5.0, 210.0]], dtype=torch.float64))


def _points(n=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, generator=g, dtype=torch.float64) * torch.tensor([160.0, 100.0, 150.0]) \
        + torch.tensor([-80.0, -50.0, 120.0])


def _project(points, w2c):
    return project(transform(points, w2c), K)[0]


def test_fundamental_matrix_equals_opencv_eight_point_on_exact_matches():
    w2c = _two_cameras()
    points = _points()
    x1, x2 = _project(points, w2c[0]), _project(points, w2c[1])
    F_cv, _ = cv2.findFundamentalMat(x1.numpy(), x2.numpy(), cv2.FM_8POINT)
    F = fundamental_matrix(K, K, w2c[0], w2c[1]).numpy()
    F_cv = F_cv / np.linalg.norm(F_cv)
    F_cv *= np.sign((F * F_cv).sum())
    np.testing.assert_allclose(F, F_cv, atol=1e-6)


def test_true_matches_have_zero_sed_in_both_directions():
    w2c = _two_cameras()
    points = _points(seed=1)
    x1, x2 = _project(points, w2c[0]), _project(points, w2c[1])
    assert symmetric_epipolar_distance(x1, x2, fundamental_matrix(K, K, w2c[0], w2c[1])).abs().max() < 1e-8
    assert symmetric_epipolar_distance(x2, x1, fundamental_matrix(K, K, w2c[1], w2c[0])).abs().max() < 1e-8


def test_rectified_pair_gives_the_vertical_offset_and_ignores_offsets_along_the_line():
    # A pure x baseline with equal K and orientation: epipolar lines are the image rows,
    # so a match moved by dy has SED exactly |dy| (both point-to-line distances are |dy|).
    w2c = torch.eye(4, dtype=torch.float64).repeat(2, 1, 1)
    w2c[1, 0, 3] = -30.0
    points = _points(seed=2)
    x1, x2 = _project(points, w2c[0]), _project(points, w2c[1])
    F = fundamental_matrix(K, K, w2c[0], w2c[1])
    dy = torch.linspace(-3.0, 3.0, len(points), dtype=torch.float64)
    shifted = x2 + torch.stack([torch.zeros_like(dy), dy], dim=-1)
    torch.testing.assert_close(symmetric_epipolar_distance(x1, shifted, F), dy.abs(), atol=1e-9, rtol=0)
    along = x2 + torch.stack([dy * 7, torch.zeros_like(dy)], dim=-1)
    assert symmetric_epipolar_distance(x1, along, F).abs().max() < 1e-9


def test_cameras_without_baseline_are_an_error():
    w2c = look_at(torch.zeros(2, 3, dtype=torch.float64), torch.tensor([[0.0, 0, 1], [1.0, 0, 1]], dtype=torch.float64))
    with pytest.raises(ValueError, match="share their centre"):
        fundamental_matrix(K, K, w2c[0], w2c[1])


def test_tsed_counts_pairs_with_enough_matches_and_a_small_median():
    medians = torch.tensor([0.5, 1.3, 1.0, 0.2, 1.25, float("nan")], dtype=torch.float64)
    counts = torch.tensor([20, 20, 5, 10, 30, 0])
    # consistent: pair 0 (0.5 px, 20 matches) and pair 3 (exactly T_m matches); pair 4 sits on T_e
    assert tsed(medians, counts) == pytest.approx(2 / 6)
    assert tsed(medians, counts, max_error=1.5, min_matches=5) == pytest.approx(5 / 6)
    assert tsed(medians, counts, max_error=0.1) == 0.0


def test_matching_keeps_mutual_unambiguous_neighbours():
    g = torch.Generator().manual_seed(0)
    desc2 = torch.rand(30, 128, generator=g) * 100
    order = torch.randperm(30, generator=g)[:20]
    desc1 = desc2[order] + torch.rand(20, 128, generator=g)
    desc1[0] = 0.5 * (desc2[3] + desc2[4])  # ambiguous: fails the ratio test
    idx = match_descriptors(desc1, desc2)
    expected = torch.stack([torch.arange(1, 20), order[1:]], dim=1)
    assert torch.equal(idx, expected)
    assert len(match_descriptors(desc1, desc2[:1])) == 0


def test_nearest_view_pairs_links_each_camera_to_its_closest():
    eyes = torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [10.0, 0, 0], [12.0, 0, 0]], dtype=torch.float64)
    w2c = look_at(eyes, eyes + torch.tensor([0.0, 0, 1], dtype=torch.float64))
    assert nearest_view_pairs(w2c) == [(0, 1), (2, 3)]


@pytest.fixture(scope="module")
def rendered_views():
    """Three views of the synthetic scene at time 0: the input camera and two small orbits."""
    K_img = intrinsics(240, 360)
    w2c = torch.stack([torch.eye(4, dtype=torch.float64), motion_pose("orbit_left", 4.0, 200.0),
                       motion_pose("orbit_up", 4.0, 200.0)])
    frames, _ = SyntheticScene(seed=0).render(w2c, K_img, 240, 360, torch.zeros(3))
    return frames, K_img, w2c


def test_sift_on_rendered_views_agrees_with_their_cameras(rendered_views):
    frames, K_img, w2c = rendered_views
    result = sed_tsed(frames, K_img, w2c, pairs=[(0, 1), (0, 2)])
    assert (result.num_matches >= 10).all()
    assert result.medians.max() < 1.0 and result.tsed == 1.0 and result.sed < 1.0
    # Wrong cameras (the two orbits swapped) put the same matches far from their epipolar lines.
    wrong = sed_tsed(frames, K_img, w2c[[0, 2, 1]], pairs=[(0, 1), (0, 2)])
    assert torch.equal(wrong.num_matches, result.num_matches)
    assert wrong.medians.min() > 2 * 1.25 and wrong.tsed == 0.0


def test_a_featureless_view_has_no_matches_and_is_inconsistent(rendered_views):
    frames, K_img, w2c = rendered_views
    blank = frames.clone()
    blank[1] = 0.0
    result = sed_tsed(blank, K_img, w2c, pairs=[(0, 1), (0, 2)])
    assert result.num_matches[0] == 0 and math.isnan(result.medians[0]) and result.tsed == 0.5
    assert result.sed == pytest.approx(result.medians[1].item())


@pytest.mark.parametrize("no_descriptors", [None, np.zeros((0, 128), np.float32)], ids=["opencv4", "opencv5"])
def test_sift_without_keypoints_reads_both_opencv_conventions(monkeypatch, no_descriptors):
    """OpenCV 4 answers ``((), None)`` for an image without keypoints, OpenCV 5.1 ``((), [0, 128])``."""
    class NoKeypoints:
        def detectAndCompute(self, gray, mask):
            return (), no_descriptors
    monkeypatch.setattr(cv2, "SIFT_create", NoKeypoints)
    (xy, desc), = sift_features(torch.zeros(1, 3, 32, 32))
    assert xy.shape == (0, 2) and xy.dtype == torch.float64
    assert desc.shape == (0, 128) and desc.dtype == torch.float32


def test_sed_tsed_checks_its_inputs(rendered_views):
    frames, K_img, w2c = rendered_views
    with pytest.raises(ValueError, match="one camera per image"):
        sed_tsed(frames, K_img, w2c[:2])
    with pytest.raises(ValueError, match="distinct view indices"):
        sed_tsed(frames, K_img, w2c, pairs=[(0, 0)])


def test_video_sed_pairs_views_at_each_time_step():
    K_img = intrinsics(120, 180)
    times = torch.tensor([0.0, 0.5])
    w2c = torch.stack([torch.eye(4, dtype=torch.float64).expand(2, 4, 4),
                       motion_trajectory("orbit_left", 5.0, 2, 200.0, dynamic=True)])   # [V=2, N=2]
    w2c[1, 0] = motion_pose("dolly_in", 0.1, 200.0)    # frame 0 of view 1 needs a baseline too
    scene = SyntheticScene(seed=1)
    videos = torch.stack([scene.render(w2c[v], K_img, 120, 180, times)[0] for v in range(2)])
    result = sed_tsed_video(videos, K_img, w2c)
    assert result.pairs == [(0, 1), (0, 1)] and result.frames == [0, 1]
    single = sed_tsed(videos[:, 1], K_img, w2c[:, 1])
    torch.testing.assert_close(result.medians[1:], single.medians)
    assert result.medians.max() < 1.0 and result.tsed == 1.0
    with pytest.raises(ValueError, match="distinct view indices"):
        sed_tsed_video(videos, K_img, w2c, pairs=[(0, 2)])
    with pytest.raises(ValueError, match="time steps"):
        sed_tsed_video(videos, K_img, w2c, frames=[2])
