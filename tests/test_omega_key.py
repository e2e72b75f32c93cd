"""The Omega key follows the contents of every file stage I reads: .npy depth maps and custom pose files."""
import numpy as np
import torch

from reangle.config import load_config
from reangle.data.build import omega_dir
from reangle.geometry.depth import NpyDepth, cached_depth
from reangle.io.video import write_mp4

TINY = "configs/presets/tiny.yaml"


def _config(tmp_path, *extra):
    return load_config([TINY], [f"run.cache_dir={tmp_path / 'cache'}", "data.height=32", "data.width=48",
                                "data.num_frames=5", *extra])


def _save_depth(folder, value):
    folder.mkdir(exist_ok=True)
    for i in range(5):
        np.save(folder / f"{i:02d}.npy", np.full((8, 12), value, np.float32))


def test_regenerated_npy_depth_changes_the_omega_and_depth_keys(tmp_path):
    video, depth_dir = tmp_path / "clip.mp4", tmp_path / "depth"
    write_mp4(torch.rand(5, 3, 32, 48), video)
    _save_depth(depth_dir, 1.0)
    cfg = _config(tmp_path, f"data.video={video}", "depth.source=npy", f"depth.npy_dir={depth_dir}")
    before = omega_dir(cfg)
    frames = torch.zeros(5, 3, 32, 48)
    first = cached_depth(NpyDepth(str(depth_dir)), frames, tmp_path / "cache")
    _save_depth(depth_dir, 2.0)  # same names, same sizes, rewritten in place
    assert omega_dir(cfg) != before
    second = cached_depth(NpyDepth(str(depth_dir)), frames, tmp_path / "cache")
    assert torch.allclose(second, first / 2)  # disparity doubled: depth halved, not the stale entry


def test_regenerated_custom_pose_file_changes_the_omega_key(tmp_path):
    poses = tmp_path / "poses.npy"
    np.save(poses, np.eye(4)[None].repeat(5, 0))
    cfg = _config(tmp_path, f"views.custom=[{{name: mine, poses: {poses}}}]", "views.only_custom=true")
    before = omega_dir(cfg)
    moved = np.eye(4)[None].repeat(5, 0)
    moved[:, 0, 3] = 3.0
    np.save(poses, moved)
    assert omega_dir(cfg) != before
