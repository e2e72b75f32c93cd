"""Building Omega: contents, cache reuse and invalidation, interrupted writes, bad input."""
import json

import pytest
import torch

from reangle.config import ConfigError, load_config
from reangle.data import build as build_module
from reangle.data.build import build_omega, omega_dir
from reangle.data.omega import Omega, OmegaError
from reangle.geometry.depth import DepthError
from reangle.geometry.trajectory import TrajectoryError
from reangle.io.video import VideoError, write_mp4
from reangle.warp import main as warp_main

TINY = "configs/presets/tiny.yaml"


@pytest.fixture
def tiny_overrides(tmp_path):
    """The tiny preset, smaller still, caching under tmp_path."""
    return [f"run.cache_dir={tmp_path / 'cache'}", "data.height=64", "data.width=96", "data.num_frames=5",
            "views.motions=[orbit_left,dolly_in]"]


def tiny_config(overrides, *extra):
    return load_config([TINY], [*overrides, *extra])


def test_static_omega_holds_every_view_with_masks_cameras_and_prompts(tiny_overrides, monkeypatch):
    labels = []
    tile = build_module.tile_videos
    monkeypatch.setattr(build_module, "tile_videos", lambda videos, **kw: labels.append(kw["labels"]) or tile(videos, **kw))
    omega = build_omega(tiny_config(tiny_overrides, "views.per_motion=2"))
    names = [v.name for v in omega.views]
    assert names == ["input", "orbit_left_00", "orbit_left_01", "dolly_in_00", "dolly_in_01"]
    assert labels == [names]  # the preview's tiles carry the view names
    assert Omega.load(omega.root).views == omega.views
    assert omega.read_mask(omega.view("input")).all()
    assert omega.read_frames(omega.view("input")).shape == (5, 3, 64, 96)
    view = omega.view("orbit_left_00")
    mask, frames = omega.read_mask(view), omega.read_frames(view)
    assert 0.3 < mask.float().mean() < 1.0
    assert frames[~mask.unsqueeze(1).expand_as(frames)].mean() < 0.03  # holes are black (up to codec bleed)
    camera = omega.read_camera(view)
    assert camera["w2c"].shape == (5, 4, 4) and torch.equal(camera["w2c"][0], camera["w2c"][-1])
    assert view.prompt == omega.caption
    assert (omega.root / "preview.mp4").is_file() and (omega.root / "preview.gif").is_file()


def test_dynamic_omega_has_one_view_per_motion_and_movement_prompts(tiny_overrides):
    omega = build_omega(tiny_config(tiny_overrides, "mode=dynamic"))
    assert [v.name for v in omega.views] == ["input", "orbit_left_00", "dolly_in_00"]
    view = omega.view("dolly_in_00")
    assert view.prompt.startswith("CAMERA_ZOOM_IN Camera movement zoom in, ")
    w2c = omega.read_camera(view)["w2c"]
    assert torch.allclose(w2c[0], torch.eye(4, dtype=torch.float64)) and not torch.allclose(w2c[-1], w2c[0])
    assert omega.read_mask(view)[0].all()  # the first frame is the input camera


def test_cache_is_reused_and_rebuilt_when_parameters_change(tiny_overrides, monkeypatch):
    cfg = tiny_config(tiny_overrides)
    first = build_omega(cfg)
    manifest_time = (first.root / "manifest.json").stat().st_mtime_ns

    def fail(*args, **kwargs):
        raise AssertionError("warped again although a cached Omega exists")

    monkeypatch.setattr(build_module, "warp_video", fail)
    again = build_omega(tiny_config(tiny_overrides))
    assert again.root == first.root and (first.root / "manifest.json").stat().st_mtime_ns == manifest_time
    monkeypatch.undo()
    changed = build_omega(tiny_config(tiny_overrides, "warp.hole_dilation=3"))
    assert changed.root != first.root
    assert omega_dir(tiny_config(tiny_overrides, "views.seed=1")) != first.root


def test_video_content_is_part_of_the_key(tiny_overrides, tmp_path):
    video = tmp_path / "clip.mp4"
    write_mp4(torch.rand(5, 3, 64, 96), video)
    cfg = tiny_config(tiny_overrides, f"data.video={video}", "depth.source=depth_anything", "depth.model=tiny")
    key = omega_dir(cfg)
    write_mp4(torch.rand(5, 3, 64, 96), video)
    assert omega_dir(cfg) != key


