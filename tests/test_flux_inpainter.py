"""FLUX + inpainting ControlNet: our loop against diffusers' pipeline and classes, checkpoint layout, errors."""
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import inpainter_ode_path

from reangle.inpaint.inpainter import FluxControlNetInpainter
from reangle.models.cogvideox import ModelLoadError
from reangle.models.flux import (InpaintControlNet, beta_controlnet_config, build_controlnet_on_meta, load_controlnet,
                                 load_flux)

SIZE = 64
PROMPT = "a red ball on the floor"


@pytest.fixture(scope="module")
def flux(tmp_path_factory):
    return load_flux("tiny", "tiny", cache_dir=tmp_path_factory.mktemp("cache"), dtype=torch.float32)


def _view():
    g = torch.Generator().manual_seed(0)
    image = torch.rand((1, 3, SIZE, SIZE), generator=g)
    visible = torch.ones((1, 1, SIZE, SIZE))
    visible[..., :, : SIZE // 3] = 0
    return image, visible


def _ode(inpainter):
    return inpainter_ode_path(inpainter, *_view(), PROMPT)[1:]


def test_without_control_our_ode_path_is_the_flux_pipeline(flux):
    inpainter = FluxControlNetInpainter(flux, conditioning_scale=0.0, guidance=3.5, max_sequence_length=32)
    noise, ours = _ode(inpainter)
    ref = flux.pipeline(PROMPT, height=SIZE, width=SIZE, num_inference_steps=3, guidance_scale=3.5, latents=noise,
                        output_type="latent", max_sequence_length=32).images
    assert (ours - ref).abs().max() <= 1e-5


def test_with_control_our_ode_path_matches_a_diffusers_reference(flux):
    """Reference: the control signal from its definition, diffusers' ControlNet + transformer + Euler scheduler."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    inpainter = FluxControlNetInpainter(flux, conditioning_scale=0.9, guidance=3.5, max_sequence_length=32)
    noise, ours = _ode(inpainter)
    pipe, net = flux.pipeline, flux.controlnet
    image, visible = _view()
    hole = visible < 0.5
    masked = torch.where(hole, -1.0, image * 2 - 1)
    lat = (pipe.vae.encode(masked).latent_dist.mean - pipe.vae.config.shift_factor) * pipe.vae.config.scaling_factor
    keep = 1 - F.interpolate(hole.float(), size=lat.shape[-2:], mode="nearest")
    control = pipe._pack_latents(torch.cat([lat, keep], 1), 1, 17, *lat.shape[-2:])
    assert control.shape == (1, (SIZE // 16) ** 2, 68)
    embeds, pooled, text_ids = pipe.encode_prompt(PROMPT, prompt_2=None, max_sequence_length=32)
    image_ids = pipe._prepare_latent_image_ids(1, SIZE // 16, SIZE // 16, "cpu", torch.float32)
    scheduler = FlowMatchEulerDiscreteScheduler.from_config(pipe.scheduler.config)
    mu = calculate_shift(noise.shape[1], 256, 4096, 0.5, 1.15)
    scheduler.set_timesteps(sigmas=[1.0, 2 / 3, 1 / 3], mu=mu)
    x = noise.clone()
    guidance = torch.full((1,), 3.5)
    with torch.no_grad():
        for t in scheduler.timesteps:
            kw = dict(hidden_states=x, timestep=t.expand(1) / 1000, guidance=guidance, pooled_projections=pooled,
                      encoder_hidden_states=embeds, txt_ids=text_ids, img_ids=image_ids, return_dict=False)
            blocks, single = net(controlnet_cond=control, conditioning_scale=0.9, **kw)
            u = pipe.transformer(controlnet_block_samples=blocks, controlnet_single_block_samples=single, **kw)[0]
            x = scheduler.step(u, t, x, return_dict=False)[0]
    assert (ours - x).abs().max() <= 1e-5
    _, uncontrolled = _ode(FluxControlNetInpainter(flux, conditioning_scale=0.0, max_sequence_length=32))
    assert (ours - uncontrolled).abs().max() > 1e-3  # the control signal matters


def test_candidates_batched_and_chunked_equal_one_at_a_time(flux):
    inpainter = FluxControlNetInpainter(flux, max_batch=2, max_sequence_length=32)
    image, visible = _view()
    cond = inpainter.condition(image, visible, PROMPT)
    batch = torch.randn((5, *inpainter.initial_noise(cond, torch.Generator()).shape[1:]))
    together = inpainter.velocity(batch, 0.6, cond)
    alone = torch.cat([inpainter.velocity(b[None], 0.6, cond) for b in batch])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=0)
    images = inpainter.decode(batch[:2], cond)
    assert images.shape == (2, 3, SIZE, SIZE) and images.abs().max() <= 1


def test_controlnet_saves_and_loads_through_from_pretrained(flux, tmp_path):
    flux.controlnet.save_pretrained(tmp_path / "net")
    loaded = load_controlnet(str(tmp_path / "net"), dtype=torch.float32)
    assert loaded.config.extra_condition_channels == 4 and loaded.control_channels == 68
    for key, value in flux.controlnet.state_dict().items():
        assert torch.equal(value, loaded.state_dict()[key]), key


def test_full_size_beta_layout_on_meta():
    """The Beta checkpoint: FLUX's double-block layout x 6, no single blocks, guidance embeds, 64 + 4 control input."""
    from accelerate import init_empty_weights
    from diffusers.models.transformers.transformer_flux import FluxTransformerBlock

    net = build_controlnet_on_meta()
    got = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    d = 3072
    expected = {"x_embedder.weight": (d, 64), "x_embedder.bias": (d,), "controlnet_x_embedder.weight": (d, 68),
                "controlnet_x_embedder.bias": (d,), "context_embedder.weight": (d, 4096), "context_embedder.bias": (d,)}
    for name, width in [("timestep_embedder", 256), ("guidance_embedder", 256), ("text_embedder", 768)]:
        prefix = f"time_text_embed.{name}"
        expected |= {f"{prefix}.linear_1.weight": (d, width), f"{prefix}.linear_1.bias": (d,),
                     f"{prefix}.linear_2.weight": (d, d), f"{prefix}.linear_2.bias": (d,)}
    with init_empty_weights():
        block = {k: tuple(v.shape) for k, v in FluxTransformerBlock(dim=d, num_attention_heads=24,
                                                                     attention_head_dim=128).state_dict().items()}
    for i in range(6):
        expected |= {f"transformer_blocks.{i}.{k}": s for k, s in block.items()}
        expected |= {f"controlnet_blocks.{i}.weight": (d, d), f"controlnet_blocks.{i}.bias": (d,)}
    assert got == expected
    assert beta_controlnet_config()["num_single_layers"] == 0


def test_a_controlnet_without_mask_channels_is_one_clear_error(tmp_path):
    from diffusers import FluxControlNetModel

    plain = FluxControlNetModel(in_channels=64, num_layers=1, num_single_layers=0, attention_head_dim=16,
                                num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32,
                                guidance_embeds=True, axes_dims_rope=[4, 6, 6])
    plain.save_pretrained(tmp_path / "plain")
    with pytest.raises(ModelLoadError, match="not an inpainting ControlNet"):
        load_controlnet(str(tmp_path / "plain"))


def test_inpainting_size_must_fit_the_latent_grid(flux):
    inpainter = FluxControlNetInpainter(flux, max_sequence_length=32)
    with pytest.raises(ValueError, match="multiple of 16"):
        inpainter.condition(torch.rand(1, 3, 40, 64), torch.ones(1, 1, 40, 64), PROMPT)


def test_fast_decoder_decodes_candidates_for_scoring(flux, tmp_path):
    from reangle.models.flux import load_fast_decoder

    cache = Path(flux.source).parent.parent
    fast = load_fast_decoder("tiny", cache_dir=cache)
    inpainter = FluxControlNetInpainter(flux, max_sequence_length=32, fast_decoder=fast)
    image, visible = _view()
    cond = inpainter.condition(image, visible, PROMPT)
    latents = torch.randn((2, *inpainter.initial_noise(cond, torch.Generator()).shape[1:]))
    quick, full = inpainter.decode(latents, cond, fast=True), inpainter.decode(latents, cond)
    assert quick.shape == full.shape == (2, 3, SIZE, SIZE) and quick.abs().max() <= 1
    assert (quick - full).abs().max() > 1e-3  # a different decoder
    with pytest.raises(ModelLoadError, match="neither a local folder nor a hub id"):
        load_fast_decoder("./no/such/decoder")
