"""Stage II training step: seconds per optimizer step and peak memory, as one JSON object.

GPU (default when CUDA is available): the full-size CogVideoX-5b-I2V transformer with
random weights (bf16), LoRA on to_q/to_k/to_v/to_out.0, bf16 autocast and gradient
checkpointing, at 49 x 480 x 720 (13 x 60 x 90 latents), 226 text tokens, AdamW; the VAE
is CogVideoX's architecture with random weights (bf16).
CPU (``--tiny``, the default without CUDA): the tiny config of ``configs/presets/tiny.yaml``.
Inputs are random latents, first frames and embeddings; timing covers forward, backward,
clipping and the optimizer step after ``--warmup`` steps.

Both image conditions run in the same process: ``cached`` (the baseline: the image latent's
posterior comes from the cache) and ``per_step`` (the default: a new noisy first frame is
VAE-encoded every step). On the CPU the peak is the process's max RSS, cumulative, so
``per_step`` (measured second) cannot read lower than ``cached``.

    python benchmarks/train_step.py [--tiny] [--steps 5] [--warmup 2] [--rank 128] [--no-checkpointing]
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from callbacks.step_stats import peak_memory_gb  # noqa: E402
from reangle.models.cogvideox import SCHEDULER_CONFIG, TinyConfig, full_size_transformer_config  # noqa: E402
from reangle.models.cogvideox_i2v import CogVideoXI2V  # noqa: E402
from reangle.models.lora import add_lora  # noqa: E402
from reangle.training.loss import masked_loss  # noqa: E402


class _RandomWeightsSpec(CogVideoXI2V):
    """The CogVideoX-I2V spec over a transformer and a VAE built from configs with random weights."""

    def __init__(self, config: dict, vae, dtype: torch.dtype, device: torch.device, rank: int, checkpointing: bool):
        from diffusers import CogVideoXDDIMScheduler, CogVideoXTransformer3DModel

        self._config_cache = {"vae": dict(vae.config), "transformer": config}
        self.image_dropout, self.image_noise, self.image_condition = 0.05, (-3.0, 0.5), "per_step"
        self.image_vae = vae.to(device, dtype).eval().requires_grad_(False)
        with torch.device(device):
            self.transformer = CogVideoXTransformer3DModel.from_config(config).to(dtype)
        self.scheduler = CogVideoXDDIMScheduler(**SCHEDULER_CONFIG)
        self.lora_config = add_lora(self.transformer, rank=rank, alpha=rank)
        if checkpointing:
            self.transformer.enable_gradient_checkpointing()
        self.transformer.train()


def _timed_steps(spec, batch, mask, device, autocast: bool, warmup: int, steps: int) -> dict:
    """Seconds per step and peak memory of ``warmup + steps`` optimizer steps."""
    params = [p for p in spec.transformer.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, weight_decay=1e-3, betas=(0.9, 0.95))
    generator = torch.Generator(device=device).manual_seed(0)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for step in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=autocast):
            pair = spec.training_pair(batch, generator)
        loss = masked_loss(pair.prediction, pair.target, pair.weight, mask).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= warmup:
            times.append(time.perf_counter() - start)
    return {"seconds_per_step": sum(times) / len(times), "seconds_per_step_min": min(times),
            "peak_memory_gb": peak_memory_gb(device)}


def main() -> None:
    from diffusers import AutoencoderKLCogVideoX

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="tiny config on the CPU")
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rank", type=int, default=None, help="LoRA rank (default 128, tiny: 4)")
    parser.add_argument("--no-checkpointing", action="store_true")
    args = parser.parse_args()
    tiny = args.tiny or not torch.cuda.is_available()
    device = torch.device("cpu" if tiny else "cuda")
    torch.manual_seed(0)
    if tiny:
        t = TinyConfig()
        config = {**full_size_transformer_config(), "num_attention_heads": t.num_attention_heads,
                  "attention_head_dim": t.attention_head_dim, "num_layers": t.num_layers,
                  "time_embed_dim": t.time_embed_dim, "text_embed_dim": t.text_embed_dim,
                  "sample_height": t.height // 8, "sample_width": t.width // 8, "sample_frames": t.num_frames}
        frames, dtype, rank, autocast = t.num_frames, torch.float32, args.rank or 4, False
        levels = len(t.vae_channels)
        vae = AutoencoderKLCogVideoX(block_out_channels=tuple(t.vae_channels), layers_per_block=1, norm_num_groups=4,
                                     latent_channels=16, down_block_types=("CogVideoXDownBlock3D",) * levels,
                                     up_block_types=("CogVideoXUpBlock3D",) * levels, scaling_factor=0.7)
    else:
        config = full_size_transformer_config()
        frames, dtype, rank, autocast = 49, torch.bfloat16, args.rank or 128, True
        vae = AutoencoderKLCogVideoX(scaling_factor=0.7)  # the CogVideoX VAE architecture (5b-I2V scaling)
    spec = _RandomWeightsSpec(config, vae, dtype, device, rank, not args.no_checkpointing and not tiny)
    f, h, w = (frames - 1) // 4 + 1, config["sample_height"], config["sample_width"]
    batch = {"video_mean": torch.randn(1, f, 16, h, w, device=device),
             "video_logvar": torch.full((1, f, 16, h, w), -6.0, device=device),
             "image_mean": torch.randn(1, 1, 16, h, w, device=device),
             "image_logvar": torch.full((1, 1, 16, h, w), -6.0, device=device),
             "first_frame_pm1": torch.rand(1, 3, 1, h * 8, w * 8, device=device) * 2 - 1,
             "prompt_embeds": torch.randn(1, config["max_text_seq_length"], config["text_embed_dim"], device=device)}
    mask = torch.rand(1, f, h, w, device=device) > 0.3
    modes = {}
    for mode in ("cached", "per_step"):
        spec.image_condition = mode
        modes[mode] = _timed_steps(spec, batch, mask, device, autocast, args.warmup, args.steps)
    params = [p for p in spec.transformer.parameters() if p.requires_grad]
    print(json.dumps({
        "benchmark": "train_step", "config": "tiny" if tiny else "CogVideoX-5b-I2V transformer (random weights)",
        "video": [frames, h * 8, w * 8], "latents": [f, 16, h, w], "lora_rank": rank,
        "trainable_params": sum(p.numel() for p in params),
        "total_params": sum(p.numel() for p in spec.transformer.parameters()),
        "vae_params": sum(p.numel() for p in vae.parameters()),
        "precision": "bf16 autocast, bf16 weights" if autocast else "fp32",
        "gradient_checkpointing": not args.no_checkpointing and not tiny,
        "image_condition": modes,
        "per_step_over_cached": modes["per_step"]["seconds_per_step"] / modes["cached"]["seconds_per_step"],
        "memory_kind": "torch.cuda.max_memory_allocated" if device.type == "cuda" else "process max RSS",
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__, "steps": args.steps, "warmup": args.warmup}, indent=1))


if __name__ == "__main__":
    main()
