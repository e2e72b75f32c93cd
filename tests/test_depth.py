"""Depth sources: Depth Anything (tiny random model), .npy files, conversion and the cache."""
import numpy as np
import pytest
import torch

from reangle.geometry.depth import DepthAnything, DepthError, NpyDepth, cached_depth, disparity_to_depth


def test_disparity_to_depth_convention():
    disparity = torch.tensor([0.0, 1e-6, 1.0, 100.0, 1e9])
    depth = disparity_to_depth(disparity, scale=1e4, eps=1e-5, clip=(1e-4, 1e4))
    assert torch.allclose(depth, torch.tensor([1e4, 1e4, 1e4, 100.0, 1e-4]))


def test_tiny_depth_anything_is_batched_consistently():
    frames = torch.rand(5, 3, 40, 60)
    full = DepthAnything(model="tiny", output="depth", clip=(-1e9, 1e9), input_size=28, batch_size=5)(frames)
    split = DepthAnything(model="tiny", output="depth", clip=(-1e9, 1e9), input_size=28, batch_size=2)(frames)
    assert full.shape == (5, 40, 60)
    assert torch.allclose(full, split, atol=1e-5)
    assert not torch.allclose(full[0], full[1])  # it really looks at the frames


def test_depth_anything_rejects_unknown_output():
    with pytest.raises(DepthError, match="disparity"):
        DepthAnything(model="tiny", output="inverse")


def test_unloadable_model_is_a_clear_error(tmp_path):
    with pytest.raises(DepthError, match="cannot load Depth Anything"):
        DepthAnything(model=str(tmp_path / "missing-model"))(torch.rand(1, 3, 28, 28))


def test_npy_depth_reads_and_resizes(tmp_path):
    for i in range(4):
        np.save(tmp_path / f"{i:02d}.npy", np.full((10, 15), 10.0 * (i + 1), np.float32))
    depth = NpyDepth(str(tmp_path), indices=[1, 3], output="depth")(torch.zeros(2, 3, 20, 30))
    assert depth.shape == (2, 20, 30)
    assert torch.equal(depth[:, 0, 0], torch.tensor([20.0, 40.0]))
    with pytest.raises(DepthError, match="4 .npy files; 6 are needed"):
        NpyDepth(str(tmp_path), indices=[5])(torch.zeros(1, 3, 20, 30))


def test_depth_cache_reuses_and_keys_on_frames_and_params(tmp_path):
    calls = []

    class Counting(DepthAnything):
        def __call__(self, frames):
            calls.append(1)
            return super().__call__(frames)

    frames = torch.rand(2, 3, 28, 42)
    estimator = Counting(model="tiny", input_size=28)
    first = cached_depth(estimator, frames, tmp_path)
    second = cached_depth(estimator, frames, tmp_path)
    assert torch.equal(first, second) and len(calls) == 1
    cached_depth(estimator, frames.flip(0), tmp_path)
    cached_depth(Counting(model="tiny", input_size=28, disparity_scale=5.0), frames, tmp_path)
    assert len(calls) == 3
    for entry in (tmp_path / "depth").glob("*.npy"):
        entry.write_bytes(b"garbage")  # a corrupt entry is recomputed, not trusted
    cached_depth(estimator, frames, tmp_path)
    assert len(calls) == 4
    assert not list((tmp_path / "depth").glob(".*tmp*"))



def test_depth_anything_loads_a_local_folder_like_a_hub_checkpoint(tmp_path):
    from reangle.geometry.depth import load_depth_anything
    load_depth_anything("tiny", torch.device("cpu"), torch.float32).save_pretrained(tmp_path / "da")
    frames = torch.rand(2, 3, 28, 42)
    options = dict(output="depth", clip=(-1e9, 1e9), input_size=28)
    from_folder = DepthAnything(model=str(tmp_path / "da"), **options)(frames)
    assert torch.equal(from_folder, DepthAnything(model="tiny", **options)(frames))