def test_interrupted_build_leaves_nothing_trusted(tiny_overrides, monkeypatch):
    cfg = tiny_config(tiny_overrides)
    real_write = build_module.write_view
    written = []

    def crash_on_third(*args, **kwargs):
        if len(written) == 2:
            raise KeyboardInterrupt
        written.append(args[1])
        return real_write(*args, **kwargs)

    monkeypatch.setattr(build_module, "write_view", crash_on_third)
    with pytest.raises(KeyboardInterrupt):
        build_omega(cfg)
    final = omega_dir(cfg)
    assert not (final / "manifest.json").exists()
    with pytest.raises(OmegaError, match="manifest.json is missing"):
        Omega.load(final)
    monkeypatch.undo()
    omega = build_omega(cfg)
    assert len(omega.views) == 3 and (final / "manifest.json").is_file()


def test_incomplete_or_corrupt_omega_is_rebuilt(tiny_overrides):
    cfg = tiny_config(tiny_overrides)
    omega = build_omega(cfg)
    (omega.root / "dolly_in_00" / "mask.npz").unlink()
    with pytest.raises(OmegaError, match="mask.npz"):
        Omega.load(omega.root)
    assert build_omega(cfg).read_mask(omega.view("dolly_in_00")).shape == (5, 64, 96)
    (omega.root / "manifest.json").write_text("{not json")
    with pytest.raises(OmegaError, match="corrupt"):
        Omega.load(omega.root)
    assert len(build_omega(cfg).views) == 3


@pytest.fixture
def no_expensive_work(monkeypatch):
    """Bad input must be refused before depth or warping starts."""
    def fail(*args, **kwargs):
        raise AssertionError("expensive work started before the input was checked")
    monkeypatch.setattr(build_module, "cached_depth", fail)
    monkeypatch.setattr(build_module, "warp_video", fail)


def test_bad_inputs_fail_fast_with_clear_errors(tiny_overrides, tmp_path, no_expensive_work):
    with pytest.raises(VideoError, match="not found"):
        build_omega(tiny_config(tiny_overrides, f"data.video={tmp_path / 'missing.mp4'}", "depth.source=npy"))
    (tmp_path / "bad.mp4").write_bytes(b"\x00" * 100)
    with pytest.raises(VideoError, match="cannot read video"):
        build_omega(tiny_config(tiny_overrides, f"data.video={tmp_path / 'bad.mp4'}", "depth.source=depth_anything"))
    write_mp4(torch.rand(3, 3, 64, 96), tmp_path / "short.mp4")
    with pytest.raises(VideoError, match="has 3 frames but 5"):
        build_omega(tiny_config(tiny_overrides, f"data.video={tmp_path / 'short.mp4'}", "depth.source=depth_anything"))
    with pytest.raises(TrajectoryError, match="unknown camera motion 'orbit_around'"):
        build_omega(tiny_config(tiny_overrides, "views.motions=[orbit_around]"))
    with pytest.raises(DepthError, match="needs data.video=synthetic"):
        build_omega(tiny_config(tiny_overrides, f"data.video={tmp_path / 'short.mp4'}", "data.short_video=loop"))
    with pytest.raises(ConfigError, match="views.motion"):
        tiny_config(tiny_overrides, "views.motion=[orbit_up]")


def test_warp_cli_builds_and_reports_the_preview(tiny_overrides, capsys):
    assert warp_main(["--config", TINY, *tiny_overrides]) == 0
    out = capsys.readouterr().out
    assert "Omega:" in out and "preview.gif" in out
    manifest = json.loads((omega_dir(tiny_config(tiny_overrides)) / "manifest.json").read_text())
    assert len(manifest["views"]) == 3


def test_warp_cli_rejects_an_unknown_key(tiny_overrides):
    with pytest.raises(ConfigError, match="unknown config key 'warp.splatting'"):
        warp_main(["--config", TINY, *tiny_overrides, "warp.splatting=nearest"])


def test_mask_file_holds_the_keys_the_format_documents(tiny_omega):
    """The layout in reangle/data/omega.py's docstring names the arrays of mask.npz; a reader following
    it (np.unpackbits of "bits", reshaped to "shape") gets the mask Omega reads."""
    import re

    import numpy as np

    from reangle.data import omega as omega_module
    doc = omega_module.__doc__
    documented = set(re.findall(r'"(\w+)"', doc[doc.index("mask.npz"):doc.index("<view>/camera.json")]))
    omega = Omega.load(tiny_omega)
    view = omega.views[-1]
    with np.load(omega.root / view.mask) as data:
        assert set(data.files) == documented == {"bits", "shape"}
        mask = np.unpackbits(data["bits"])[: int(np.prod(data["shape"]))].reshape(tuple(data["shape"])).astype(bool)
    assert torch.equal(torch.from_numpy(mask), omega.read_mask(view)) and not mask.all()
