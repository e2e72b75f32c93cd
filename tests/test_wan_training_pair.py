"""Wan's stage II step rebuilt from the flow-matching recipe (the Wan report's rectified flow: logit-normal
t, SD3's shift, velocity eps - x0), with the tiny Wan2.1-I2V, against ``WanI2V.training_pair``; the cached
condition against diffusers' WanImageToVideoPipeline.prepare_latents / encode_image."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from reangle.models.wan import load_wan_components
from reangle.models.wan_i2v import WanI2V

B, F, C, H, W = 3, 3, 16, 8, 12  # latents of 9 frames of 64 x 96


@pytest.fixture(scope="module")
def spec(tiny_wan_dir):
    spec = WanI2V(str(tiny_wan_dir), weights_dtype="fp32", lora_rank=4, lora_alpha=4, gradient_checkpointing=False)
    spec.load_diffusion_model()
    return spec


def _batch():
    g = torch.Generator().manual_seed(123)
    return {"video_mean": torch.randn(B, F, C, H, W, generator=g),
            "video_logvar": torch.rand(B, F, C, H, W, generator=g) * 4 - 6,
            "condition": torch.randn(B, F, C + 4, H, W, generator=g),
            "image_tokens": torch.randn(B, 17, 32, generator=g),
            "prompt_embeds": torch.randn(B, 512, 32, generator=g)}


def test_training_pair_matches_the_step_built_from_the_formulas(spec, tiny_wan_dir):
    batch, seed = _batch(), 7
    pair = spec.training_pair(batch, torch.Generator().manual_seed(seed))

    vae = json.loads((tiny_wan_dir / "vae" / "config.json").read_text())
    shift = json.loads((tiny_wan_dir / "scheduler" / "scheduler_config.json").read_text())["flow_shift"]
    mean = torch.tensor(vae["latents_mean"]).view(1, 1, C, 1, 1)
    std = torch.tensor(vae["latents_std"]).view(1, 1, C, 1, 1)
    g = torch.Generator().manual_seed(seed)
    z = batch["video_mean"] + (0.5 * batch["video_logvar"]).exp() * torch.randn(B, F, C, H, W, generator=g)
    x0 = (z - mean) / std                                   # the pipeline's per-channel latent normalisation
    u = 1 / (1 + torch.exp(-torch.randn(B, generator=g)))  # logit-normal(0, 1)
    sigma = shift * u / (1 + (shift - 1) * u)               # SD3 Eq. 23
    noise = torch.randn(B, F, C, H, W, generator=g)
    s = sigma.view(B, 1, 1, 1, 1)
    x_t = (1 - s) * x0 + s * noise
    with torch.no_grad():
        v = spec.transformer(hidden_states=torch.cat([x_t, batch["condition"]], dim=2).transpose(1, 2),
                             timestep=sigma * 1000, encoder_hidden_states=batch["prompt_embeds"],
                             encoder_hidden_states_image=batch["image_tokens"], return_dict=False)[0].transpose(1, 2)
    torch.testing.assert_close(pair.target, noise - x0, rtol=0, atol=1e-5)
    torch.testing.assert_close(pair.prediction.detach(), v, rtol=0, atol=1e-5)
    assert torch.equal(pair.weight, torch.ones(B))
    assert pair.prediction.requires_grad  # the LoRA is trained through it


def test_the_step_depends_on_its_generator_only(spec):
    a = spec.training_pair(_batch(), torch.Generator().manual_seed(1))
    b = spec.training_pair(_batch(), torch.Generator().manual_seed(1))
    c = spec.training_pair(_batch(), torch.Generator().manual_seed(2))
    assert torch.equal(a.target, b.target) and not torch.equal(a.target, c.target)


def test_cached_tensors_equal_the_pipelines_condition_and_embeddings(spec, tiny_wan_dir):
    parts = load_wan_components(str(tiny_wan_dir))
    pipe = parts.pipeline()
    spec.load_encoders(torch.device("cpu"))
    pixels = np.random.default_rng(0).integers(0, 256, (9, 64, 96, 3), dtype=np.uint8)
    frames = torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 255
    cached = spec.encode_video(frames, torch.Generator().manual_seed(0))
    image = pipe.video_processor.preprocess(Image.fromarray(pixels[0]), height=64, width=96)
    with torch.no_grad():
        _, condition = pipe.prepare_latents(image, 1, 16, 64, 96, 9, torch.float32, torch.device("cpu"),
                                            torch.Generator().manual_seed(0))
        tokens = pipe.encode_image(Image.fromarray(pixels[0]), torch.device("cpu"))
        prompt, _ = pipe.encode_prompt("a red ball", do_classifier_free_guidance=False, max_sequence_length=512)
    torch.testing.assert_close(cached["condition"], condition[0].transpose(0, 1), rtol=0, atol=1e-6)
    torch.testing.assert_close(cached["image_tokens"], tokens[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(spec.encode_prompt("a red ball")["prompt_embeds"], prompt[0], rtol=0, atol=1e-6)
    assert cached["video_mean"].shape == (F, C, H, W)
    spec.unload_encoders()
