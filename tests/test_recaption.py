"""A new caption (data.prompt) or frame rate (data.fps) reuses the warped views: no depth, no warping."""
import torch

from reangle.config import load_config
from reangle.data import build as build_module
from reangle.data.build import build_omega, omega_dir, warp_key
from reangle.data.datamodule import OmegaDataModule
from reangle.data.omega import Omega

TINY = "configs/presets/tiny.yaml"


def _config(tmp_path, *extra):
    return load_config([TINY], [f"run.cache_dir={tmp_path / 'cache'}", "data.height=32", "data.width=48",
                                "data.num_frames=5", "views.motions=[orbit_left,dolly_in]", "mode=dynamic", *extra])


class _Spec:
    def fingerprint(self, kind):
        return kind


def test_a_new_caption_relabels_the_cached_warps_without_recomputing_them(tmp_path, monkeypatch):
    first = build_omega(_config(tmp_path, "data.prompt=a red ball"))

    def fail(*args, **kwargs):
        raise AssertionError("depth or warping ran again for a caption change")

    monkeypatch.setattr(build_module, "_frames_and_depth", fail)
    monkeypatch.setattr(build_module, "warp_video", fail)
    cfg = _config(tmp_path, "data.prompt=a blue ball", "data.fps=12")
    second = build_omega(cfg)
    assert second.root != first.root and second.root.parent == first.root.parent == omega_dir(cfg).parent
    assert warp_key(cfg) == first.root.parent.name
    assert second.caption == "a blue ball" and second.view("input").prompt == "a blue ball"
    assert second.view("dolly_in_00").prompt == "CAMERA_ZOOM_IN Camera movement zoom in, a blue ball"
    assert (second.root / "dolly_in_00" / "prompt.txt").read_text() == second.view("dolly_in_00").prompt
    for view in first.views:  # the same warped files, linked
        assert (first.root / view.video).read_bytes() == (second.root / view.video).read_bytes()
        assert torch.equal(first.read_mask(view), second.read_mask(second.view(view.name)))
    assert (second.root / "preview.gif").is_file()
    # the first Omega (a finished run may point at it) keeps its own prompts
    assert Omega.load(first.root).view("input").prompt == "a red ball"
    assert (first.root / "input" / "prompt.txt").read_text() == "a red ball"
    # the frame rate is in no key: the same Omega again
    assert build_omega(_config(tmp_path, "data.prompt=a blue ball", "data.fps=24")).root == second.root
    # latents are shared, text embeddings are not
    data = OmegaDataModule(_Spec(), first.root, tmp_path / "stage2")
    for view in first.views:
        assert data._video_key(first, view) == data._video_key(second, second.view(view.name))
    assert data._text_key(first.view("input").prompt) != data._text_key(second.view("input").prompt)


def test_force_rebuilds_and_changed_warp_parameters_do_not_reuse(tmp_path, monkeypatch):
    first = build_omega(_config(tmp_path, "data.prompt=a red ball"))
    calls = []
    real_warp = build_module.warp_video

    def counting(*args, **kwargs):
        calls.append(1)
        return real_warp(*args, **kwargs)

    monkeypatch.setattr(build_module, "warp_video", counting)
    other = build_omega(_config(tmp_path, "data.prompt=a blue ball", "warp.hole_dilation=3"))
    assert other.root.parent != first.root.parent and len(calls) == 2
    build_omega(_config(tmp_path, "data.prompt=a green ball"), force=True)
    assert len(calls) == 4
