"""Wan2.2-I2V-A14B on the tiny random two-expert model (``model.wan_tiny.variant: i2v_a14b``): loading
through the one Wan path, each training sample routed to the expert of its timestep (rebuilt from the
recipe; only that expert's LoRA gets a gradient), our sampler against diffusers'
``WanImageToVideoPipeline(transformer_2=..., boundary_ratio=...)``, and the two exported LoRA files in
the stock pipeline (``load_into_transformer_2=True`` for the low-noise one)."""
import copy
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from reangle.models.lora import LORA_FILE, LORA_FILE_2, LoraFileError, second_expert_lora
from reangle.models.wan import (A14B_BOUNDARY_RATIO, FULL_SIZE_TRANSFORMERS, WAN22_I2V_A14B, ModelLoadError,
                                TEXT_LENGTH, expert_boundary, load_wan_components)
from reangle.models.wan_i2v import WanExperts, WanI2V, high_noise_share, shifted_sigmas
from reangle.sampling.sampler import SampleRequest, SamplingSettings
from reangle.sampling.wan import WanSampler

C, F, H, W = 16, 3, 4, 6          # latents of 9 frames of 32 x 48 (8x VAE)
N, PH, PW = 9, 32, 48


@pytest.fixture(scope="module")
def parts(tiny_wan22_a14b_dir):
    return load_wan_components(str(tiny_wan22_a14b_dir))


@pytest.fixture(scope="module")
def spec(tiny_wan22_a14b_dir):
    spec = WanI2V(str(tiny_wan22_a14b_dir), weights_dtype="fp32", lora_rank=4, lora_alpha=4,
                  gradient_checkpointing=False)
    spec.load_diffusion_model()
    return spec


def test_the_tiny_variant_has_two_experts_and_no_clip(tiny_wan22_a14b_dir, parts, spec):
    tiny = load_wan_components("tiny", ["transformer_2"], tiny={"variant": "i2v_a14b"},
                               cache_dir=tiny_wan22_a14b_dir.parent.parent)
    assert tiny.source == str(tiny_wan22_a14b_dir) and tiny.boundary_ratio == A14B_BOUNDARY_RATIO == 0.9
    high, low = parts.transformer.state_dict(), parts.transformer_2.state_dict()
    assert high.keys() == low.keys() and not all(torch.equal(high[k], low[k]) for k in high)  # two experts
    assert parts.image_encoder is None and parts.image_processor is None
    for t in (parts.transformer.config, parts.transformer_2.config):
        assert (t.in_channels, t.out_channels, t.image_dim, t.added_kv_proj_dim) == (36, 16, None, None)
    assert parts.vae.config.z_dim == 16 and parts.scheduler.config.flow_shift == 5.0
    assert parts.pipeline().config.boundary_ratio == 0.9
    spec.check_supported()
    assert spec.conditioning() == "channels" and not spec.takes_image_tokens()
    assert spec.cached_video_tensors() == ("video_mean", "video_logvar", "condition")
    net = spec.load_diffusion_model()
    assert isinstance(net, WanExperts) and net.transformer is spec.transformer and net.transformer_2 is spec.transformer_2
    trainable = {n.split(".")[0] for n, p in net.named_parameters() if p.requires_grad}
    assert trainable == {"transformer", "transformer_2"}
    assert all("lora_" in n for n, p in net.named_parameters() if p.requires_grad)


def test_a_model_index_with_half_of_the_two_expert_layout_is_refused():
    assert expert_boundary({"transformer_2": [None, None]}, "m") is None
    with pytest.raises(ModelLoadError, match="without a boundary_ratio"):
        expert_boundary({"transformer_2": ["diffusers", "WanTransformer3DModel"]}, "m")
    with pytest.raises(ModelLoadError, match="without a transformer_2"):
        expert_boundary({"boundary_ratio": 0.9}, "m")


