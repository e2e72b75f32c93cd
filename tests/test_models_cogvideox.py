"""CogVideoX-I2V loading: one code path for tiny / local folder, the 5b-I2V layout on meta, clear errors."""
import pytest
import torch

from reangle.models.cogvideox import (COMPONENTS, ModelLoadError, build_transformer_on_meta, layout,
                                      load_components, resolve_pretrained)


def test_tiny_and_its_folder_load_the_same_weights(tiny_model_dir):
    tiny = load_components("tiny", ["transformer", "scheduler"], cache_dir=tiny_model_dir.parent.parent)
    local = load_components(str(tiny_model_dir), ["transformer", "scheduler"])
    assert tiny.source == local.source == str(tiny_model_dir)
    a, b = tiny.transformer.state_dict(), local.transformer.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert tiny.transformer.config.in_channels == 32 and tiny.transformer.config.ofs_embed_dim is None
    assert tiny.scheduler.config.prediction_type == "v_prediction"


def test_tiny_pipeline_generates_frames(tiny_model_dir):
    pipe = load_components(str(tiny_model_dir), COMPONENTS).pipeline()
    out = pipe(image=torch.rand(3, 64, 96), prompt="Camera movement orbit left, a red ball", num_frames=9,
               height=64, width=96, num_inference_steps=2, output_type="pt",
               generator=torch.Generator().manual_seed(0))
    assert out.frames.shape == (1, 9, 3, 64, 96) and torch.isfinite(out.frames).all()


def test_full_size_transformer_layout_matches_the_5b_i2v_checkpoint():
    shapes = layout(build_transformer_on_meta())
    # The hub checkpoint is 11.25 GB of bf16 (shards 4.99 + 4.99 + 1.27 GB).
    total = sum(torch.Size(s).numel() for s in shapes.values())
    assert abs(2 * total / 1e9 - 11.25) < 0.01
    assert shapes["patch_embed.proj.weight"] == (3072, 32, 2, 2)
    assert shapes["patch_embed.text_proj.weight"] == (3072, 4096)
    assert shapes["patch_embed.pos_embedding"] == (1, 226 + 13 * 30 * 45, 3072)
    assert shapes["proj_out.weight"] == (2 * 2 * 16, 3072)
    blocks = {k.split(".")[1] for k in shapes if k.startswith("transformer_blocks.")}
    assert blocks == {str(i) for i in range(42)}
    for name in ("to_q", "to_k", "to_v", "to_out.0"):
        assert shapes[f"transformer_blocks.41.attn1.{name}.weight"] == (3072, 3072)
    assert not any(k.startswith("ofs") for k in shapes)


@pytest.mark.parametrize("bad", ["./no/such/folder", "not a model id"])
def test_unknown_source_is_a_clear_error(bad):
    with pytest.raises(ModelLoadError, match="neither a local folder nor a hub id"):
        resolve_pretrained(bad)


def test_folder_without_components_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="has no subfolder"):
        load_components(str(tmp_path), ["vae"])
