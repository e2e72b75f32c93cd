"""Seconds per video and peak memory of our sampler against diffusers' CogVideoXImageToVideoPipeline.

    python benchmarks/sample.py [--size tiny|full] [--views 2] [--steps 40] [--guidance 6.0]

``tiny``: the tiny random model at 9 x 64 x 96 (CPU or GPU). ``full`` (GPU, bf16): the
CogVideoX-5b-I2V transformer architecture with random weights at 49 x 480 x 720; the VAE
and T5 stay tiny random ones, so the figures are the transformer's. Both paths get one
one-step warm-up call, then sample the same views with the same seeds; prints one JSON
object with the largest difference between their videos. On the CPU the peak is the
process's max RSS (cumulative, so the second path measured cannot read lower than the first).
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from reangle.models.cogvideox import COMPONENTS, full_size_transformer_config, load_components  # noqa: E402
from reangle.sampling.sampler import CogVideoXSampler, SampleRequest, SamplingSettings  # noqa: E402


def _peak_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=("tiny", "full"), default="tiny")
    ap.add_argument("--views", type=int, default=2)
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--guidance", type=float, default=6.0)
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.size == "full" and device.type != "cuda":
        sys.exit("--size full needs a GPU")
    frames, height, width = (9, 64, 96) if args.size == "tiny" else (49, 480, 720)
    dtype = torch.float32 if args.size == "tiny" else torch.bfloat16
    with tempfile.TemporaryDirectory() as cache:
        parts = load_components("tiny", COMPONENTS, tiny={"height": height, "width": width, "num_frames": frames},
                                cache_dir=cache, dtype=dtype, device=device)
    if args.size == "full":
        from diffusers import CogVideoXTransformer3DModel
        config = {**full_size_transformer_config(), "text_embed_dim": parts.text_encoder.config.d_model}
        parts.transformer = CogVideoXTransformer3DModel.from_config(config).to(device, dtype).eval()
    g = torch.Generator().manual_seed(0)
    requests = [SampleRequest(torch.rand(3, height, width, generator=g), f"a red ball, view {i}", 100 + i, frames)
                for i in range(args.views)]
    settings = SamplingSettings(steps=args.steps, guidance=args.guidance)
    pipe = parts.pipeline()
    pipe.set_progress_bar_config(disable=True)
    max_len = parts.transformer.config.max_text_seq_length

    warm = SamplingSettings(steps=1, guidance=args.guidance)
    pipe(image=requests[0].image[None], prompt="warm up", height=height, width=width, num_frames=frames,
         num_inference_steps=1, guidance_scale=args.guidance, output_type="pt", max_sequence_length=max_len)
    warm_sampler = CogVideoXSampler(parts.transformer, parts.vae, parts.scheduler, parts.text_encoder,
                                    parts.tokenizer, device=device, progress=False)
    warm_sampler.sample(requests[:1], warm_sampler.encode_prompts([requests[0].prompt, ""]), warm)
    _reset(device)
    t0 = time.perf_counter()
    stock = [pipe(image=r.image[None], prompt=r.prompt, height=height, width=width, num_frames=frames,
                  num_inference_steps=args.steps, guidance_scale=args.guidance, output_type="pt",
                  generator=torch.Generator().manual_seed(r.seed), max_sequence_length=max_len).frames[0].float().cpu()
             for r in requests]
    stock_s = (time.perf_counter() - t0) / len(requests)
    stock_peak = _peak_mb(device)

    _reset(device)
    t0 = time.perf_counter()
    sampler = CogVideoXSampler(parts.transformer, parts.vae, parts.scheduler, parts.text_encoder, parts.tokenizer,
                               device=device, progress=False)
    embeddings = sampler.encode_prompts([r.prompt for r in requests] + [settings.negative_prompt])
    sampler.release_text_encoder()
    ours = sampler.sample(requests, embeddings, settings)
    ours_s = (time.perf_counter() - t0) / len(requests)
    ours_peak = _peak_mb(device)
    diff = max((a - b).abs().max().item() for a, b in zip(ours, stock))
    print(json.dumps({
        "size": args.size, "frames": frames, "height": height, "width": width, "steps": args.steps,
        "guidance": args.guidance, "views": args.views, "dtype": str(dtype).replace("torch.", ""),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else
        f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "ours_s_per_video": round(ours_s, 3), "stock_s_per_video": round(stock_s, 3),
        "peak_mb": {"ours": round(ours_peak, 1), "stock": round(stock_peak, 1),
                    "kind": "cuda max allocated" if device.type == "cuda" else "process max RSS"},
        "max_abs_diff": diff}, indent=1))


if __name__ == "__main__":
    main()
