"""Files the project writes: safetensors get the umask's mode; a LoRA of another model is one sentence."""
import os
import stat

import pytest
import torch

from reangle.data.tensor_cache import TensorCache
from reangle.models.cogvideox import load_components, materialize_tiny
from reangle.models.lora import LoraFileError, add_lora, load_lora, lora_state_dict, save_lora

TINY = {"height": 64, "width": 96, "num_frames": 5}


@pytest.fixture(params=[0o022, 0o002])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_cache_lora_and_tiny_model_safetensors_follow_the_umask(tmp_path, umask):
    expected = 0o666 & ~umask
    entry = TensorCache(tmp_path / "cache").save("k", {"x": torch.zeros(2)})
    assert mode(entry) == expected
    folder = materialize_tiny(TINY, tmp_path / "models")
    weights = sorted(folder.rglob("*.safetensors"))
    assert weights and {mode(p) for p in weights} == {expected}
    parts = load_components("tiny", ["transformer"], tiny=TINY, cache_dir=tmp_path / "models")
    config = add_lora(parts.transformer, rank=2, alpha=2)
    lora = save_lora(tmp_path / "lora", lora_state_dict(parts.transformer), config)
    assert mode(lora) == expected


def test_a_lora_of_another_model_size_is_one_sentence(tmp_path):
    trained = load_components("tiny", ["transformer"], tiny=TINY, cache_dir=tmp_path)
    config = add_lora(trained.transformer, rank=4, alpha=4)
    lora = save_lora(tmp_path / "lora", lora_state_dict(trained.transformer), config)
    other = load_components("tiny", ["transformer"], tiny={**TINY, "attention_head_dim": 8}, cache_dir=tmp_path)
    with pytest.raises(LoraFileError) as info:
        load_lora(other.transformer, lora)
    message = str(info.value)
    assert "rank-4 update of transformer_blocks.0.attn1.to_" in message and "32 input features where the " \
        "model has 16" in message and "\n" not in message