def test_high_noise_share_is_the_fraction_of_drawn_sigmas_above_the_boundary():
    u = torch.sigmoid(torch.randn(400_000, generator=torch.Generator().manual_seed(0)))
    for shift in (3.0, 5.0):
        drawn = (shifted_sigmas(u, shift) >= 0.9).double().mean().item()
        assert abs(high_noise_share(0.9, shift) - drawn) < 3e-3
    assert round(high_noise_share(0.9, 5.0), 3) == 0.278


def _batch(b, seed=123):
    g = torch.Generator().manual_seed(seed)
    return {"video_mean": torch.randn(b, F, C, H, W, generator=g),
            "video_logvar": torch.rand(b, F, C, H, W, generator=g) * 4 - 6,
            "condition": torch.randn(b, F, 4 + C, H, W, generator=g),
            "prompt_embeds": torch.randn(b, TEXT_LENGTH, 32, generator=g)}


def _recipe(batch, seed, mean, std, shift):
    """The step rebuilt by hand: x_t, timestep 1000 sigma, target (same draws, same order as documented)."""
    b = batch["video_mean"].shape[0]
    g = torch.Generator().manual_seed(seed)
    z = batch["video_mean"] + (0.5 * batch["video_logvar"]).exp() * torch.randn(b, F, C, H, W, generator=g)
    x0 = (z - mean) / std
    u = 1 / (1 + torch.exp(-torch.randn(b, generator=g)))
    sigma = shift * u / (1 + (shift - 1) * u)
    noise = torch.randn(b, F, C, H, W, generator=g)
    x_t = (1 - sigma.view(b, 1, 1, 1, 1)) * x0 + sigma.view(b, 1, 1, 1, 1) * noise
    return x_t, sigma * 1000, noise - x0


def _first_seed(b, wanted, shift):
    """The first step seed whose drawn sigmas put the ``b`` samples on the experts ``wanted`` (bool per sample)."""
    for seed in range(1000):
        g = torch.Generator().manual_seed(seed)
        torch.randn(b, F, C, H, W, generator=g)
        u = torch.sigmoid(torch.randn(b, generator=g))
        if ((shifted_sigmas(u, shift) * 1000 >= 900) == torch.tensor(wanted)).all():
            return seed
    raise AssertionError("no seed found")


def test_training_pair_routes_each_sample_to_the_expert_of_its_timestep(spec, tiny_wan22_a14b_dir):
    vae = json.loads((tiny_wan22_a14b_dir / "vae" / "config.json").read_text())
    shift = json.loads((tiny_wan22_a14b_dir / "scheduler" / "scheduler_config.json").read_text())["flow_shift"]
    mean, std = (torch.tensor(vae[k]).view(1, 1, C, 1, 1) for k in ("latents_mean", "latents_std"))
    batch, seed = _batch(2), _first_seed(2, [True, False], shift)            # one sample per expert
    pair = spec.training_pair(batch, torch.Generator().manual_seed(seed))
    x_t, t, target = _recipe(batch, seed, mean, std, shift)
    assert t[0] >= 900 > t[1]
    expected = []
    with torch.no_grad():
        for i, expert in enumerate((spec.transformer, spec.transformer_2)):   # high noise, then low noise
            model_in = torch.cat([x_t[i:i + 1], batch["condition"][i:i + 1]], dim=2).transpose(1, 2)
            expected.append(expert(hidden_states=model_in, timestep=t[i:i + 1],
                                   encoder_hidden_states=batch["prompt_embeds"][i:i + 1],
                                   return_dict=False)[0].transpose(1, 2))
        swapped = spec.transformer_2(hidden_states=torch.cat([x_t[:1], batch["condition"][:1]], dim=2).transpose(1, 2),
                                     timestep=t[:1], encoder_hidden_states=batch["prompt_embeds"][:1],
                                     return_dict=False)[0].transpose(1, 2)
    torch.testing.assert_close(pair.target, target, rtol=0, atol=1e-5)
    torch.testing.assert_close(pair.prediction.detach(), torch.cat(expected), rtol=0, atol=1e-5)
    assert (swapped - expected[0]).abs().max() > 1e-3                      # the experts do differ
    assert pair.trained is None and torch.equal(pair.weight, torch.ones(2))


