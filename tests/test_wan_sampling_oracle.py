"""Our Wan sampler equals diffusers' WanImageToVideoPipeline on the tiny random Wan2.1-I2V (same inputs
and seeds, guidance on and off); a LoRA we export loads with the pipeline's own ``load_lora_weights``."""
import copy

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import random_lora_file
from reangle.models.lora import lora_state_dict
from reangle.models.wan import TEXT_LENGTH, load_wan_components
from reangle.sampling.sampler import SampleRequest, SamplingSettings
from reangle.sampling.wan import WanSampler

H, W, N, STEPS = 32, 48, 5, 3
PROMPTS = ["a red ball rolling on the floor", "Camera movement orbit left, a blue cube"]


@pytest.fixture(scope="module")
def parts(tiny_wan_dir):
    return load_wan_components(str(tiny_wan_dir))


def _image(seed):
    """An 8-bit image (PIL for the pipeline) and the same pixels as a [3, H, W] tensor in [0, 1]."""
    pixels = np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)
    return Image.fromarray(pixels), torch.from_numpy(pixels).permute(2, 0, 1).float() / 255


def _stock(pipe, image, prompt, seed, steps, guidance):
    pipe.set_progress_bar_config(disable=True)
    out = pipe(image=image, prompt=prompt, negative_prompt="", height=H, width=W, num_frames=N,
               num_inference_steps=steps, guidance_scale=guidance, output_type="pt",
               generator=torch.Generator().manual_seed(seed), max_sequence_length=TEXT_LENGTH)
    return out.frames[0]


def _ours(parts, transformer, requests, settings):
    sampler = WanSampler(transformer, parts.vae, copy.deepcopy(parts.scheduler), parts.text_encoder, parts.tokenizer,
                         image_processor=parts.image_processor, image_encoder=parts.image_encoder, progress=False)
    embeddings = sampler.encode_prompts([r.prompt for r in requests] + [settings.negative_prompt])
    sampler.release_text_encoder()
    return sampler.sample(requests, embeddings, settings)


@pytest.mark.parametrize("guidance", [5.0, 1.0])
def test_wan_sampler_equals_stock_pipeline_without_lora(parts, guidance):
    images = [_image(s) for s in (1, 2)]
    requests = [SampleRequest(t, p, seed, N) for (_, t), p, seed in zip(images, PROMPTS, (11, 12))]
    ours = _ours(parts, parts.transformer, requests, SamplingSettings(steps=STEPS, guidance=guidance))
    for (pil, _), request, video in zip(images, requests, ours):
        reference = _stock(copy.copy(parts).pipeline(), pil, request.prompt, request.seed, STEPS, guidance)
        assert video.shape == reference.shape == (N, 3, H, W)
        assert (video - reference).abs().max().item() <= 1e-5
    assert (ours[0] - ours[1]).abs().max().item() > 1e-3  # different inputs, different videos


def test_exported_wan_lora_loads_in_the_stock_pipeline_and_changes_its_output(parts, tmp_path):
    from diffusers import WanImageToVideoPipeline

    path, transformer = random_lora_file(parts.transformer, tmp_path, pipeline=WanImageToVideoPipeline)
    pil, _ = _image(1)
    plain = _stock(copy.copy(parts).pipeline(), pil, PROMPTS[0], 11, 2, 5.0)
    stock = copy.copy(parts)
    stock.transformer = copy.deepcopy(parts.transformer)
    pipe = stock.pipeline()
    pipe.load_lora_weights(str(path))
    adapted = _stock(pipe, pil, PROMPTS[0], 11, 2, 5.0)
    assert (adapted - plain).abs().max().item() > 1e-3
    # the adapter the pipeline loaded holds our weights (diffusers adds zero LoRAs on the image
    # cross-attention's add_k_proj / add_v_proj, which we do not target)
    from peft import get_peft_model_state_dict

    (name,) = pipe.transformer.peft_config
    loaded = get_peft_model_state_dict(pipe.transformer, adapter_name=name)
    ours = lora_state_dict(transformer)
    assert set(ours) <= set(loaded) and all(torch.equal(loaded[k], ours[k]) for k in ours)
    assert all(not loaded[k].any() for k in set(loaded) - set(ours) if "lora_B" in k)
