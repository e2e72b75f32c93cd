"""Wan2.2-TI2V on the tiny random model (``model.wan_tiny.variant: ti2v``): loading through the one Wan
path, the training step rebuilt from its recipe (first latent frame replaced by the clean condition,
per-token timesteps, frame 0 out of the loss), the cached condition against diffusers'
``WanImageToVideoPipeline(expand_timesteps=True).prepare_latents``, our sampler against that pipeline,
and the exported LoRA in the stock pipeline."""
import copy
import json
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import random_lora_file
from reangle.models.cogvideox import ModelLoadError
from reangle.models.wan import TEXT_LENGTH, load_wan_components
from reangle.models.wan_i2v import WanI2V
from reangle.sampling.sampler import SampleRequest, SamplingSettings
from reangle.sampling.wan import WanSampler
from reangle.training.loss import masked_loss

B, F, C, H, W = 2, 3, 48, 4, 6  # latents of 9 frames of 64 x 96 (16x VAE)
N, PH, PW = 9, 64, 96


@pytest.fixture(scope="module")
def parts(tiny_wan22_dir):
    return load_wan_components(str(tiny_wan22_dir))


@pytest.fixture(scope="module")
def spec(tiny_wan22_dir):
    spec = WanI2V(str(tiny_wan22_dir), weights_dtype="fp32", lora_rank=4, lora_alpha=4, gradient_checkpointing=False)
    spec.load_diffusion_model()
    return spec


def test_the_tiny_variant_loads_through_the_one_wan_path(tiny_wan22_dir, parts):
    tiny = load_wan_components("tiny", ["transformer"], tiny={"variant": "ti2v"},
                               cache_dir=tiny_wan22_dir.parent.parent)
    assert tiny.source == str(tiny_wan22_dir)
    a, b = tiny.transformer.state_dict(), parts.transformer.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert parts.image_encoder is None and parts.image_processor is None   # no CLIP in Wan2.2
    t, v = parts.transformer.config, parts.vae.config
    assert (t.in_channels, t.out_channels, t.image_dim, v.z_dim) == (48, 48, None, 48)
    assert (v.scale_factor_spatial, v.patch_size, v.is_residual) == (16, 2, True)
    assert parts.scheduler.config.flow_shift == 5.0
    assert json.loads((tiny_wan22_dir / "model_index.json").read_text())["expand_timesteps"] is True
    assert parts.pipeline().config.expand_timesteps is True


def test_the_spec_tells_the_layouts_apart_from_the_configs(spec, tiny_wan_dir, tiny_wan22_dir):
    wan21 = WanI2V(str(tiny_wan_dir), weights_dtype="fp32")
    assert (spec.conditioning(), wan21.conditioning()) == ("first_latent", "channels")
    assert spec.cached_video_tensors() == ("video_mean", "video_logvar", "condition")
    assert "image_tokens" in wan21.cached_video_tensors()
    assert spec.latent_mask(torch.ones(N, PH, PW, dtype=torch.bool)).shape == (F, H, W)
    assert WanI2V.frame_grid({"pretrained": str(tiny_wan22_dir)}).spatial == 32
    assert WanI2V.frame_grid({"pretrained": "tiny", "wan_tiny": {"variant": "ti2v"}}).spatial == 32
    assert WanI2V.frame_grid({"pretrained": "tiny", "wan_tiny": {}}).spatial == 16


def test_two_expert_models_are_refused(tiny_wan_dir, tmp_path):
    """A folder whose model_index names a transformer_2 and a boundary (Wan2.2-A14B's layout)."""
    folder = tmp_path / "a14b"
    shutil.copytree(tiny_wan_dir, folder)
    index = json.loads((folder / "model_index.json").read_text())
    index.update(transformer_2=["diffusers", "WanTransformer3DModel"], boundary_ratio=0.9)
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match="two-expert"):
        WanI2V(str(folder), weights_dtype="fp32").check_supported()


def _batch():
    g = torch.Generator().manual_seed(123)
    return {"video_mean": torch.randn(B, F, C, H, W, generator=g),
            "video_logvar": torch.rand(B, F, C, H, W, generator=g) * 4 - 6,
            "condition": torch.randn(B, 1, C, H, W, generator=g),
            "prompt_embeds": torch.randn(B, TEXT_LENGTH, 32, generator=g)}