@pytest.mark.parametrize("high", [True, False])
def test_only_the_lora_of_the_expert_that_ran_gets_a_gradient(spec, high):
    shift = spec.scheduler.config.flow_shift
    net = spec.load_diffusion_model()
    net.zero_grad(set_to_none=True)
    pair = spec.training_pair(_batch(1), torch.Generator().manual_seed(_first_seed(1, [high], shift)))
    ((pair.prediction - pair.target) ** 2).mean().backward()
    used, unused = (net.transformer, net.transformer_2) if high else (net.transformer_2, net.transformer)
    grads = [p.grad for p in used.parameters() if p.requires_grad]
    assert grads and all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0
    assert all(p.grad is None for p in unused.parameters())
    net.zero_grad(set_to_none=True)


def _image(seed):
    pixels = np.random.default_rng(seed).integers(0, 256, (PH, PW, 3), dtype=np.uint8)
    return Image.fromarray(pixels), torch.from_numpy(pixels).permute(2, 0, 1).float() / 255


def _stock(pipe, image, prompt, seed, steps, guidance, guidance_2):
    pipe.set_progress_bar_config(disable=True)
    return pipe(image=image, prompt=prompt, negative_prompt="", height=PH, width=PW, num_frames=N,
                num_inference_steps=steps, guidance_scale=guidance, guidance_scale_2=guidance_2, output_type="pt",
                generator=torch.Generator().manual_seed(seed), max_sequence_length=TEXT_LENGTH).frames[0]


def test_sampler_equals_the_stock_two_expert_pipeline_without_lora(parts):
    steps = 3
    timesteps = copy.deepcopy(parts.scheduler)
    timesteps.set_timesteps(steps)
    high = timesteps.timesteps >= 900
    assert high.any() and not high.all()                                # both experts act within the steps
    images = [_image(s) for s in (1, 2)]
    prompts = ["a red ball rolling on the floor", "Camera movement orbit left, a blue cube"]
    requests = [SampleRequest(t, p, seed, N) for (_, t), p, seed in zip(images, prompts, (11, 12))]
    settings = SamplingSettings(steps=steps, guidance=5.0, guidance_2=2.0)
    sampler = WanSampler(parts.transformer, parts.vae, copy.deepcopy(parts.scheduler), parts.text_encoder,
                         parts.tokenizer, transformer_2=parts.transformer_2, boundary_ratio=parts.boundary_ratio,
                         progress=False)
    embeddings = sampler.encode_prompts(prompts + [settings.negative_prompt])
    ours = sampler.sample(requests, embeddings, settings)
    for (pil, _), request, video in zip(images, requests, ours):
        reference = _stock(copy.copy(parts).pipeline(), pil, request.prompt, request.seed, steps, 5.0, 2.0)
        assert video.shape == reference.shape == (N, 3, PH, PW)
        assert (video - reference).abs().max().item() <= 1e-5
    same_scale = sampler.sample(requests[:1], embeddings, SamplingSettings(steps=steps, guidance=5.0))
    assert (same_scale[0] - ours[0]).abs().max().item() > 1e-4          # guidance_2 reaches the low-noise steps


def test_one_transformer_samplers_refuse_a_second_guidance(parts):
    sampler = WanSampler(parts.transformer, parts.vae, copy.deepcopy(parts.scheduler), parts.text_encoder,
                         parts.tokenizer, progress=False)
    request = SampleRequest(_image(1)[1], "a", 1, N)
    with pytest.raises(ValueError, match="guidance_2"):
        sampler.sample([request], sampler.encode_prompts(["a", ""]), SamplingSettings(steps=1, guidance_2=3.0))


