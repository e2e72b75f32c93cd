"""Measured effect of float8 weight storage on tiny models' outputs (CPU): python benchmarks/storage_effect.py

The same inputs and seeds through the tiny random CogVideoX-I2V (stage II: one training step's loss and
LoRA gradient, and one sampled video) and the tiny FLUX + ControlNet (stage III: one inpainted view),
with the frozen weights stored as fp32, bf16, and fp8 computed in bf16 (``model.storage_dtype`` /
``inpaint.storage_dtype`` = fp8 with ``weights_dtype`` bf16, as the GPU presets set them). Each is
compared with the fp32 run, so the fp8 effect reads next to bf16's own. Tiny random weights are not
the released ones: this measures the mechanism (which layers are rounded, how the error propagates),
not the released models' quality. Prints JSON.
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

VARIANTS = {"fp32": ("fp32", None), "bf16": ("bf16", None), "fp8_bf16": ("bf16", "fp8")}  # weights, storage


def diff(a: torch.Tensor, b: torch.Tensor) -> dict:
    d = (a.float() - b.float()).abs()
    return {"max_abs": float(d.max()), "mean_abs": float(d.mean()), "reference_mean_abs": float(b.float().abs().mean())}


def stage2(cache: str, weights: str, storage: str | None) -> dict:
    """Loss, LoRA-B gradient (one step, bf16 autocast unless fp32, gradient checkpointing) and a sampled
    video (4 steps, CFG 6) of the tiny CogVideoX-I2V."""
    from reangle.models.cogvideox import load_components
    from reangle.models.cogvideox_i2v import CogVideoXI2V
    from reangle.sampling.sampler import CogVideoXSampler, SampleRequest, SamplingSettings

    spec = CogVideoXI2V("tiny", cache_dir=cache, weights_dtype=weights, lora_rank=4, lora_alpha=4,
                        image_condition="cached")
    spec.storage_dtype = storage
    torch.manual_seed(0)
    transformer = spec.load_diffusion_model()
    g = torch.Generator().manual_seed(1)
    batch = {"video_mean": torch.randn(1, 3, 16, 8, 12, generator=g), "video_logvar": torch.full((1, 3, 16, 8, 12), -4.0),
             "image_mean": torch.randn(1, 1, 16, 8, 12, generator=g),
             "image_logvar": torch.full((1, 1, 16, 8, 12), -4.0), "prompt_embeds": torch.randn(1, 226, 32, generator=g)}
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=weights != "fp32"):
        pair = spec.training_pair(batch, torch.Generator().manual_seed(2))
    loss = (pair.weight.view(-1, 1, 1, 1, 1) * (pair.prediction - pair.target).square()).mean()
    loss.backward()
    grad = torch.cat([p.grad.flatten() for n, p in transformer.named_parameters() if "lora_B" in n])
    parts = load_components(spec.source, ["vae", "text_encoder", "tokenizer"], dtype=spec.weights_dtype)
    sampler = CogVideoXSampler(transformer, parts.vae, spec.scheduler, parts.text_encoder, parts.tokenizer,
                               progress=False)
    request = SampleRequest(torch.rand(3, 64, 96, generator=torch.Generator().manual_seed(4)), "a red ball", 7, 9)
    video = sampler.sample([request], sampler.encode_prompts(["a red ball", ""]), SamplingSettings(steps=4))[0]
    return {"loss": loss.detach(), "lora_b_grad": grad, "video": video}


def stage3(cache: str, weights: str, storage: str | None) -> torch.Tensor:
    """One view inpainted by the tiny FLUX + ControlNet (4 SDE steps, S = 1) as stage III loads them."""
    from reangle.config import load_config
    from reangle.inpaint.multiview import InpaintSettings, ViewInput, inpaint_views
    from reangle.inpaint.run import load_models

    cfg = load_config(["configs/presets/tiny.yaml"], [f"run.cache_dir={cache}", f"inpaint.weights_dtype={weights}",
                                                      f"inpaint.storage_dtype={storage or 'null'}"])
    prompt = "a colour ramp"
    inpainter, met3r = load_models(cfg, torch.device("cpu"), [prompt])
    g = torch.Generator().manual_seed(5)
    image, visible = torch.rand(3, 64, 64, generator=g), torch.ones(64, 64)
    visible[:, :24] = 0
    out = inpaint_views(inpainter, met3r, [ViewInput("a", image, visible, prompt)],
                        InpaintSettings(steps=4, candidates=1, size=64), progress=False)
    return out[0].image


def main() -> dict:
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as cache:
        s2 = {k: stage2(cache, *v) for k, v in VARIANTS.items()}
        s3 = {k: stage3(cache, *v) for k, v in VARIANTS.items()}
    ref2, ref3 = s2["fp32"], s3["fp32"]
    result = {"machine": "CPU (tiny random models, float32 reference)", "variants": {k: {"weights_dtype": w,
              "storage_dtype": s} for k, (w, s) in VARIANTS.items()}, "vs_fp32": {}}
    for k in ("bf16", "fp8_bf16"):
        result["vs_fp32"][k] = {
            "stage2_loss_rel": float((s2[k]["loss"] - ref2["loss"]).abs() / ref2["loss"].abs()),
            "stage2_lora_grad_rel": float((s2[k]["lora_b_grad"] - ref2["lora_b_grad"]).norm()
                                          / ref2["lora_b_grad"].norm()),
            "sampled_video_0_1": diff(s2[k]["video"], ref2["video"]),
            "stage3_image_0_1": diff(s3[k], ref3)}
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