def test_training_pair_matches_the_step_built_from_the_recipe(spec, tiny_wan22_dir):
    batch, seed = _batch(), 7
    pair = spec.training_pair(batch, torch.Generator().manual_seed(seed))

    vae = json.loads((tiny_wan22_dir / "vae" / "config.json").read_text())
    shift = json.loads((tiny_wan22_dir / "scheduler" / "scheduler_config.json").read_text())["flow_shift"]
    mean = torch.tensor(vae["latents_mean"]).view(1, 1, C, 1, 1)
    std = torch.tensor(vae["latents_std"]).view(1, 1, C, 1, 1)
    g = torch.Generator().manual_seed(seed)
    z = batch["video_mean"] + (0.5 * batch["video_logvar"]).exp() * torch.randn(B, F, C, H, W, generator=g)
    x0 = (z - mean) / std
    u = 1 / (1 + torch.exp(-torch.randn(B, generator=g)))
    sigma = shift * u / (1 + (shift - 1) * u)
    noise = torch.randn(B, F, C, H, W, generator=g)
    x_t = (1 - sigma.view(B, 1, 1, 1, 1)) * x0 + sigma.view(B, 1, 1, 1, 1) * noise
    x_t[:, :1] = batch["condition"]                                   # the clean start frame in latent frame 0
    tokens_per_frame = (H // 2) * (W // 2)
    timestep = torch.cat([torch.zeros(B, tokens_per_frame),                # [B, seq_len], 0 on frame 0's tokens
                          (sigma * 1000)[:, None].expand(B, (F - 1) * tokens_per_frame)], dim=1)
    with torch.no_grad():
        v = spec.transformer(hidden_states=x_t.transpose(1, 2), timestep=timestep,
                             encoder_hidden_states=batch["prompt_embeds"], return_dict=False)[0].transpose(1, 2)
    torch.testing.assert_close(pair.target, noise - x0, rtol=0, atol=1e-5)
    torch.testing.assert_close(pair.prediction.detach(), v, rtol=0, atol=1e-5)
    expected = torch.ones(B, F, H, W, dtype=torch.bool)
    expected[:, 0] = False
    assert torch.equal(pair.trained, expected) and torch.equal(pair.weight, torch.ones(B))
    assert pair.prediction.requires_grad


def test_the_first_latent_frame_is_left_out_of_the_loss(spec):
    pair = spec.training_pair(_batch(), torch.Generator().manual_seed(3))
    visible = torch.rand(B, F, H, W, generator=torch.Generator().manual_seed(0)) > 0.3
    for mask in (None, visible):                       # train.masked false and true
        used = pair.loss_mask(mask)
        assert not used[:, 0].any() and torch.equal(used[:, 1:], torch.ones_like(used[:, 1:]) if mask is None
                                                    else visible[:, 1:])
        for normalize in ("all", "visible"):
            prediction = pair.prediction.detach().clone().requires_grad_(True)
            masked_loss(prediction, pair.target, pair.weight, used, normalize).sum().backward()
            assert not prediction.grad[:, 0].any() and prediction.grad[:, 1:].abs().sum() > 0
    # the module's reduction: an unmasked Wan2.1 pair has no `trained` and keeps the mask it is given
    assert pair.__class__(pair.prediction, pair.target, pair.weight).loss_mask(visible) is visible


def test_cached_condition_equals_the_pipelines_first_frame_latent(spec, parts):
    pipe = parts.pipeline()
    spec.load_encoders(torch.device("cpu"))
    pixels = np.random.default_rng(0).integers(0, 256, (N, PH, PW, 3), dtype=np.uint8)
    frames = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    cached = spec.encode_video(frames, torch.Generator().manual_seed(0))
    image = pipe.video_processor.preprocess(Image.fromarray(pixels[0]), height=PH, width=PW)
    with torch.no_grad():
        _, condition, first_frame_mask = pipe.prepare_latents(image, 1, C, PH, PW, N, torch.float32,
                                                              torch.device("cpu"), torch.Generator().manual_seed(0))
    assert set(cached) == {"video_mean", "video_logvar", "condition"}
    assert cached["condition"].shape == (1, C, H, W) and cached["video_mean"].shape == (F, C, H, W)
    torch.testing.assert_close(cached["condition"], condition[0].transpose(0, 1), rtol=0, atol=1e-6)
    assert first_frame_mask[0, 0, 0].abs().sum() == 0 and first_frame_mask[0, 0, 1:].min() == 1
    spec.unload_encoders()


def _image(seed):
    pixels = np.random.default_rng(seed).integers(0, 256, (PH, PW, 3), dtype=np.uint8)
    return Image.fromarray(pixels), torch.from_numpy(pixels).permute(2, 0, 1).float() / 255


def _stock(pipe, image, prompt, seed, steps, guidance):
    pipe.set_progress_bar_config(disable=True)
    return pipe(image=image, prompt=prompt, negative_prompt="", height=PH, width=PW, num_frames=N,
                num_inference_steps=steps, guidance_scale=guidance, output_type="pt",
                generator=torch.Generator().manual_seed(seed), max_sequence_length=TEXT_LENGTH).frames[0]


def test_sampler_equals_the_stock_expand_timesteps_pipeline_without_lora(parts):
    images = [_image(s) for s in (1, 2)]
    prompts = ["a red ball rolling on the floor", "Camera movement orbit left, a blue cube"]
    requests = [SampleRequest(t, p, seed, N) for (_, t), p, seed in zip(images, prompts, (11, 12))]
    settings = SamplingSettings(steps=3, guidance=5.0)
    sampler = WanSampler(parts.transformer, parts.vae, copy.deepcopy(parts.scheduler), parts.text_encoder,
                         parts.tokenizer, progress=False)
    embeddings = sampler.encode_prompts(prompts + [settings.negative_prompt])
    ours = sampler.sample(requests, embeddings, settings)
    for (pil, _), request, video in zip(images, requests, ours):
        reference = _stock(copy.copy(parts).pipeline(), pil, request.prompt, request.seed, 3, 5.0)
        assert video.shape == reference.shape == (N, 3, PH, PW)
        assert (video - reference).abs().max().item() <= 1e-5
    assert (ours[0] - ours[1]).abs().max().item() > 1e-3


def test_exported_lora_loads_in_the_stock_pipeline_and_changes_its_output(parts, tmp_path):
    from diffusers import WanImageToVideoPipeline

    path, _ = random_lora_file(parts.transformer, tmp_path, pipeline=WanImageToVideoPipeline)
    pil, _ = _image(1)
    plain = _stock(copy.copy(parts).pipeline(), pil, "a red ball", 11, 2, 5.0)
    stock = copy.copy(parts)
    stock.transformer = copy.deepcopy(parts.transformer)
    pipe = stock.pipeline()
    pipe.load_lora_weights(str(path))
    assert pipe.transformer.peft_config
    assert (_stock(pipe, pil, "a red ball", 11, 2, 5.0) - plain).abs().max().item() > 1e-3
