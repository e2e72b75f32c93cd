"""Config values are checked against the type of their default in configs/base.yaml."""
from pathlib import Path

import pytest

from reangle.config import CONFIG_DIR, ConfigError, load_config

VIDEO = "data.video=clip.mp4"


@pytest.mark.parametrize("override,expected", [
    ("train.steps=2.5", "config key train.steps=2.5: expected an integer, got a float"),
    ("train.steps=abc", "config key train.steps='abc': expected an integer, got a string"),
    ("train.lr=abc", "config key train.lr='abc': expected a number, got a string"),
    ("train.masked=1", "config key train.masked=1: expected true or false, got an integer"),
    ("train.steps=true", "config key train.steps=True: expected an integer, got true or false"),
    ("depth.clip=3", "config key depth.clip=3: expected a list, got an integer"),
    ("train.betas=[0.9,fast]", "config key train.betas=[0.9, 'fast']: expected a list of numbers, got 'fast'"),
    ("model.tiny.vae_channels=[8,8.5]", "expected a list of integers, got 8.5 (a float)"),
    ("views.ranges={orbit_left: 3}", "config key views.ranges.orbit_left=3: expected a list, got an integer"),
    ("data.video=[a,b]", "config key data.video=['a', 'b']: expected a string, got a list"),
    ("trainer.devices=1.5", "config key trainer.devices=1.5: expected an integer or a string or a list, got a float"),
])
def test_a_mistyped_override_is_one_line_naming_key_value_and_type(override, expected):
    with pytest.raises(ConfigError) as info:
        load_config([], [VIDEO, override])
    message = str(info.value)
    assert expected in message and "\n" not in message


def test_values_in_files_are_checked_too(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  steps: 2.5\n")
    with pytest.raises(ConfigError, match="train.steps=2.5: expected an integer"):
        load_config([path], [VIDEO])


def test_compatible_values_are_accepted():
    cfg = load_config([], [VIDEO, "train.lr=1", "run.name=2024", "train.grad_clip=null", "trainer.devices=auto",
                           "data.fps=29.97", "train.views=[input]", "views.ranges.dolly_in=[0,1]",
                           "trainer.strategy={target: a.B, params: {x: [1]}}", "sample.start_frames={v: f.png}",
                           "depth.input_size=518", "run.seed=${train.steps}"])
    assert cfg.train.lr == 1 and cfg.run.name == "2024" and cfg.run.dir == "runs/2024"
    assert cfg.train.grad_clip is None and cfg.trainer.devices == "auto" and cfg.run.seed == 400


NOT_CONFIG_LAYERS = ("benchmark", "sweeps")  # manifests and W&B sweep files: test_manifest.py, test_sweep_spec.py
CONFIG_FILES = sorted(str(p.relative_to(CONFIG_DIR.parent)) for p in CONFIG_DIR.rglob("*.yaml")
                      if p.relative_to(CONFIG_DIR).parts[0] not in NOT_CONFIG_LAYERS)


@pytest.mark.parametrize("path", CONFIG_FILES)
def test_every_shipped_config_file_validates(path):
    assert len(CONFIG_FILES) >= 6
    cfg = load_config([path], [VIDEO])
    assert cfg.data.video in ("clip.mp4", "synthetic")


def test_shipped_configs_validate_combined():
    modes = [p for p in CONFIG_FILES if Path(p).parent.name == "configs" and not p.endswith("base.yaml")]
    for mode in modes:
        for strategy in [p for p in CONFIG_FILES if "strategy" in p]:
            load_config([mode, "configs/presets/tiny.yaml", strategy], [VIDEO])
