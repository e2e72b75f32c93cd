"""Benchmark manifests: loading, checks, and their overrides through the config loader."""
from pathlib import Path

import pytest

from reangle.config import CONFIG_DIR, load_config
from reangle.experiments.manifest import ManifestError, load_manifest

BENCHMARKS = CONFIG_DIR / "benchmark"


def _write(tmp_path, text, name="m.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("name", ["synthetic.yaml", "example.yaml"])
def test_shipped_manifests_load_and_every_video_validates(name):
    manifest = load_manifest(BENCHMARKS / name)
    assert len(manifest.videos) >= 3
    for video in manifest.videos:
        cfg = load_config([CONFIG_DIR / "static.yaml"], video.config_overrides())
        assert cfg.data.video == video.video
        if video.mode:
            assert cfg.mode == video.mode and cfg.views.per_motion is None


def test_synthetic_set_has_distinct_scenes_with_true_depth():
    videos = load_manifest(BENCHMARKS / "synthetic.yaml").videos
    cfgs = [load_config([CONFIG_DIR / "presets" / "tiny.yaml"], v.config_overrides()) for v in videos]
    assert all(c.data.video == "synthetic" and c.depth.source == "synthetic" for c in cfgs)
    assert len({c.data.synthetic.seed for c in cfgs}) == len(videos)


def test_paths_are_relative_to_the_manifest_and_values_survive_the_loader(tmp_path):
    prompt = 'a dog: "Rex", runs [fast] # on a beach'
    path = _write(tmp_path, f"""
videos:
  - name: dog
    video: clips/dog.mp4
    prompt: '{prompt.replace("'", "''")}'
    views: [{{name: up_3, motion: orbit_up, magnitude: 3.0}}]
    overrides: {{data.frame_stride: 2, train.views: [input]}}
""")
    manifest = load_manifest(path)
    assert manifest.name == "m"
    video = manifest.videos[0]
    assert video.video == str((tmp_path / "clips" / "dog.mp4").resolve())
    cfg = load_config([], video.config_overrides())
    assert cfg.data.prompt == prompt
    assert cfg.data.frame_stride == 2 and list(cfg.train.views) == ["input"]
    assert cfg.views.custom[0].motion == "orbit_up" and cfg.views.custom[0].magnitude == 3.0


@pytest.mark.parametrize("text, message", [
    ("videos: []", "non-empty .videos."),
    ("- a list", "must hold a mapping"),
    ("videos:\n  - {name: a, video: synthetic}\n  - {name: a, video: x.mp4}", r"\['a'\] appear more than once"),
    ("videos:\n  - {name: a, video: synthetic, fps: 3}", r"unknown field\(s\) \['fps'\]"),
    ("videos:\n  - {name: a, video: synthetic, mode: sideways}", "unknown mode 'sideways'"),
    ("videos:\n  - {name: 'a b', video: synthetic}", "'name' must be"),
    ("videos:\n  - {name: a}", "'video' must be"),
    ("videos:\n  - {name: a, video: synthetic}\nseeds: 3", "unknown top-level"),
])
def test_bad_manifests_name_what_is_wrong(tmp_path, text, message):
    with pytest.raises(ManifestError, match=message):
        load_manifest(_write(tmp_path, text))


def test_missing_manifest_is_named(tmp_path):
    with pytest.raises(ManifestError, match="not found"):
        load_manifest(tmp_path / "nope.yaml")
