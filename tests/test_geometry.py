"""Cameras, trajectories and splatting against closed forms, OpenCV and the synthetic scene."""
import cv2
import numpy as np
import pytest
import torch

from reangle.geometry.camera import camera_center, intrinsics, look_at, project, transform, unproject
from reangle.geometry.splat import dilate_holes, splat, warp_video
from reangle.geometry.trajectory import MOTIONS, TrajectoryError, build_views, motion_pose, motion_trajectory
from reangle.io.synthetic import SyntheticScene

EYE = torch.eye(4, dtype=torch.float64)
RANGES = {m: [5.0, 10.0] if m.startswith("orbit") else [0.1, 0.2] for m in MOTIONS}


def translation(x=0.0, y=0.0, z=0.0):
    """World-to-camera of a camera moved by (x, y, z) without rotation."""
    w2c = EYE.clone()
    w2c[:3, 3] = -torch.tensor([x, y, z], dtype=torch.float64)
    return w2c


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_identity_pose_returns_input_exactly(mode):
    torch.manual_seed(0)
    frames = torch.rand(3, 3, 48, 64)
    depth = torch.rand(3, 48, 64) * 300 + 10
    K = intrinsics(48, 64)
    out, mask = warp_video(frames, depth, K, EYE, EYE, mode=mode, hole_dilation=5)
    assert mask.all()
    assert torch.equal(out, frames)


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_plane_moved_sideways_shifts_by_f_t_over_z(mode):
    torch.manual_seed(0)
    h, w, z = 40, 64, 130.0
    K = intrinsics(h, w, focal=260.0, reference_height=80)  # f = 130 px
    frames = torch.rand(2, 3, h, w)
    depth = torch.full((2, h, w), z)
    t = 3.0  # camera moves right by t -> the image moves left by f * t / z = 3 px
    out, mask = warp_video(frames, depth, K, EYE, translation(x=t), mode=mode)
    shift = 3
    assert torch.allclose(out[..., : w - shift], frames[..., shift:], atol=1e-5)
    assert mask[..., : w - shift].all() and not mask[..., w - shift:].any()


def test_subpixel_shift_interpolates_linear_ramp_exactly():
    h, w, z = 16, 40, 100.0
    K = intrinsics(h, w, focal=100.0, reference_height=h)  # f = 100 px
    ramp = torch.arange(w, dtype=torch.float32).expand(1, 3, h, w) / w
    depth = torch.full((1, h, w), z)
    out, mask = warp_video(ramp, depth, K, EYE, translation(x=2.5), mode="bilinear")  # 2.5 px left
    expected = (torch.arange(w, dtype=torch.float32) + 2.5) / w
    interior = slice(1, w - 4)
    assert mask[0, :, interior].all()
    assert torch.allclose(out[0, 0, :, interior], expected[interior].expand(h, -1), atol=1e-5)


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
def test_near_object_hides_far_one(mode):
    h, w = 40, 60
    K = intrinsics(h, w, focal=100.0, reference_height=h)
    frames = torch.zeros(1, 3, h, w)
    frames[:, 0] = 1.0                                     # far background: red
    depth = torch.full((1, h, w), 400.0)
    frames[:, :, 15:25, 20:30] = torch.tensor([0.0, 1.0, 0.0]).view(1, 3, 1, 1)  # near square: green
    depth[:, 15:25, 20:30] = 50.0
    # Camera moves right by 5: the near square shifts 10 px left, the background 1.25 px.
    out, mask = warp_video(frames, depth, K, EYE, translation(x=5.0), mode=mode)
    square = out[0, :, 16:24, 11:19]
    assert torch.allclose(square, torch.tensor([0.0, 1.0, 0.0]).view(3, 1, 1).expand_as(square))
    assert mask[0, 16:24, 11:19].all()


def test_projection_agrees_with_opencv():
    rng = np.random.default_rng(0)
    points = rng.uniform([-50, -50, 80], [50, 50, 300], size=(200, 3))
    rvec = rng.normal(size=3) * 0.2
    tvec = rng.normal(size=3) * 10
    K = intrinsics(480, 720)
    expected, _ = cv2.projectPoints(points, rvec, tvec, K.numpy(), None)
    w2c = EYE.clone()
    w2c[:3, :3] = torch.from_numpy(cv2.Rodrigues(rvec)[0])
    w2c[:3, 3] = torch.from_numpy(tvec)
    uv, z = project(transform(torch.from_numpy(points), w2c), K)
    np.testing.assert_allclose(uv.numpy(), expected[:, 0], rtol=1e-9, atol=1e-8)
    assert (z > 0).all()


