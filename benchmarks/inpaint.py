"""Stage III cost: seconds per view and peak memory against S, split into transformer / decode / MEt3R.

Each setting runs in a fresh subprocess and inpaints ``--views`` views (the first two
jointly) with ``--steps`` SDE steps and S candidates. "batched" is our loop (candidates
through the transformer and VAE ``max_batch`` at a time, MEt3R pairs chunked by 8); the
baseline "naive" evaluates every candidate alone (batch 1, one MEt3R pair at a time) in
the same code. Both reuse the chosen candidate's model output, 1 + S (T - 1) transformer
calls per view; ``naive_calls_per_view`` states what recomputing it would cost,
(1 + S) T. Reported per setting: seconds per view, seconds per phase (this process), and
the peak memory added on top of the loaded models (CPU: peak RSS growth; GPU: peak
allocated).

``--inpainter controlnet fill`` also measures FLUX.1-Fill (default: the ControlNet only).
CPU: the tiny random FLUX, ControlNet (or Fill transformer) and MEt3R at ``--size`` (default
128). CUDA (when available): full-size FLUX.1-dev transformer + Beta ControlNet (or the
FLUX.1-Fill transformer) + VAE and full-size MEt3R
(DUSt3R ViT-L/512 DPT, DINO ViT-S/16 + FeatUp) with random bf16 weights at 1024 x 1024 and
random prompt embeddings (512 T5 tokens), so nothing is downloaded.

    python benchmarks/inpaint.py [--candidates 1 2 4] [--steps 4] [--views 3] [--size 128] [--inpainter ...]
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from peak_memory import PeakMemory  # noqa: E402

TINY_DUST3R = dict(enc_embed_dim=64, enc_depth=2, enc_num_heads=2, dec_embed_dim=64, dec_depth=2, dec_num_heads=2,
                   head_type="linear", img_size=(256, 256))
TINY_FEATUP = {"dino": {"embed_dim": 64, "depth": 2, "num_heads": 1}, "key_dim": 8}


def _full_size_components(device: str, fill: bool):
    """Random full-size FLUX.1-dev transformer + Beta ControlNet (``fill``: the FLUX.1-Fill transformer, a
    ``FluxFillPipeline``) and VAE in bf16, with random prompt embeddings."""
    import torch
    from diffusers import (AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxFillPipeline, FluxPipeline,
                           FluxTransformer2DModel)

    from reangle.models.flux import (SCHEDULER_CONFIG, FluxComponents, InpaintControlNet, beta_controlnet_config,
                                     fill_transformer_config)

    torch.set_default_dtype(torch.bfloat16)
    with torch.device(device):
        transformer = FluxTransformer2DModel(**(fill_transformer_config() if fill else {"guidance_embeds": True}))
        controlnet = None if fill else InpaintControlNet(**beta_controlnet_config())
        vae = AutoencoderKL(latent_channels=16, block_out_channels=(128, 256, 512, 512),
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                            layers_per_block=2, use_quant_conv=False, use_post_quant_conv=False,
                            shift_factor=0.1159, scaling_factor=0.3611)
    torch.set_default_dtype(torch.float32)
    pipeline_class = FluxFillPipeline if fill else FluxPipeline
    pipe = pipeline_class(scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG), vae=vae, text_encoder=None,
                          tokenizer=None, text_encoder_2=None, tokenizer_2=None, transformer=transformer)
    embeds = torch.randn(1, 512, 4096, device=device, dtype=torch.bfloat16)
    pooled = torch.randn(1, 768, device=device, dtype=torch.bfloat16)
    text_ids = torch.zeros(512, 3, device=device, dtype=torch.bfloat16)
    pipe.encode_prompt = lambda *args, **kwargs: (embeds, pooled, text_ids)  # no text encoders in the benchmark
    return pipe if fill else FluxComponents("random", "random", pipe, controlnet.eval())


def run_one(device: str, candidates: int, naive: bool, steps: int, views: int, size: int, inpainter: str) -> dict:
    """Inpaint ``views`` random views with one setting (runs in its own process)."""
    import torch

    from reangle.consistency import load_met3r
    from reangle.inpaint.inpainter import FluxControlNetInpainter, FluxFillInpainter
    from reangle.inpaint.multiview import InpaintSettings, Timings, ViewInput, inpaint_views
    from reangle.models.flux import load_flux, load_flux_fill
    from reangle.nets.dust3r import PRESETS

    torch.manual_seed(0)
    full, fill = device == "cuda", inpainter == "fill"
    if full:
        components = _full_size_components(device, fill)
        point, featup, dtype = dict(PRESETS["DUSt3R_ViTLarge_BaseDecoder_512_dpt"]), {"dino": {"arch": "vit_small"}}, \
            torch.bfloat16
    else:
        components = (load_flux_fill if fill else load_flux)("tiny", "tiny", cache_dir=tempfile.mkdtemp(),
                                                             dtype=torch.float32)
        point, featup, dtype = TINY_DUST3R, TINY_FEATUP, torch.float32
    met3r = load_met3r(point_source=point, featup_source=featup, device=device, dtype=dtype,
                       max_pairs_per_chunk=1 if naive else 8)
    model = (FluxFillInpainter if fill else FluxControlNetInpainter)(components, max_batch=1 if naive else 8,
                                                                     max_sequence_length=512 if full else 32)
    g = torch.Generator().manual_seed(0)
    inputs = []
    for i in range(views):
        visible = torch.ones(size, size)
        visible[:, : size // 4 + 8 * i] = 0
        inputs.append(ViewInput(f"view_{i}", torch.rand((3, size, size), generator=g), visible, "a scene"))
    settings = InpaintSettings(steps=steps, candidates=candidates, size=size, seed=0)
    inpaint_views(model, met3r, inputs[:1], InpaintSettings(steps=2, candidates=1, size=size), progress=False)
    memory = PeakMemory(device)
    memory.start()
    timings = Timings()
    start = time.perf_counter()
    with torch.no_grad():
        outputs = inpaint_views(model, met3r, inputs, settings, progress=False, timings=timings)
    peak_mb = memory.extra_mb()
    seconds = time.perf_counter() - start
    return {"device": device, "models": "full-size" if full else "tiny", "inpainter": inpainter, "size": size,
            "views": views, "steps": steps, "candidates": candidates, "loop": "naive" if naive else "batched",
            "seconds_per_view": round(seconds / views, 3),
            "seconds_per_phase": {k: round(v, 3) for k, v in timings.as_dict().items()},
            "transformer_calls_per_view": 1 + candidates * (steps - 1),
            "naive_calls_per_view": (1 + candidates) * steps,
            "peak_extra_mb": round(peak_mb, 1), "views_done": len(outputs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--views", type=int, default=3)
    parser.add_argument("--size", type=int, default=128, help="CPU image size (CUDA: 1024)")
    parser.add_argument("--inpainter", nargs="+", choices=["controlnet", "fill"], default=["controlnet"])
    parser.add_argument("--one", nargs=7, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        device, s, naive, steps, views, size, inpainter = args.one
        print(json.dumps(run_one(device, int(s), naive == "1", int(steps), int(views), int(size), inpainter)))
        return

    import torch

    settings = [("cpu", args.size)] + ([("cuda", 1024)] if torch.cuda.is_available() else [])
    results = []
    for device, size in settings:
        for inpainter in args.inpainter:
            for s in args.candidates:
                for naive in (True, False):
                    cmd = [sys.executable, __file__, "--one", device, str(s), str(int(naive)), str(args.steps),
                           str(args.views), str(size), inpainter]
                    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
                    results.append(json.loads(out.strip().splitlines()[-1]))
    machine = {"cpu": platform.processor() or platform.machine(), "cpu_threads": torch.get_num_threads(),
               "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "torch": torch.__version__}
    print(json.dumps({"benchmark": "inpaint", "machine": machine, "results": results}, indent=2))


if __name__ == "__main__":
    main()
