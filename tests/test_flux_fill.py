"""FLUX.1-Fill inpainter: our loop against diffusers' FluxFillPipeline, checkpoint layout, errors."""
from functools import partial

import pytest
import torch
from conftest import inpainter_ode_path

from reangle.inpaint.inpainter import FluxFillInpainter
from reangle.models.cogvideox import ModelLoadError
from reangle.models.flux import fill_transformer_config, load_fill_transformer, load_flux_fill

SIZE = 64
PROMPT = "a red ball on the floor"


@pytest.fixture(scope="module")
def fill(tmp_path_factory):
    return load_flux_fill("tiny", "tiny", cache_dir=tmp_path_factory.mktemp("cache"), dtype=torch.float32)


def _view(hole_width=SIZE // 3):
    g = torch.Generator().manual_seed(0)
    image = torch.rand((1, 3, SIZE, SIZE), generator=g)
    visible = torch.ones((1, 1, SIZE, SIZE))
    visible[..., :, :hole_width] = 0
    return image, visible


def _ode(inpainter, view):
    return inpainter_ode_path(inpainter, *view, PROMPT)


def test_our_ode_path_is_the_flux_fill_pipeline(fill, monkeypatch):
    """Same components, noise and mask: diffusers' FluxFillPipeline (the masked image encoded with the VAE's
    mean, its ``argmax`` mode, as ours) gives the same latents and images."""
    from diffusers import FluxFillPipeline
    from diffusers.pipelines.flux import pipeline_flux_fill

    inpainter = FluxFillInpainter(fill, guidance=30.0, max_sequence_length=32)
    image, visible = _view()
    cond, noise, ours = _ode(inpainter, (image, visible))
    assert cond.control.shape == (1, (SIZE // 16) ** 2, 64 + 256)
    monkeypatch.setattr(pipeline_flux_fill, "retrieve_latents",
                        partial(pipeline_flux_fill.retrieve_latents, sample_mode="argmax"))
    pipe = FluxFillPipeline(**fill.components)
    kwargs = dict(image=image, mask_image=1 - visible, height=SIZE, width=SIZE, num_inference_steps=3,
                  guidance_scale=30.0, latents=noise, max_sequence_length=32)
    ref = pipe(PROMPT, output_type="latent", **kwargs).images
    assert (ours - ref).abs().max() <= 1e-5
    ref_images = pipe(PROMPT, output_type="pt", **kwargs).images
    assert ((inpainter.decode(ours, cond) + 1) / 2 - ref_images).abs().max() <= 1e-5
    _, _, other_mask = _ode(inpainter, _view(hole_width=SIZE // 2))
    assert (ours - other_mask).abs().max() > 1e-3  # the mask and masked image matter


def test_candidates_batched_and_chunked_equal_one_at_a_time(fill):
    inpainter = FluxFillInpainter(fill, max_batch=2, max_sequence_length=32)
    cond = inpainter.condition(*_view(), PROMPT)
    batch = torch.randn((5, *inpainter.initial_noise(cond, torch.Generator()).shape[1:]))
    together = inpainter.velocity(batch, 0.6, cond)
    alone = torch.cat([inpainter.velocity(b[None], 0.6, cond) for b in batch])
    assert together.shape == batch.shape
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)


def test_full_size_fill_transformer_on_meta():
    """FLUX.1-Fill-dev's transformer: FLUX.1-dev's keys and shapes, except the 384-channel input embedder."""
    from accelerate import init_empty_weights
    from diffusers import FluxTransformer2DModel

    dev_config = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                      num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768,
                      guidance_embeds=True, axes_dims_rope=[16, 56, 56])
    with init_empty_weights(include_buffers=True):
        fill = FluxTransformer2DModel.from_config(fill_transformer_config())
        dev = FluxTransformer2DModel.from_config(dev_config)
    got = {k: tuple(v.shape) for k, v in fill.state_dict().items()}
    expected = {k: tuple(v.shape) for k, v in dev.state_dict().items()} | {"x_embedder.weight": (3072, 384)}
    assert got == expected
    assert got["proj_out.weight"] == (64, 3072)


def test_a_transformer_of_the_wrong_input_width_is_one_clear_error(tmp_path):
    from diffusers import FluxTransformer2DModel

    plain = FluxTransformer2DModel(in_channels=64, num_layers=1, num_single_layers=1, attention_head_dim=16,
                                   num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                                   guidance_embeds=True, axes_dims_rope=[4, 6, 6])
    plain.save_pretrained(tmp_path / "plain" / "transformer")
    with pytest.raises(ModelLoadError, match="takes 64 input .* FLUX.1-Fill transformer takes 384"):
        load_fill_transformer(str(tmp_path / "plain"))
    with pytest.raises(ModelLoadError, match="neither a local folder nor a hub id"):
        load_fill_transformer("./no/such/fill")