def test_unproject_then_project_is_identity():
    K = intrinsics(12, 16)
    depth = torch.rand(2, 12, 16, dtype=torch.float64) * 100 + 1
    uv, z = project(unproject(depth, K), K)
    v, u = torch.meshgrid(torch.arange(12.0), torch.arange(16.0), indexing="ij")
    assert torch.allclose(uv[0], torch.stack([u, v], -1).view(-1, 2).double())
    assert torch.allclose(z, depth.flatten(1))


def test_look_at_is_a_rotation_looking_at_the_target():
    eye = torch.tensor([30.0, -20.0, 10.0], dtype=torch.float64)
    target = torch.tensor([0.0, 5.0, 200.0], dtype=torch.float64)
    w2c = look_at(eye, target)
    rot = w2c[:3, :3]
    assert torch.allclose(rot @ rot.T, torch.eye(3, dtype=torch.float64), atol=1e-12)
    assert torch.isclose(torch.det(rot), torch.tensor(1.0, dtype=torch.float64))
    in_cam = transform(target[None], w2c)[0]
    assert torch.allclose(in_cam[:2], torch.zeros(2, dtype=torch.float64), atol=1e-9) and in_cam[2] > 0
    assert torch.allclose(camera_center(w2c), eye)


@pytest.mark.parametrize("motion", MOTIONS)
def test_every_motion_keeps_the_pivot_at_the_image_centre(motion):
    pivot = torch.tensor([[0.0, 0.0, 200.0]], dtype=torch.float64)
    K = intrinsics(480, 720)
    for magnitude in (3.0, 12.0) if motion.startswith("orbit") else (0.1, 0.3):
        uv, z = project(transform(pivot, motion_pose(motion, magnitude, 200.0)), K)
        assert torch.allclose(uv[0], K[:2, 2], atol=1e-9) and z[0] > 0


@pytest.mark.parametrize("motion,axis,sign", [("orbit_left", 0, -1), ("orbit_right", 0, 1), ("orbit_up", 1, -1),
                                              ("orbit_down", 1, 1), ("dolly_in", 2, 1), ("dolly_out", 2, -1)])
def test_motions_move_the_camera_the_named_way(motion, axis, sign):
    center = camera_center(motion_pose(motion, 10.0 if motion.startswith("orbit") else 0.2, 200.0))
    assert sign * center[axis] > 1.0  # OpenCV axes: x right, y down, z forward


@pytest.mark.parametrize("motion", MOTIONS)
def test_dynamic_trajectory_starts_at_input_and_moves_monotonically(motion):
    poses = motion_trajectory(motion, 10.0 if motion.startswith("orbit") else 0.2, 13, 200.0, dynamic=True)
    assert torch.allclose(poses[0], EYE, atol=1e-12)
    travelled = (camera_center(poses) - camera_center(poses[:1])).norm(dim=-1)
    assert (travelled.diff() > 0).all()
    static = motion_trajectory(motion, 10.0, 5, 200.0, dynamic=False)
    assert torch.equal(static[0], static[-1])


def test_default_view_sets_and_seeded_magnitudes():
    static = build_views("static", 9, 200.0, MOTIONS, RANGES, seed=3)
    dynamic = build_views("dynamic", 9, 200.0, MOTIONS, RANGES, seed=3)
    assert len(static) == 12 and len(dynamic) == 6
    assert [v.magnitude for v in static] == [v.magnitude for v in build_views("static", 9, 200.0, MOTIONS, RANGES, seed=3)]
    assert all(RANGES[v.motion][0] <= v.magnitude <= RANGES[v.motion][1] for v in static)
    assert dynamic[0].prompt("a cat") == "CAMERA_ORBIT_LEFT Camera movement orbit left, a cat"
    assert static[0].prompt("a cat") == "a cat"


def test_custom_views_from_motion_or_poses(tmp_path):
    poses = torch.stack([translation(x=float(i)) for i in range(9)]).numpy()
    np.save(tmp_path / "poses.npy", poses)
    custom = [{"name": "mine", "motion": "orbit_up", "magnitude": 7.5},
              {"name": "file", "poses": str(tmp_path / "poses.npy")},
              {"name": "one", "poses": translation(z=5.0).tolist()}]
    views = build_views("static", 9, 200.0, [], RANGES, custom=custom, only_custom=True)
    assert [v.name for v in views] == ["mine", "file", "one"]
    assert torch.allclose(views[0].w2c[0], motion_pose("orbit_up", 7.5, 200.0))
    assert torch.allclose(views[1].w2c, torch.from_numpy(poses))
    assert views[2].w2c.shape == (9, 4, 4)


