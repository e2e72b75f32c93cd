"""Our sampler equals diffusers' CogVideoXImageToVideoPipeline on the tiny model (same inputs and seeds),
with and without an exported LoRA, with constant and dynamic (``use_dynamic_cfg``) guidance."""
import copy

import pytest
import torch
from diffusers import CogVideoXDPMScheduler

from conftest import random_lora_file
from reangle.models.cogvideox import COMPONENTS, load_components
from reangle.models.lora import load_lora
from reangle.sampling.sampler import CogVideoXSampler, SampleRequest, SamplingSettings

H, W, N, STEPS = 64, 96, 9, 3
PROMPTS = ["a red ball rolling on the floor", "Camera movement orbit left, a blue cube"]


@pytest.fixture(scope="module")
def parts(tiny_model_dir):
    return load_components(str(tiny_model_dir), COMPONENTS)


def _stock(parts, transformer, scheduler, request, steps, guidance, attention_kwargs=None, dynamic=False):
    pipe = copy.copy(parts)
    pipe.transformer, pipe.scheduler = transformer, scheduler
    pipe = pipe.pipeline()
    pipe.set_progress_bar_config(disable=True)
    out = pipe(image=request.image[None], prompt=request.prompt, height=H, width=W, num_frames=N,
               num_inference_steps=steps, guidance_scale=guidance, generator=torch.Generator().manual_seed(request.seed),
               output_type="pt", attention_kwargs=attention_kwargs, use_dynamic_cfg=dynamic,
               max_sequence_length=transformer.config.max_text_seq_length)
    return out.frames[0]


def _ours(parts, transformer, scheduler, requests, settings):
    sampler = CogVideoXSampler(transformer, parts.vae, scheduler, parts.text_encoder, parts.tokenizer,
                               progress=False)
    embeddings = sampler.encode_prompts([r.prompt for r in requests] + [settings.negative_prompt])
    sampler.release_text_encoder()
    return sampler.sample(requests, embeddings, settings)


def _requests():
    g = torch.Generator().manual_seed(1)
    return [SampleRequest(torch.rand(3, H, W, generator=g), p, seed, N) for p, seed in zip(PROMPTS, (11, 12))]


@pytest.mark.parametrize("scheduler_kind,guidance", [("ddim", 6.0), ("dpm", 6.0), ("ddim", 1.0)])
def test_sampler_equals_stock_pipeline_without_lora(parts, scheduler_kind, guidance):
    scheduler = parts.scheduler if scheduler_kind == "ddim" else CogVideoXDPMScheduler.from_config(parts.scheduler.config)
    requests = _requests()
    ours = _ours(parts, parts.transformer, scheduler, requests, SamplingSettings(steps=STEPS, guidance=guidance))
    for request, video in zip(requests, ours):
        reference = _stock(parts, parts.transformer, scheduler, request, STEPS, guidance)
        assert video.shape == reference.shape == (N, 3, H, W)
        assert (video - reference).abs().max().item() <= 1e-5


@pytest.mark.parametrize("scheduler_kind", ["ddim", "dpm"])
def test_dynamic_guidance_equals_stock_pipeline_use_dynamic_cfg(parts, scheduler_kind):
    scheduler = parts.scheduler if scheduler_kind == "ddim" else CogVideoXDPMScheduler.from_config(parts.scheduler.config)
    requests = _requests()[:1]
    settings = SamplingSettings(steps=STEPS, guidance=6.0, dynamic_guidance=True)
    ours = _ours(parts, parts.transformer, scheduler, requests, settings)[0]
    reference = _stock(parts, parts.transformer, scheduler, requests[0], STEPS, 6.0, dynamic=True)
    constant = _stock(parts, parts.transformer, scheduler, requests[0], STEPS, 6.0)
    assert (ours - reference).abs().max().item() <= 1e-5
    assert (reference - constant).abs().max().item() > 1e-3  # the ramp changes the video


@pytest.mark.parametrize("lora_scale", [1.0, 0.5])
def test_sampler_with_lora_equals_stock_pipeline_after_load_lora_weights(parts, tmp_path, lora_scale):
    lora, _ = random_lora_file(parts.transformer, tmp_path)
    ours_transformer = copy.deepcopy(parts.transformer)
    load_lora(ours_transformer, lora)
    stock_parts = copy.copy(parts)
    stock_parts.transformer = copy.deepcopy(parts.transformer)
    pipe = stock_parts.pipeline()
    pipe.load_lora_weights(str(lora))
    requests = _requests()[:1]
    settings = SamplingSettings(steps=2, guidance=6.0, lora_scale=lora_scale)
    ours = _ours(parts, ours_transformer, parts.scheduler, requests, settings)[0]
    plain = _ours(parts, parts.transformer, parts.scheduler, requests, settings)[0]
    reference = _stock(parts, pipe.transformer, parts.scheduler, requests[0], 2, 6.0,
                       attention_kwargs={"scale": lora_scale})
    assert (ours - reference).abs().max().item() <= 1e-5
    assert (ours - plain).abs().max().item() > 1e-3  # the LoRA changes the video
