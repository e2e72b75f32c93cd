"""Depth Anything's inference size (depth.input_size) and what the depth cache key holds."""
import math

import pytest
import torch

from reangle.config import load_config
from reangle.geometry import depth as depth_module
from reangle.geometry.depth import DepthAnything, DepthError, cached_depth


def _released_size(height, width, target_h, target_w):
    """Depth Anything V2's Resize(keep_aspect_ratio, ensure_multiple_of=14, resize_method="lower_bound")."""
    scale = max(target_h / height, target_w / width)
    out = []
    for length, bound in ((height, target_h), (width, target_w)):
        y = int(round(length * scale / 14) * 14)
        out.append(y if y >= bound else int(math.ceil(length * scale / 14) * 14))
    return tuple(out)


@pytest.mark.parametrize("size", [(480, 720), (64, 96), (28, 42), (241, 359), (720, 480)])
def test_default_runs_at_the_frames_own_resolution_like_the_released_code(size):
    model = DepthAnything(model="tiny")
    assert model.input_size is None and load_config([], ["data.video=x.mp4"]).depth.input_size is None
    assert model.input_shape(*size) == _released_size(*size, *size)
    assert all(s % 14 == 0 and s >= t for s, t in zip(model.input_shape(*size), size))
    assert model.input_shape(480, 720) == (490, 728)


@pytest.mark.parametrize("size", [(480, 720), (241, 359), (720, 480), (100, 771)])
def test_an_integer_sets_the_shorter_side(size):
    assert DepthAnything(model="tiny", input_size=518).input_shape(*size) == _released_size(*size, 518, 518)
    assert min(DepthAnything(model="tiny", input_size=518).input_shape(*size)) == 518


def test_the_model_sees_the_chosen_size_and_the_key_records_it():
    seen = []

    class Net:
        def __call__(self, pixel_values):
            seen.append(tuple(pixel_values.shape[-2:]))
            return type("Out", (), {"predicted_depth": pixel_values[:, 0]})()

    frames = torch.rand(1, 3, 30, 45)
    for size in (None, 28):
        model = DepthAnything(model="tiny", input_size=size)
        model._net = Net()
        model(frames)
    assert seen == [(42, 56), (28, 42)]
    assert DepthAnything(model="tiny").key() != DepthAnything(model="tiny", input_size=518).key()
    with pytest.raises(DepthError, match="depth.input_size"):
        DepthAnything(model="tiny", input_size=5)


def test_depth_cache_key_holds_device_type_and_dtype(tmp_path, monkeypatch):
    frames = torch.rand(1, 3, 28, 42)
    calls = []

    class Counting(DepthAnything):
        def __call__(self, frames):
            calls.append(self._device_dtype())
            return torch.ones(frames.shape[0], *frames.shape[-2:])

    cpu_key = Counting(model="tiny", device="cpu").key()
    assert (cpu_key["device_type"], cpu_key["dtype"]) == ("cpu", "torch.float32")
    cached_depth(Counting(model="tiny", device="cpu"), frames, tmp_path)
    monkeypatch.setattr(depth_module, "resolve_device", lambda name: torch.device("cuda"))
    cuda_key = Counting(model="tiny", device="cuda").key()
    assert (cuda_key["device_type"], cuda_key["dtype"]) == ("cuda", "torch.float16")
    cached_depth(Counting(model="tiny", device="cuda"), frames, tmp_path)  # not the CPU entry
    assert [d.type for d, _ in calls] == ["cpu", "cuda"]
    assert len(list((tmp_path / "depth").glob("*.npy"))) == 2