@pytest.mark.parametrize("bad,match", [
    ({"name": "x", "motion": "spin", "magnitude": 3}, "unknown camera motion 'spin'"),
    ({"name": "x", "poses": [[1, 0], [0, 1]]}, "poses must be"),
    ({"name": "x"}, "needs 'motion'"),
    ({"name": "x", "motion": "orbit_up", "magnitude": 3, "speed": 2}, "unknown key"),
])
def test_bad_custom_views_are_clear_errors(bad, match):
    with pytest.raises(TrajectoryError, match=match):
        build_views("static", 9, 200.0, [], RANGES, custom=[bad])


def test_unknown_motion_in_list_is_an_error():
    with pytest.raises(TrajectoryError, match="unknown camera motion 'orbit_sideways'"):
        build_views("static", 9, 200.0, ["orbit_sideways"], RANGES)


def test_hole_dilation_grows_holes_by_the_kernel():
    mask = torch.ones(1, 9, 9, dtype=torch.bool)
    mask[0, 4, 4] = False
    grown = dilate_holes(mask, 5)
    assert (~grown).sum() == 25 and not grown[0, 2:7, 2:7].any()
    assert torch.equal(dilate_holes(mask, 1), mask)


@pytest.mark.parametrize("mode", ["bilinear", "nearest"])
@pytest.mark.parametrize("motion,magnitude", [("orbit_left", 12.0), ("orbit_down", 8.0), ("dolly_in", 0.15),
                                              ("dolly_out", 0.1)])
def test_warping_the_synthetic_scene_matches_rendering_it(motion, magnitude, mode):
    h, w = 240, 360
    K = intrinsics(h, w)
    scene = SyntheticScene(seed=0)
    times = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    frames, depth = scene.render(EYE, K, h, w, times)
    target = motion_pose(motion, magnitude, 200.0)
    truth, _ = scene.render(target, K, h, w, times)
    warped, mask = warp_video(frames, depth, K, EYE, target, mode=mode, hole_dilation=5)
    agree = ((warped - truth).abs().amax(dim=1) < 0.1) & mask
    fraction = agree.sum().item() / mask.sum().item()
    print(f"{motion} {magnitude}: {fraction:.4f} of {mask.float().mean().item():.2%} visible pixels agree")
    assert mask.float().mean() > 0.5
    assert fraction >= 0.95


def test_warp_is_the_same_for_any_chunking_blocking_and_thread_count():
    torch.manual_seed(0)
    frames, depth = torch.rand(3, 3, 40, 64), torch.rand(3, 40, 64) * 100 + 100
    K, target = intrinsics(40, 64), motion_pose("orbit_right", 10.0, 200.0)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        reference = warp_video(frames, depth, K, EYE, target, hole_dilation=3, chunk_frames=3)
        torch.set_num_threads(2)
        threaded = warp_video(frames, depth, K, EYE, target, hole_dilation=3, chunk_frames=1)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(reference[1], threaded[1])
    assert torch.allclose(reference[0], threaded[0], atol=1e-6)
    src_to_dst = target.expand(3, 4, 4)
    whole = splat(frames, depth, K, src_to_dst, block_points=None)
    blocked = splat(frames, depth, K, src_to_dst, block_points=64 * 7)  # 7 rows per block
    assert torch.equal(whole[1], blocked[1]) and torch.allclose(whole[0], blocked[0], atol=1e-6)


@pytest.mark.parametrize("forward", [15.0, 45.0])  # magnification 100/85 = 1.18 and 100/55 = 1.82
def test_nearest_splat_leaves_no_cracks_where_the_warp_magnifies(forward):
    """A fronto-parallel plane filling the view, the camera dollied in: every target pixel sees the
    plane, and shows the source pixel nearest to where it came from (closed form)."""
    h, w, z = 60, 90, 100.0
    K = intrinsics(h, w, focal=100.0, reference_height=h)
    torch.manual_seed(0)
    frames = torch.rand(1, 3, h, w)
    out, mask = warp_video(frames, torch.full((1, h, w), z), K, EYE, translation(z=forward), mode="nearest",
                           hole_dilation=5)
    assert mask.all()
    scale = (z - forward) / z  # target pixel p came from c + (p - c) * scale
    cx, cy = K[0, 2].item(), K[1, 2].item()
    xs = ((torch.arange(w) - cx) * scale + cx).round().long()
    ys = ((torch.arange(h) - cy) * scale + cy).round().long()
    expected = frames[0][:, ys][:, :, xs]
    assert (out[0] == expected).all(dim=0).float().mean() > 0.97  # all but exact half-pixel ties
