"""Depth from .npy files honours depth.output like Depth Anything does, and refuses bad values."""
import numpy as np
import pytest
import torch

from reangle.geometry.depth import DepthAnything, DepthError, NpyDepth


def _save(folder, maps):
    folder.mkdir(exist_ok=True)
    for i, m in enumerate(maps):
        np.save(folder / f"{i:03d}.npy", np.asarray(m, np.float32))
    return str(folder)


def test_disparity_files_are_converted_like_depth_anything_output(tmp_path):
    disparity = np.array([[0.0, 1e-7, 0.5], [2.0, 100.0, 1e9]], np.float32)
    folder = _save(tmp_path / "d", [disparity])
    depth = NpyDepth(folder)(torch.zeros(1, 3, 2, 3))  # the default output is disparity, as in configs/base.yaml
    expected = np.clip(10000.0 / np.maximum(disparity, 1e-5), 1e-4, 1e4)  # the released code's conversion
    assert torch.allclose(depth[0], torch.from_numpy(expected.astype(np.float32)))
    as_depth = NpyDepth(folder, output="depth", clip=(1e-4, 1e10))
    with pytest.raises(DepthError, match="depth <= 0"):  # these values are not depth
        as_depth(torch.zeros(1, 3, 2, 3))


def test_npy_and_depth_anything_share_the_conversion(tmp_path, monkeypatch):
    prediction = torch.rand(2, 28, 42) * 10
    model = DepthAnything(model="tiny", input_size=28, disparity_scale=50.0, clip=(0.5, 80.0))
    model._net = lambda pixel_values: type("Out", (), {"predicted_depth": prediction})()
    folder = _save(tmp_path / "p", prediction.numpy())
    from_files = NpyDepth(folder, disparity_scale=50.0, clip=(0.5, 80.0))(torch.zeros(2, 3, 28, 42))
    assert torch.allclose(model(torch.rand(2, 3, 28, 42)), from_files)


@pytest.mark.parametrize("output,bad,match", [("disparity", np.nan, "NaN or infinite"),
                                              ("depth", np.inf, "NaN or infinite"),
                                              ("depth", 0.0, "depth <= 0"), ("depth", -3.0, "depth <= 0")])
def test_bad_values_are_clear_errors_naming_the_file(tmp_path, output, bad, match):
    maps = np.full((3, 4, 5), 7.0, np.float32)
    maps[2, 1, 1] = bad
    folder = _save(tmp_path / "b", maps)
    with pytest.raises(DepthError, match=f"002.npy holds {match}"):
        NpyDepth(folder, output=output)(torch.zeros(3, 3, 4, 5))


def test_unknown_output_and_key_changes(tmp_path):
    folder = _save(tmp_path / "k", [np.ones((2, 2))])
    with pytest.raises(DepthError, match="depth.output"):
        NpyDepth(folder, output="inverse")
    assert NpyDepth(folder).key() != NpyDepth(folder, output="depth").key()