def test_both_exported_loras_load_in_the_stock_pipeline_and_change_its_output(spec, parts, tmp_path):
    net = spec.load_diffusion_model()
    torch.manual_seed(5)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    path = spec.save_lora(tmp_path / "lora")
    assert path == tmp_path / "lora" / LORA_FILE and second_expert_lora(path) == tmp_path / "lora" / LORA_FILE_2
    pil, _ = _image(1)
    plain = _stock(copy.copy(parts).pipeline(), pil, "a red ball", 11, 3, 5.0, 5.0)
    stock = copy.copy(parts)
    stock.transformer, stock.transformer_2 = copy.deepcopy(parts.transformer), copy.deepcopy(parts.transformer_2)
    pipe = stock.pipeline()
    pipe.load_lora_weights(str(path.parent))
    high_only = _stock(pipe, pil, "a red ball", 11, 3, 5.0, 5.0)
    pipe.load_lora_weights(str(path.parent), weight_name=LORA_FILE_2, load_into_transformer_2=True)
    both = _stock(pipe, pil, "a red ball", 11, 3, 5.0, 5.0)
    assert (high_only - plain).abs().max().item() > 1e-3 and (both - high_only).abs().max().item() > 1e-3
    for ours, theirs in ((spec.transformer, pipe.transformer), (spec.transformer_2, pipe.transformer_2)):
        mine, loaded = ({re.sub(r"\.default(_\d+)?\.", ".", n): p for n, p in m.named_parameters() if "lora_" in n}
                        for m in (ours, theirs))
        assert mine and mine.keys() == loaded.keys() and all(torch.equal(p, loaded[n]) for n, p in mine.items())
    path.with_name(LORA_FILE_2).unlink()
    with pytest.raises(LoraFileError, match="low-noise"):
        second_expert_lora(path)


def test_full_size_experts_and_presets_agree_with_the_released_model():
    config = FULL_SIZE_TRANSFORMERS[WAN22_I2V_A14B]
    assert (config["in_channels"], config["image_dim"], config["num_layers"]) == (36, None, 40)
    assert WanI2V.frame_grid({"pretrained": WAN22_I2V_A14B}).spatial == 16
    assert WanI2V.frame_grid({"pretrained": "tiny", "wan_tiny": {"variant": "i2v_a14b"}}).spatial == 16
    from reangle.config import load_config
    from reangle.sampling.settings import SampleOptions

    preset = load_config(["configs/static.yaml", "configs/backbone/wan2.2_i2v_a14b.yaml"], ["data.video=clip.mp4"])
    assert (preset.model.pretrained, preset.data.num_frames, preset.data.height, preset.data.width,
            preset.data.fps, preset.lora.rank, preset.train.steps) == (WAN22_I2V_A14B, 81, 480, 832, 16, 128, 400)
    settings = SampleOptions.from_config(preset).settings
    assert (settings.steps, settings.guidance, settings.guidance_2) == (40, 3.5, 3.5)
    tiny = load_config(["configs/presets/tiny_wan.yaml", "configs/presets/tiny_wan22_a14b.yaml"])
    assert tiny.model.wan_tiny.variant == "i2v_a14b"


def test_sample_guidance_2_is_a_number_for_the_wan_family_only():
    from reangle.config import ConfigError, load_config
    from reangle.sampling.settings import SampleOptions

    def settings(preset, value):
        return SampleOptions.from_config(load_config([preset], overrides=[f"sample.guidance_2={value}"])).settings

    assert settings("configs/presets/tiny_wan.yaml", 2.5).guidance_2 == 2.5
    assert settings("configs/presets/tiny_wan.yaml", "null").guidance_2 is None
    with pytest.raises(ConfigError, match="a number or null"):
        settings("configs/presets/tiny_wan.yaml", "abc")
    with pytest.raises(ConfigError, match="one transformer"):
        settings("configs/presets/tiny.yaml", 2.5)
