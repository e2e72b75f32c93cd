"""Range checks beside the type checks: one sentence naming the key, its value and its range,
and frame sizes the backbone cannot take refused before any work."""
import json

import pytest

from reangle.config import RANGES, ConfigError, load_config
from reangle.models.cogvideox import HUB_GRID
from reangle.models.spec import FrameGrid

VIDEO = "data.video=clip.mp4"
TINY = "configs/presets/tiny.yaml"


@pytest.mark.parametrize("override,expected", [
    ("train.lr=0", "train.lr=0: must be > 0"),
    ("train.lr=-1e-4", "train.lr=-0.0001: must be > 0"),
    ("train.lr=.inf", "train.lr=inf: must be > 0"),
    ("train.lr=.nan", "train.lr=nan: must be > 0"),
    ("train.batch_size=0", "train.batch_size=0: must be >= 1"),
    ("lora.rank=0", "lora.rank=0: must be >= 1"),
    ("train.grad_clip=-1.0", "train.grad_clip=-1.0: must be >= 0"),
    ("data.fps=0", "data.fps=0: must be > 0"),
    ("data.fps=-8", "data.fps=-8: must be > 0"),
    ("train.image_dropout=1.5", "train.image_dropout=1.5: must be >= 0 and <= 1"),
    ("inpaint.candidates=0", "inpaint.candidates=0: must be >= 1"),
])
def test_out_of_range_values_are_one_sentence_naming_the_key_and_range(override, expected):
    with pytest.raises(ConfigError) as info:
        load_config([TINY], [override])
    assert f"config key {expected}" in str(info.value) and "\n" not in str(info.value)


def test_range_ends_and_null_are_accepted():
    cfg = load_config([TINY], ["train.grad_clip=null", "train.lr=1e-9", "train.batch_size=1", "lora.rank=1",
                               "data.fps=29.97", "train.image_dropout=1.0"])
    assert cfg.train.grad_clip is None and cfg.data.fps == 29.97
    assert load_config([TINY], ["train.grad_clip=0"]).train.grad_clip == 0


def test_every_ranged_key_exists_in_the_schema():
    cfg = load_config([TINY])
    from omegaconf import OmegaConf
    for key in RANGES:
        assert OmegaConf.select(cfg, key, default="missing") != "missing", key


@pytest.mark.parametrize("overrides,match", [
    (["data.height=97"], "multiples of 16"),
    (["data.width=100"], "multiples of 16"),
    (["data.num_frames=10"], r"1 \+ 4k \(e.g. 9\)"),
    (["data.num_frames=0"], r"1 \+ 4k"),
    (["model.tiny.height=64"], "exactly 64 x 144"),     # the tiny model's learned embeddings are 64 x 144
])
def test_frame_sizes_the_tiny_backbone_cannot_take_are_refused_at_load(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config([TINY], overrides)


def test_cogvideox_5b_i2v_takes_exactly_49_frames_at_480_by_720():
    """Its positional embeddings are learned for 49 x 480 x 720: diffusers swaps in computed ones for
    another frame count, so another count is refused, like another size."""
    assert HUB_GRID == FrameGrid(16, 4, (480, 720), 49)
    assert load_config([], [VIDEO]).data.num_frames == 49
    with pytest.raises(ConfigError, match="exactly 49 frames"):
        load_config([], [VIDEO, "data.num_frames=13"])
    with pytest.raises(ConfigError, match="exactly 480 x 720"):
        load_config([], [VIDEO, "data.height=496"])
    with pytest.raises(ConfigError, match="1 \\+ 4k"):
        load_config([], [VIDEO, "data.num_frames=48"])


def test_a_local_model_folder_answers_from_its_configs(tmp_path):
    """A folder in the diffusers layout without learned positional embeddings (as CogVideoX-5b, T2V)."""
    for part, config in [("vae", {"block_out_channels": [128, 256, 256, 512]}),
                         ("transformer", {"patch_size": 2, "temporal_compression_ratio": 4,
                                          "use_learned_positional_embeddings": False})]:
        (tmp_path / part).mkdir()
        (tmp_path / part / "config.json").write_text(json.dumps(config))
    model = f"model.pretrained={tmp_path}"
    assert load_config([], [VIDEO, model, "data.height=320", "data.width=512"]).data.height == 320
    with pytest.raises(ConfigError, match="multiples of 16"):
        load_config([], [VIDEO, model, "data.height=328"])
