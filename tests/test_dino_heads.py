"""The DINO head count is never guessed: official presets, num_heads, or a sidecar .json."""
import json

import pytest
import torch

from reangle.nets.dino import build_dino, config_from_state_dict, load_dino
from reangle.nets.featup import load_featup


@pytest.fixture
def four_head_checkpoint(tmp_path):
    """A 64-wide DINO ViT with 4 heads (head size 16) saved as a state dict; and the model."""
    torch.manual_seed(0)
    source = load_dino({"embed_dim": 64, "depth": 2, "num_heads": 4})
    path = tmp_path / "teacher.pth"
    torch.save(source.state_dict(), path)
    return path, source


def test_a_checkpoint_that_is_no_preset_needs_its_head_count(four_head_checkpoint):
    path, source = four_head_checkpoint
    with pytest.raises(ValueError, match=r"embed_dim 64, depth 2\) is not an official preset .* pass num_heads"):
        load_dino(path)
    x = torch.randn(1, 3, 32, 48)
    torch.testing.assert_close(load_dino(path, num_heads=4)(x), source(x))
    assert not torch.allclose(load_dino(path, num_heads=1)(x), source(x))  # the head count matters
    with pytest.raises(ValueError, match="does not divide"):
        load_dino(path, num_heads=5)


def test_a_sidecar_json_gives_the_head_count(four_head_checkpoint):
    path, source = four_head_checkpoint
    path.with_suffix(".json").write_text(json.dumps({"num_heads": 4}))
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(load_dino(path)(x), source(x))
    path.with_suffix(".json").write_text(json.dumps({"num_heads": "four"}))
    with pytest.raises(ValueError, match="num_heads must be a positive integer"):
        load_dino(path)


@pytest.mark.parametrize("arch,heads", [("vit_small", 6), ("vit_base", 12)])
def test_official_presets_are_recognised_from_their_shapes(arch, heads):
    with torch.device("meta"):
        state = build_dino(arch).state_dict()
    assert config_from_state_dict(state)["num_heads"] == heads


def test_featup_checkpoints_follow_the_same_rule(tmp_path):
    torch.manual_seed(0)
    source = load_featup({"dino": {"embed_dim": 64, "depth": 2, "num_heads": 4}, "key_dim": 8})
    torch.save(source.state_dict(), tmp_path / "jbu.pth")
    with pytest.raises(ValueError, match="pass num_heads"):
        load_featup(tmp_path / "jbu.pth")
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(load_featup(tmp_path / "jbu.pth", dino_num_heads=4)(x), source(x))
