"""Simulated memory and FLOPs of every full-size phase (no GPU, no weights): python benchmarks/full_size.py

Runs the phases' own code (the stage II spec, the sampler, the stage III search, the depth
estimator, MEt3R) on fake tensors with the real model classes at their released configs
(reangle.simulate: live bytes rounded to CUDA's 512-byte blocks, fused attention, FLOP counts
including checkpoint recomputation). Weights are built on the meta device in the dtype a CUDA
run loads them in and then materialized as fake tensors. Repeated work is simulated once and
multiplied: a phase that repeats a unit (denoising step, search step) is run with 1 and 2 units
and extrapolated linearly (peak memory is per unit, so it does not grow). The deep transformers
(CogVideoX, FLUX, Wan) are simulated with 1 and 2 of their repeated blocks and every measured
quantity is extrapolated to the full depth (reangle.simulate.extrapolate_depth; ``--full-depth``
simulates them whole, as RESULTS.md records for comparison), and a gradient-free call repeating an
earlier call's input layouts on a module of the same structure is replayed, not simulated again
(reangle.simulate.memoize_calls).

Prints JSON: {"phases": {...}, "presets": {...}, "validation": {...}, "assumptions": {...}}.
All memory figures are simulated allocated bytes (GB = 1e9 bytes); projected seconds are
FLOPs / (peak bf16 dense TFLOP/s x MFU).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Callable, NamedTuple
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from reangle.simulate import (GB, GIB, Simulation, extrapolate_depth, materialize, measured,  # noqa: E402
                              memoize_calls, storage_bytes, tensor_bytes)

PEAK_TFLOPS = {"h100": 989.0, "a100": 312.0}  # bf16 dense tensor-core peak: H100 SXM5, A100 SXM4
MFU = 0.40  # see RESULTS.md: implied by the paper's 400 steps in about 1 h on an A100 (about 0.4)
BF16 = torch.bfloat16

# ------------------------------------------------------------------------------------------- full-size configs

COGVIDEOX_VAE = dict(scaling_factor=0.7)  # AutoencoderKLCogVideoX defaults are the CogVideoX VAE; 5b scales by 0.7
T5_XXL = dict(vocab_size=32128, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
              relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="gated-gelu",
              is_encoder_decoder=False, use_cache=False)
FLUX_VAE = dict(in_channels=3, out_channels=3, latent_channels=16, block_out_channels=(128, 256, 512, 512),
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                layers_per_block=2, norm_num_groups=32, sample_size=1024, scaling_factor=0.3611, shift_factor=0.1159,
                use_quant_conv=False, use_post_quant_conv=False)
CLIP_L = dict(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
              max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768)


def depth_anything_v2_large():
    from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation, Dinov2Config

    backbone = Dinov2Config(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096,
                            patch_size=14, image_size=518, reshape_hidden_states=False,
                            out_indices=[5, 12, 18, 24])
    config = DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=1024,
                                 neck_hidden_sizes=[256, 512, 1024, 1024], fusion_hidden_size=256,
                                 head_hidden_size=32, depth_estimation_type="relative")
    return DepthAnythingForDepthEstimation(config)


# ------------------------------------------------------------------------------------------- depth extrapolation

# Repeated units of the deep models: (full depth, the smaller of the two depths simulated).
# CogVideoX-5b: 42 blocks (simulated with 2 and 4: its training step's peak is linear in the
# depth from 2 blocks on, a 1-block model peaks 2.4 MB higher); FLUX.1-dev: 19 units of
# (1 double-stream, 2 single-stream) blocks. The Wan models (wan_models()): their transformer's
# blocks, simulated with 2 and 4.
DEPTH_UNITS = {"cogvideox": (42, 2), "flux": (19, 1)}
_SHALLOW: dict[str, int] = {}  # model -> units it is built with while a phase is simulated shallow


def _units(model: str) -> int | None:
    """Units ``model`` is built with now (``None``: its full depth)."""
    return _SHALLOW.get(model)


def deep(model: str | Callable[[dict], str]):
    """Marks a phase whose cost grows with ``model``'s depth (a :func:`_depth_units` name, or a function of the
    phase's keyword arguments giving it): :class:`PhaseCache` extrapolates it."""
    def mark(fn):
        fn.deep_model = model
        return fn
    return mark


def at_full_depth(fn: Callable[..., dict], **kwargs) -> dict:
    """``fn(**kwargs)`` for the full-depth model, from runs with ``base`` and ``2 base`` of its units
    (:func:`_depth_units`)."""
    model = fn.deep_model(kwargs) if callable(fn.deep_model) else fn.deep_model

    def run(units: int) -> dict:
        _SHALLOW[model] = units
        try:
            return fn(**kwargs)
        finally:
            del _SHALLOW[model]
    return extrapolate_depth(run, *_depth_units(model))


def _depth_units(model: str) -> tuple[int, int]:
    """(full depth, smaller simulated depth) of ``model``: ``DEPTH_UNITS`` or a ``wan_models()`` key."""
    if model in DEPTH_UNITS:
        return DEPTH_UNITS[model]
    from reangle.models.wan import FULL_SIZE_TRANSFORMERS

    return FULL_SIZE_TRANSFORMERS[wan_models()[model].pretrained]["num_layers"], 2


def _cogvideox_config(transformer_config=None) -> dict:
    """The CogVideoX-5b-I2V transformer config (or ``transformer_config``), at the depth being simulated."""
    from reangle.models.cogvideox import full_size_transformer_config

    config = dict(transformer_config or full_size_transformer_config())
    return {**config, "num_layers": _units("cogvideox") or config["num_layers"]}


def _flux_depth() -> dict:
    """FLUX.1-dev's block counts at the depth being simulated (empty: the released 19 + 38)."""
    units = _units("flux")
    return {} if units is None else {"num_layers": units, "num_single_layers": 2 * units}


def _meta_modules(build: Callable[[], dict], dtype=BF16) -> dict:
    with torch.device("meta"):
        return {k: v.to(dtype).eval() for k, v in build().items()}


def cogvideox_components(parts, dtype=BF16, transformer_config=None):
    """Full-size CogVideoX-5b-I2V parts on meta, for ``load_components``'s callers (no files)."""
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXTransformer3DModel
    from transformers import T5Config, T5EncoderModel

    from reangle.models.cogvideox import SCHEDULER_CONFIG, CogVideoXComponents, tiny_t5_tokenizer

    builders = {"transformer": lambda: CogVideoXTransformer3DModel.from_config(_cogvideox_config(transformer_config)),
                "vae": lambda: AutoencoderKLCogVideoX(**COGVIDEOX_VAE),
                "text_encoder": lambda: T5EncoderModel(T5Config(**T5_XXL))}
    modules = _meta_modules(lambda: {p: builders[p]() for p in parts if p in builders}, dtype)
    out = CogVideoXComponents(source="simulated", **modules)
    if "scheduler" in parts:
        with torch.device("cpu"):
            out.scheduler = CogVideoXDDIMScheduler(**SCHEDULER_CONFIG)
    if "tokenizer" in parts:
        out.tokenizer = tiny_t5_tokenizer(226)  # token ids only set shapes (padding to max_length)
    return out


@contextlib.contextmanager
def full_size_loaders(transformer_config=None):
    """``load_components`` of the stage II spec builds full-size parts on meta."""
    import reangle.models.cogvideox_i2v as i2v

    def load(pretrained, parts, *, dtype=torch.float32, **_):
        return cogvideox_components(list(parts), dtype, transformer_config)

    with mock.patch.object(i2v, "load_components", load):
        yield


def full_spec(image_condition: str = "per_step", transformer_config=None, rank: int = 128, storage=None):
    """The stage II spec of configs/base.yaml at full size (configs known without the hub), its
    transformer with LoRA (and, per step, its VAE) loaded on meta; ``storage``: model.storage_dtype."""
    from diffusers import AutoencoderKLCogVideoX

    from reangle.models.cogvideox_i2v import CogVideoXI2V

    spec = CogVideoXI2V(image_condition=image_condition, lora_rank=rank, lora_alpha=rank)
    spec.storage_dtype = storage
    with torch.device("meta"):
        vae_config = {k: v for k, v in AutoencoderKLCogVideoX(**COGVIDEOX_VAE).config.items() if not k.startswith("_")}
    spec._config_cache.update(transformer=_cogvideox_config(transformer_config), vae=vae_config)
    with full_size_loaders(transformer_config), torch.device("meta"):
        spec.load_diffusion_model(torch.device("meta"))
        spec.load_training_encoders(torch.device("meta"))
    return spec


def flux_components(max_sequence_length: int = 512):
    """FLUX.1-dev (transformer, VAE, CLIP-L, T5-XXL) + the alimama Beta ControlNet on meta, bf16."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    from reangle.models.cogvideox import tiny_t5_tokenizer
    from reangle.models.flux import (SCHEDULER_CONFIG, FluxComponents, InpaintControlNet, _tiny_clip_tokenizer,
                                     beta_controlnet_config)

    m = _meta_modules(lambda: dict(transformer=FluxTransformer2DModel(guidance_embeds=True, **_flux_depth()),
                                   vae=AutoencoderKL(**FLUX_VAE), text_encoder=CLIPTextModel(CLIPTextConfig(**CLIP_L)),
                                   text_encoder_2=T5EncoderModel(T5Config(**T5_XXL)),
                                   controlnet=InpaintControlNet(**beta_controlnet_config())))
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG), vae=m["vae"],
                        text_encoder=m["text_encoder"], tokenizer=_tiny_clip_tokenizer(77),
                        text_encoder_2=m["text_encoder_2"], tokenizer_2=tiny_t5_tokenizer(max_sequence_length),
                        transformer=m["transformer"])
    return FluxComponents(source="simulated", controlnet_source="simulated", pipeline=pipe, controlnet=m["controlnet"])


def met3r_model(max_pairs_per_chunk: int = 8, img_size: int = 256):
    """MEt3R as ``load_met3r`` builds it: DUSt3R ViT-L/512 DPT + DINO ViT-S/16 with FeatUp JBU, float32, on meta."""
    from reangle.consistency import MEt3R, FeatUpFeatures
    from reangle.nets.dino import build_dino
    from reangle.nets.dust3r import DUSt3R
    from reangle.nets.featup import UpsampledBackbone

    with torch.device("meta"):
        return MEt3R(DUSt3R(), FeatUpFeatures(UpsampledBackbone(build_dino("vit_small", patch_size=16))),
                     img_size=img_size, radius=0.01, max_pairs_per_chunk=max_pairs_per_chunk).eval()


# ------------------------------------------------------------------------------------------------- validation

SMALL_SIZES = {  # (layers, heads, head_dim, frames, height, width) of a CogVideoX-I2V transformer
    "tiny": (2, 2, 16, 9, 32, 48),
    "mid": (4, 8, 64, 25, 128, 192),
}


def small_transformer(layers, heads, head_dim, frames, height, width):
    """A CogVideoX-I2V transformer of the given sizes with a rank-8 LoRA and gradient checkpointing (fp32)."""
    from diffusers import CogVideoXTransformer3DModel

    from reangle.models.lora import add_lora

    model = CogVideoXTransformer3DModel(
        num_attention_heads=heads, attention_head_dim=head_dim, in_channels=32, out_channels=16, time_embed_dim=32,
        text_embed_dim=64, num_layers=layers, sample_height=height // 8, sample_width=width // 8,
        sample_frames=frames, max_text_seq_length=32, use_rotary_positional_embeddings=False,
        use_learned_positional_embeddings=False)
    add_lora(model, rank=8, alpha=8)
    model.enable_gradient_checkpointing()
    return model.train()


def small_training_step(model, frames, height, width):
    """One LoRA training step: forward, loss, backward, AdamW step (states created on this first step)."""
    x = torch.randn(1, (frames - 1) // 4 + 1, 32, height // 8, width // 8)
    out = model(hidden_states=x, encoder_hidden_states=torch.randn(1, 32, 64), timestep=torch.tensor([500]),
                return_dict=False)[0]
    out.float().square().mean().backward()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return opt


def validate_small() -> dict:
    """Simulated vs measured peak (CPU allocator events) of a training step at the small sizes."""
    from reangle.simulate import compare_with_real

    out = {}
    for name, size in SMALL_SIZES.items():
        torch.manual_seed(0)
        simulated, measured = compare_with_real(lambda: small_transformer(*size),
                                                lambda m: small_training_step(m, *size[3:]))
        out[name] = {"simulated_mb": simulated / 2**20, "measured_mb": measured / 2**20,
                     "ratio": simulated / measured}
    return out


# ------------------------------------------------------------------------------------------------------- phases

def _result(section, modules, flops: float, extra: dict | None = None) -> dict:
    weights = sum(tensor_bytes(m) for m in modules)
    return {"peak_gb": section.peak_bytes / GB, "weights_gb": weights / GB,
            "activations_gb": (section.peak_bytes - section.resident_bytes) / GB,
            "resident_gb": section.resident_bytes / GB, "tflop": flops / 1e12, **(extra or {})}


def _materialize(*modules):
    """Fake weights for ``modules``, whose repeated gradient-free calls are then replayed (memoize_calls)."""
    for m in modules:
        memoize_calls(materialize(m))
    return modules


def phase_depth(frames: int = 49, height: int = 480, width: int = 720, batch: int = 8) -> dict:
    """Stage I: Depth Anything V2-L (fp16 on CUDA) over the clip, ``batch`` frames per call at the
    frames' own size raised to multiples of 14 (depth.input_size: null)."""
    from reangle.geometry.depth import DepthAnything

    net = _meta_modules(lambda: {"net": depth_anything_v2_large()}, torch.float16)["net"]
    est = DepthAnything(device="cpu")
    with Simulation() as sim:
        _materialize(net)
        est._net = net
        with mock.patch.object(DepthAnything, "_device_dtype", lambda self: (torch.device("cpu"), torch.float16)):
            with sim.section() as s:
                est(torch.rand(batch, 3, height, width))
    return _result(s, [net], s.flops * frames / batch, {"input": list(est.input_shape(height, width)),
                                                        "frames_per_call": batch})


def phase_encode(frames: int = 49, height: int = 480, width: int = 720, tiling: bool = False) -> dict:
    """Stage II caching in the data module's order: T5-XXL encodes the prompt and is released
    (``release_text_encoder``), then the VAE encodes one clip (one Omega view)."""
    spec = full_spec()
    enc = cogvideox_components(["tokenizer", "text_encoder", "vae"])
    with Simulation() as sim:
        _materialize(enc.text_encoder, enc.vae)
        spec.encoders = enc
        if tiling:
            enc.vae.enable_tiling()
        with sim.section() as t5:
            spec.encode_prompt("a scene")
        text = _result(t5, [enc.text_encoder, enc.vae], t5.flops)
        spec.release_text_encoder()
        with sim.section() as s:
            spec.encode_video(torch.rand(frames, 3, height, width), torch.Generator().manual_seed(0))
    return {"prompt": text, "video": _result(s, [enc.vae], s.flops)}


def _steady_adamw(params) -> torch.optim.Optimizer:
    """Fused AdamW over ``params`` after one step, so its states exist (a steady training step)."""
    opt = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.95), weight_decay=1e-3, fused=True)
    for p in params:
        p.grad = torch.zeros_like(p)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return opt


def _optimizer_step(sim, spec, batch: dict, params, opt):
    """The section of one optimizer step of ``spec``: ``training_pair`` under bf16 autocast (as Lightning's
    bf16-mixed), the masked loss (the pair's own loss mask), backward, gradient clipping, AdamW."""
    from reangle.training.loss import masked_loss

    with sim.section() as s:
        with torch.autocast("cpu", dtype=BF16):
            pair = spec.training_pair(batch, torch.Generator().manual_seed(0))
            loss = masked_loss(pair.prediction, pair.target, pair.weight, pair.loss_mask(batch["mask"]), "all").mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        del pair, loss
    return s


@deep("cogvideox")
def phase_train_step(frames: int = 49, height: int = 480, width: int = 720, rank: int = 128,
                     image_condition: str = "per_step", transformer_config=None, optimizer_dtype=None,
                     storage=None) -> dict:
    """Stage II: one optimizer step of the real spec (LoRA ``rank`` on the attention projections,
    gradient checkpointing, bf16 autocast as Lightning's bf16-mixed, per-step VAE encoding of the
    first frame), masked loss, gradient clipping, AdamW (states created beforehand: a steady step);
    ``storage``: model.storage_dtype (the frozen layers in float8, cast per layer)."""
    spec = full_spec(image_condition, transformer_config, rank, storage)
    f, h, w = (frames - 1) // 4 + 1, height // 8, width // 8
    cfg = spec.transformer.config
    with Simulation() as sim:
        _materialize(spec.transformer, *([spec.image_vae] if spec.image_vae is not None else []))
        params = [p for p in spec.transformer.parameters() if p.requires_grad]
        if optimizer_dtype is not None:
            for p in params:
                p.data = p.data.to(optimizer_dtype)
        opt = _steady_adamw(params)
        batch = {"video_mean": torch.randn(1, f, 16, h, w), "video_logvar": torch.randn(1, f, 16, h, w),
                 "prompt_embeds": torch.randn(1, cfg.max_text_seq_length, cfg.text_embed_dim),
                 "mask": torch.ones(1, f, h, w, dtype=torch.bool)}
        if image_condition == "per_step":
            batch["first_frame_pm1"] = torch.rand(1, 3, 1, height, width)
        else:
            batch.update(image_mean=torch.randn(1, 1, 16, h, w), image_logvar=torch.randn(1, 1, 16, h, w))
        modules = [spec.transformer, *([spec.image_vae] if spec.image_vae is not None else [])]
        s = _optimizer_step(sim, spec, batch, params, opt)
        lora = measured(sum(p.numel() * p.element_size() for p in params))
    return _result(s, modules, s.flops, {"lora_gb": lora / GB, "adamw_states_gb": 2 * lora / GB})


@deep("cogvideox")
def phase_sample(frames: int = 49, height: int = 480, width: int = 720, steps: int = 40, guidance: float = 6.0,
                 tiling: bool = False, offload: bool = False, storage=None) -> dict:
    """Sampling one view with the sampler of train.py's VideoSampling, in its three parts: VAE encoding
    of the start frame, ``steps`` denoising steps with CFG as a batch of two (one simulated, FLOPs
    multiplied), VAE decoding (``tiling``: diffusers' tiles). T5 is not resident: the sampler encodes
    the prompts first and releases it (phase "prompt"). ``offload`` (sample.cpu_offload): only the
    model of the running part is on the GPU. ``storage``: model.storage_dtype."""
    from reangle.sampling.sampler import CogVideoXSampler, SampleRequest, SamplingSettings

    spec = full_spec(storage=storage)
    vae = cogvideox_components(["vae"]).vae
    with Simulation() as sim:
        _materialize(spec.transformer, vae)
        if tiling:
            vae.enable_tiling()
        sampler = CogVideoXSampler(spec.transformer, vae, spec.scheduler, device="cpu", progress=False)
        cfg = spec.transformer.config
        emb = {p: torch.randn(1, cfg.max_text_seq_length, cfg.text_embed_dim, dtype=BF16) for p in ("", "scene")}
        request = SampleRequest(torch.rand(3, height, width), "scene", 0, frames)
        settings = SamplingSettings(steps=1, guidance=guidance)
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            with sim.section() as enc:
                condition = sampler._image_latents(request, generator)
            with sim.section() as step:
                latents = sampler._denoise(request, condition, generator, emb, settings, 0, 1)
            with sim.section() as dec:
                sampler._decode(latents)
    t_bytes, v_bytes = tensor_bytes(spec.transformer), tensor_bytes(vae)
    other = {id(enc): t_bytes, id(step): v_bytes, id(dec): t_bytes} if offload else {}
    parts = {"encode": enc, "denoise_step": step, "decode": dec}
    peaks = {k: (p.peak_bytes - other.get(id(p), 0)) / GB for k, p in parts.items()}
    worst = max(parts, key=peaks.get)
    out = _result(parts[worst], [spec.transformer, vae], enc.flops + steps * step.flops + dec.flops,
                  {"part_peaks_gb": peaks, "tflop_per_step": step.flops / 1e12,
                   "tflop_vae": (enc.flops + dec.flops) / 1e12})
    out["peak_gb"] = peaks[worst]
    return out


def _stage3_models(sim, flux, met3r, max_batch: int, storage):
    """The inpainter as ``reangle.inpaint.run.load_models`` prepares it: ``prepare_inpainter`` (storage of the
    transformer and ControlNet, the prompt encoded by the text encoders alone on the device, which are then
    released), then the search networks and MEt3R on the device. Returns (inpainter, the prompt section)."""
    from reangle.inpaint.inpainter import FluxControlNetInpainter
    from reangle.inpaint.run import prepare_inpainter

    pipe = flux.pipeline
    _materialize(pipe.text_encoder, pipe.text_encoder_2)  # meta modules stand for the ones still on the CPU
    inpainter = FluxControlNetInpainter(flux, max_batch=max_batch)
    with sim.section() as text:
        prepare_inpainter(inpainter, storage, BF16, ["a scene"], "cpu")
    _materialize(*inpainter.networks(), met3r)
    return inpainter, text


def group_offload_bytes(*nets) -> tuple[int, int]:
    """(bytes of ``nets``, the most bytes of them on the device while one runs under inpaint.offload=group): a
    running network keeps its non-block tensors (embedders, final norm and projection) and two blocks there,
    the running one and the next one its hooks prefetch (diffusers' groups: reangle.models.offload.offload_groups);
    twice its largest block is counted (every block kind repeats at full depth, also when the simulation
    builds fewer blocks, so these bytes are not depth-extrapolated). An accounting of diffusers' hooks,
    which do not run in the simulation."""
    from reangle.models.offload import offload_groups

    running = []
    for net in nets:
        blocks, rest = offload_groups(net)
        running.append(storage_bytes(rest) + 2 * max(storage_bytes([*b.parameters(), *b.buffers()]) for b in blocks))
    return sum(tensor_bytes(n) for n in nets), max(running)


@deep("flux")
def phase_inpaint_peak(max_batch: int = 4, candidates: int = 25, finished_views: int = 2, size: int = 1024,
                       met3r_chunk: int = 8, storage=None, offload=None, parts: bool = False):
    """Peak GB of stage III's parts at another ``max_batch`` / MEt3R chunk / inpaint.storage_dtype (same code,
    FLOPs unchanged): the prompt encoding, the control encoding, one transformer + ControlNet batch, one VAE
    batch, the scoring. ``offload``: inpaint.offload, *accounted* (:func:`group_offload_bytes`), not simulated:
    the simulation runs with the transformer and ControlNet resident; "group" then removes their bytes from
    every part after the prompt encoding (which runs before they are materialized) and adds back, in the
    transformer + ControlNet batch, what the running one keeps on the device. ``parts``: also return the
    peak GB per part (dict)."""
    from reangle.inpaint.multiview import InpaintSettings, ScoredViews, Timings

    flux, met3r = flux_components(), met3r_model(met3r_chunk)
    with Simulation() as sim:
        inpainter, text = _stage3_models(sim, flux, met3r, max_batch, storage)
        held, running = group_offload_bytes(inpainter.pipe.transformer, inpainter.controlnet) if offload \
            else (0, 0)
        with sim.section() as c:
            condition = inpainter.condition(torch.rand(1, 3, size, size), torch.ones(1, 1, size, size), "a scene")
        noise = inpainter.initial_noise(condition, torch.Generator().manual_seed(0)).expand(max_batch, -1, -1)
        with sim.section() as v:
            inpainter.velocity(noise, 0.5, condition)
        with sim.section() as d:
            inpainter.decode(noise, condition)
        refs = torch.rand(finished_views, 3, met3r.img_size, met3r.img_size) * 2 - 1
        model = ScoredViews(inpainter, [condition], met3r, refs, InpaintSettings(size=size), met3r.img_size, Timings())
        decoded = torch.rand(candidates, 3, met3r.img_size, met3r.img_size) * 2 - 1
        with sim.section() as m:
            model.score([decoded])
    peaks = {"prompt": text.peak_bytes, "control": c.peak_bytes - held,
             "transformer_call": v.peak_bytes - held + running,
             "vae_decode": d.peak_bytes - held, "met3r_score": m.peak_bytes - held}
    peaks = {k: b / GB for k, b in peaks.items()}
    return (max(peaks.values()), peaks) if parts else max(peaks.values())


@deep("flux")
def phase_inpaint(max_batch: int = 4, candidates: int = 25, steps: int = 50, finished_views: int = 2,
                  size: int = 1024, met3r_chunk: int = 8, storage=None) -> dict:
    """Stage III, one view: the real search (:func:`reangle.inpaint.search.guided_sample` over
    :class:`reangle.inpaint.multiview.ScoredViews`) with FLUX.1-dev + the Beta ControlNet,
    ``candidates`` per step in transformer/VAE batches of ``max_batch``, candidates decoded with the
    FLUX VAE and scored by MEt3R against ``finished_views``; the prompt is encoded once (T5-XXL + CLIP,
    then released: :func:`_stage3_models`); ``storage``: inpaint.storage_dtype."""
    from reangle.inpaint.multiview import InpaintSettings, ScoredViews, Timings
    from reangle.inpaint import search

    flux, met3r = flux_components(), met3r_model(met3r_chunk)
    pipe = flux.pipeline
    modules = [pipe.transformer, flux.controlnet, pipe.vae, met3r]
    with Simulation() as sim:
        inpainter, text = _stage3_models(sim, flux, met3r, max_batch, storage)
        with sim.section() as c:
            condition = inpainter.condition(torch.rand(1, 3, size, size), torch.ones(1, 1, size, size), "a scene")
        settings = InpaintSettings(steps=steps, candidates=candidates, size=size)
        noise = [inpainter.initial_noise(condition, torch.Generator().manual_seed(0))]
        refs = torch.rand(finished_views, 3, met3r.img_size, met3r.img_size) * 2 - 1
        sigmas = inpainter.sigmas(steps, condition)
        model = ScoredViews(inpainter, [condition], met3r, refs, settings, met3r.img_size, Timings())
        with sim.section() as one:
            inpainter.velocity(noise[0], sigmas[0], condition)
        with sim.section() as s:  # the first call, one search step, the deterministic last step
            # one rank holds every candidate (slices() computes that with tensors, which have no values here)
            with mock.patch.object(search, "slices", lambda count, world_size: [range(count)]):
                result = search.guided_sample(model, noise, [sigmas[0], sigmas[1], 0.0], candidates,
                                              torch.Generator().manual_seed(0))
        with sim.section() as d:
            inpainter.decode(result.latents[0], condition)
    per_step = s.flops - one.flops
    calls = 1 + candidates * (steps - 1)
    flops = c.flops + one.flops + (steps - 1) * per_step + d.flops
    transformer = one.flops * calls
    out = _result(s, modules, flops, {"model_calls": calls, "tflop_per_call": one.flops / 1e12,
                                      "tflop_per_search_step": per_step / 1e12,
                                      "search_overhead": (flops - transformer) / transformer})
    out["peak_gb"] = max(text.peak_bytes, c.peak_bytes, s.peak_bytes, d.peak_bytes) / GB
    out["prompt_peak_gb"] = text.peak_bytes / GB
    return out


def phase_met3r(pairs: int = 96, chunk: int = 8, img_size: int = 256) -> dict:
    """Evaluation, MEt3R: ``pairs`` image pairs (e.g. 48 frames x 2 neighbouring views) at ``img_size``."""
    met3r = met3r_model(chunk, img_size)
    with Simulation() as sim:
        _materialize(met3r)
        with sim.section() as s:
            with torch.no_grad():
                met3r(torch.rand(chunk, 2, 3, img_size, img_size) * 2 - 1)
    return _result(s, [met3r], s.flops * pairs / chunk, {"pairs": pairs, "pairs_per_call": chunk})


# ----------------------------------------------------------------------------------------------- eval phases

def _eval_networks() -> dict[str, Callable[[], torch.nn.Module]]:
    """The network of each model-based metric as ``eval.models.load_model`` wraps it (float32), built
    on meta: VBench's wrappers around DINO ViT-B/16, CLIP ViT-B/32 and ViT-L/14 (+ the LAION head),
    MUSIQ, RAFT-large and AMT-S; FID's Inception-v3 (torchvision's architecture: torch-fidelity's
    FID network is the same layers with other pooling details, and needs its weights file to build);
    FVD's I3D (:func:`i3d_for_simulation`)."""
    from torchvision.models import inception_v3

    from reangle.models import vbench
    from reangle.nets.amt import AMTS
    from reangle.nets.dino import build_dino

    return {"subject_consistency": lambda: vbench.SubjectFeatures(build_dino("vit_base", patch_size=16)),
            "background_consistency": lambda: vbench.CLIPImageFeatures(
                vbench.build_clip_visual(vbench.BACKGROUND_CLIP)),
            "aesthetic_quality": lambda: vbench.AestheticScore(
                vbench.CLIPImageFeatures(vbench.build_clip_visual(vbench.AESTHETIC_CLIP)), torch.nn.Linear(768, 1)),
            "imaging_quality": lambda: vbench.ImagingQuality(vbench.build_musiq()),
            "dynamic_degree": lambda: vbench.OpticalFlow(vbench.build_raft()),
            "motion_smoothness": lambda: vbench.FrameInterpolator(AMTS()),
            "fid": lambda: inception_v3(weights=None, aux_logits=False, init_weights=False),
            "fvd": i3d_for_simulation}


def _unit3d(cin: int, cout: int, kernel=1, stride=1) -> torch.nn.Sequential:
    """I3D's unit: a 3D convolution without bias ('same' padding), batch norm, ReLU."""
    k = (kernel,) * 3 if isinstance(kernel, int) else kernel
    return torch.nn.Sequential(torch.nn.Conv3d(cin, cout, k, stride, padding=tuple(x // 2 for x in k), bias=False),
                               torch.nn.BatchNorm3d(cout), torch.nn.ReLU())


class _I3DMixed(torch.nn.Module):
    """An inflated Inception module: 1x1x1 | 1x1x1 -> 3x3x3 | 1x1x1 -> 3x3x3 | 3x3x3 max pool -> 1x1x1."""

    def __init__(self, cin: int, c0: int, c1: tuple, c2: tuple, c3: int):
        super().__init__()
        self.branches = torch.nn.ModuleList([
            _unit3d(cin, c0), torch.nn.Sequential(_unit3d(cin, c1[0]), _unit3d(c1[0], c1[1], 3)),
            torch.nn.Sequential(_unit3d(cin, c2[0]), _unit3d(c2[0], c2[1], 3)),
            torch.nn.Sequential(torch.nn.MaxPool3d(3, 1, 1), _unit3d(cin, c3))])

    def forward(self, x):
        return torch.cat([b(x) for b in self.branches], dim=1)


def i3d_for_simulation() -> torch.nn.Module:
    """FVD's detector for the simulator: the Kinetics-400 I3D (Carreira & Zisserman 2017, arXiv 1705.07750:
    Inception-v1 inflated to 3D, the layer sizes of its Fig. 3) rebuilt from the paper, since the real
    detector is a TorchScript file; input ``[B, 3, T, 224, 224]`` in [-1, 1], output the 400 logits."""
    pool = lambda k, st: torch.nn.MaxPool3d(k, st, tuple(x // 2 for x in k))  # noqa: E731
    return torch.nn.Sequential(
        _unit3d(3, 64, 7, 2), pool((1, 3, 3), (1, 2, 2)), _unit3d(64, 64), _unit3d(64, 192, 3),
        pool((1, 3, 3), (1, 2, 2)),
        _I3DMixed(192, 64, (96, 128), (16, 32), 32), _I3DMixed(256, 128, (128, 192), (32, 96), 64),
        pool((3, 3, 3), (2, 2, 2)),
        _I3DMixed(480, 192, (96, 208), (16, 48), 64), _I3DMixed(512, 160, (112, 224), (24, 64), 64),
        _I3DMixed(512, 128, (128, 256), (24, 64), 64), _I3DMixed(512, 112, (144, 288), (32, 64), 64),
        _I3DMixed(528, 256, (160, 320), (32, 128), 128), pool((2, 2, 2), (2, 2, 2)),
        _I3DMixed(832, 256, (160, 320), (32, 128), 128), _I3DMixed(832, 384, (192, 384), (48, 128), 128),
        torch.nn.AdaptiveAvgPool3d(1), torch.nn.Flatten(), torch.nn.Linear(1024, 400))


EVAL_METRICS = ("subject_consistency", "background_consistency", "aesthetic_quality", "imaging_quality",
                "dynamic_degree", "motion_smoothness", "fid", "fvd")  # with a network; MEt3R: phase_met3r
EVAL_BATCH = 16  # configs/base.yaml eval.batch_size
FVD_CLIP = 16  # configs/base.yaml eval.fvd.clip_length (= clip_stride)


def _eval_call(metric: str, net, batch: int, height: int, width: int):
    """One model call of ``metric`` on ``batch`` items (frames, frame pairs) of ``height x width`` in [0, 1]."""
    frames = lambda: torch.rand(batch, 3, height, width)  # noqa: E731
    if metric == "dynamic_degree":
        return net(frames(), frames(), padded=True)
    if metric == "motion_smoothness":
        return net(frames(), frames(), torch.full((batch, 1, 1, 1), 0.5))
    if metric == "fid":  # uint8 levels resized to 299 x 299 (torchmetrics' FID input)
        return net(torch.nn.functional.interpolate(frames() * 255, size=(299, 299), mode="bilinear"))
    if metric == "fvd":  # ``batch`` clips of FVD_CLIP frames, resized to 224 x 224 (the detector's resize)
        clips = torch.rand(batch * FVD_CLIP, 3, height, width)
        small = torch.nn.functional.interpolate(clips, size=(224, 224), mode="bilinear") * 2 - 1
        return net(small.view(batch, FVD_CLIP, 3, 224, 224).transpose(1, 2))
    return net(frames())


def eval_items(metric: str, frames: int = 49, fps: float = 8.0) -> int:
    """Model inputs of one video of ``frames`` at ``fps`` (eval/registry.py): frames, subsampled frame
    pairs (dynamic degree), midpoint pairs (motion smoothness) or clips (FVD)."""
    from eval.dynamic_degree import subsample_indices

    if metric == "dynamic_degree":
        return len(subsample_indices(frames, fps)) - 1
    if metric == "motion_smoothness":
        return (frames + 1) // 2 - 1
    if metric == "fvd":  # eval.fvd.protocol clips: every FVD_CLIP frames (clip_stride 16), in one call
        return (frames - FVD_CLIP) // FVD_CLIP + 1
    return frames


def phase_eval(metric: str, frames: int = 49, height: int = 480, width: int = 720, batch: int = 16) -> dict:
    """Evaluation, one metric network alone (the evaluation loads one at a time and releases it,
    eval.models.release_memory): one call on ``batch`` items (eval.batch_size) of a ``frames x height x
    width`` video, FLOPs per video = per item x the video's items."""
    net = _meta_modules(lambda: {"net": _eval_networks()[metric]()}, torch.float32)["net"]
    items = eval_items(metric, frames)
    with Simulation() as sim:
        _materialize(net)
        with sim.section() as s, torch.no_grad():
            _eval_call(metric, net, min(batch, items), height, width)
    return _result(s, [net], s.flops * items / min(batch, items), {"items_per_video": items,
                                                                   "items_per_call": min(batch, items)})


# ------------------------------------------------------------------------------------------------ Wan phases

UMT5_XXL = dict(vocab_size=256384, d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64,
                relative_attention_num_buckets=32, relative_attention_max_distance=128,
                feed_forward_proj="gated-gelu", is_encoder_decoder=False, use_cache=False)  # Wan's umt5-xxl encoder
CLIP_VIT_H = dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                  image_size=224, patch_size=14, projection_dim=1024, hidden_act="gelu")  # Wan2.1-I2V image_encoder


class WanSize(NamedTuple):
    """A Wan image-to-video model as its phases are simulated: hub id (its transformer and VAE configs are
    ``reangle.models.wan.FULL_SIZE_TRANSFORMERS`` / ``FULL_SIZE_VAES[pretrained]``), its ``wan_models()``
    name, the clip's frames x height x width, the LoRA targets, the sampling guidance and steps of its
    configs/backbone preset."""

    pretrained: str
    depth_key: str
    frames: int
    height: int
    width: int
    lora_targets: tuple
    guidance: float
    steps: int = 40


WAN_DEFAULT = "wan2.1_14b"


def wan_models() -> dict[str, WanSize]:
    """The Wan models simulated, by name, at their configs/backbone presets' sizes and guidance."""
    from reangle.models.wan import WAN21_I2V_480P, WAN22_I2V_A14B, WAN22_TI2V_5B

    attn1 = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0")  # every Wan backbone preset's targets
    return {"wan2.1_14b": WanSize(WAN21_I2V_480P, "wan2.1_14b", 81, 480, 832, attn1, 5.0),
            "wan2.2_ti2v_5b": WanSize(WAN22_TI2V_5B, "wan2.2_ti2v_5b", 121, 704, 1280, attn1, 5.0, 50),
            "wan2.2_a14b": WanSize(WAN22_I2V_A14B, "wan2.2_a14b", 81, 480, 832, attn1, 3.5)}


def wan_vae_config(size: WanSize) -> dict:
    """``AutoencoderKLWan`` arguments of ``size``'s released VAE, with latent statistics of its channel count
    (their values, not in the configs we have, change no memory or FLOPs)."""
    from reangle.models.wan import FULL_SIZE_VAES

    config = FULL_SIZE_VAES[size.pretrained]
    z = config["z_dim"]
    return {**config, "latents_mean": [0.0] * z, "latents_std": [1.0] * z}


def wan_model_index(size: WanSize) -> dict:
    """What the released model_index.json says about experts (``reangle.models.wan.expert_boundary`` reads it)."""
    from reangle.models.wan import A14B_BOUNDARY_RATIO, WAN22_I2V_A14B

    if size.pretrained != WAN22_I2V_A14B:
        return {}
    return {"boundary_ratio": A14B_BOUNDARY_RATIO, "transformer_2": ["diffusers", "WanTransformer3DModel"]}


def wan_components(size: WanSize, parts):
    """``reangle.models.wan.WanComponents``: full-size Wan parts on meta (bf16, as
    ``model.weights_dtype``), the transformer at the simulated depth."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler
    from transformers import CLIPVisionConfig, CLIPVisionModel, UMT5Config, UMT5EncoderModel

    from reangle.models.cogvideox import tiny_t5_tokenizer
    from reangle.models.wan import (FULL_SIZE_TRANSFORMERS, SCHEDULER_CONFIG, TEXT_LENGTH, WanComponents,
                                    build_wan_transformer_on_meta)

    config = FULL_SIZE_TRANSFORMERS[size.pretrained]
    config = {**config, "num_layers": _units(size.depth_key) or config["num_layers"]}
    builders = {"transformer": lambda: build_wan_transformer_on_meta(config),
                "transformer_2": lambda: build_wan_transformer_on_meta(config),  # two experts: the same layout
                "vae": lambda: AutoencoderKLWan(**wan_vae_config(size)),
                "text_encoder": lambda: UMT5EncoderModel(UMT5Config(**UMT5_XXL)),
                "image_encoder": lambda: CLIPVisionModel(CLIPVisionConfig(**CLIP_VIT_H))}
    modules = _meta_modules(lambda: {p: builders[p]() for p in parts if p in builders})
    out = WanComponents(source="simulated", **modules)
    if "scheduler" in parts:
        out.scheduler = UniPCMultistepScheduler(**SCHEDULER_CONFIG)
    if "tokenizer" in parts:
        out.tokenizer = tiny_t5_tokenizer(TEXT_LENGTH)  # token ids only set shapes (padding to max_length)
    return out


def wan_spec(size: WanSize, rank: int = 128, storage=None):
    """The Wan stage II spec at full size, its transformer with LoRA ``rank`` on ``size.lora_targets`` on meta
    (``storage``: model.storage_dtype)."""
    from diffusers import AutoencoderKLWan

    import reangle.models.wan_i2v as wan_i2v
    from reangle.models.wan import FULL_SIZE_TRANSFORMERS

    spec = wan_i2v.WanI2V(size.pretrained, lora_rank=rank, lora_alpha=rank, lora_targets=size.lora_targets)
    spec.storage_dtype = storage
    with torch.device("meta"):
        vae = {k: v for k, v in AutoencoderKLWan(**wan_vae_config(size)).config.items() if not k.startswith("_")}
    spec._config_cache.update(transformer=dict(FULL_SIZE_TRANSFORMERS[size.pretrained]), vae=vae,
                              model_index=wan_model_index(size))
    with mock.patch.object(wan_i2v, "load_wan_components", lambda pretrained, parts, **_: wan_components(size, parts)):
        spec.load_diffusion_model(torch.device("meta"))
    return spec


def _wan_grid(size: WanSize, vae_config: dict) -> tuple[int, int, int]:
    """Latent frames, height, width of ``size``'s clip."""
    t, s = int(vae_config["scale_factor_temporal"]), int(vae_config["scale_factor_spatial"])
    return (size.frames - 1) // t + 1, size.height // s, size.width // s


@deep(lambda kwargs: kwargs.get("model", WAN_DEFAULT))
def phase_wan_train_step(model: str = WAN_DEFAULT, rank: int = 128, storage=None) -> dict:
    """Wan stage II: one optimizer step of :class:`reangle.models.wan_i2v.WanI2V` (LoRA ``rank`` on the
    preset's targets, gradient checkpointing, bf16 autocast), masked loss, clipping, AdamW (states
    created beforehand) at the preset's clip size; the batch is the cache (latents, condition, tokens).
    Wan2.2-A14B: both experts and both LoRAs resident, the sample's expert runs; ``storage``:
    model.storage_dtype."""
    size = wan_models()[model]
    spec = wan_spec(size, rank, storage)
    f, h, w = _wan_grid(size, spec.component_config("vae"))
    cfg, net = spec.transformer.config, spec.net  # net: the transformer, or both experts (WanExperts)
    with Simulation() as sim:
        _materialize(net)
        params = [p for p in net.parameters() if p.requires_grad]
        opt = _steady_adamw(params)
        z = int(spec.component_config("vae")["z_dim"])
        first_latent = spec.conditioning() == "first_latent"  # Wan2.2-TI2V: the first frame's latent alone
        batch = {"video_mean": torch.randn(1, f, z, h, w), "video_logvar": torch.randn(1, f, z, h, w),
                 "condition": torch.randn(1, 1, z, h, w) if first_latent else torch.randn(1, f, cfg.in_channels - z, h, w),
                 "image_tokens": torch.randn(1, 257, cfg.image_dim) if cfg.image_dim else None,
                 "prompt_embeds": torch.randn(1, 512, cfg.text_dim), "mask": torch.ones(1, f, h, w, dtype=torch.bool)}
        # two experts: a sample runs its expert only (fake values cannot pick one; both have one layout)
        one_expert = mock.patch.object(type(spec), "_expert_velocities",
                                       lambda self, inputs, high: self.transformer(**inputs, return_dict=False)[0])
        with one_expert:
            s = _optimizer_step(sim, spec, batch, params, opt)
        lora = measured(sum(p.numel() * p.element_size() for p in params))
    return _result(s, [net], s.flops, {"lora_gb": lora / GB, "adamw_states_gb": 2 * lora / GB,
                                       "latent_grid": [f, h, w]})


def phase_wan_prompt(model: str = WAN_DEFAULT) -> dict:
    """Wan sampling's first part: UMT5-XXL encodes the prompts (512 tokens), then is released."""
    from reangle.models.wan import TEXT_LENGTH, encode_wan_prompts

    enc = wan_components(wan_models()[model], ["tokenizer", "text_encoder"])
    with Simulation() as sim:
        _materialize(enc.text_encoder)
        with sim.section() as s:
            encode_wan_prompts(enc.tokenizer, enc.text_encoder, ["a scene"], torch.device("cpu"), TEXT_LENGTH)
    return _result(s, [enc.text_encoder], s.flops)


@deep(lambda kwargs: kwargs.get("model", WAN_DEFAULT))
def phase_wan_sample(model: str = WAN_DEFAULT) -> dict:
    """Sampling one Wan view with :class:`reangle.sampling.wan.WanSampler`'s parts (UMT5 released
    first): Wan2.1-I2V's CLIP image tokens of the start frame (at the image processor's 224 x 224),
    the VAE condition (first frame + black frames; Wan2.2-TI2V: the first frame alone), the preset's
    denoising steps (``size.steps``) with CFG as two calls (one step simulated, FLOPs multiplied), VAE decoding; the
    transformer (both experts of Wan2.2-A14B), VAE and CLIP resident."""
    from reangle.models.wan import FULL_SIZE_TRANSFORMERS
    from reangle.sampling.sampler import SampleRequest, SamplingSettings
    from reangle.sampling.wan import WanSampler

    size = wan_models()[model]
    boundary = wan_model_index(size).get("boundary_ratio")
    config = FULL_SIZE_TRANSFORMERS[size.pretrained]
    clip = config["image_dim"] is not None                  # Wan2.1-I2V's CLIP image tokens
    names = ["transformer", "vae", "scheduler"] + (["image_encoder"] if clip else []) + \
        (["transformer_2"] if boundary is not None else [])
    parts = wan_components(size, names)
    models = [getattr(parts, n) for n in names if n != "scheduler"]
    with Simulation() as sim:
        _materialize(*models)
        sampler = WanSampler(parts.transformer, parts.vae, parts.scheduler, image_processor=object() if clip else None,
                             image_encoder=parts.image_encoder, transformer_2=parts.transformer_2,
                             boundary_ratio=boundary, device="cpu", progress=False)
        cfg = parts.transformer.config
        emb = {p: torch.randn(1, 512, cfg.text_dim, dtype=BF16) for p in ("", "scene")}
        request = SampleRequest(torch.rand(3, size.height, size.width), "scene", 0, size.frames)
        with torch.no_grad():
            with sim.section() as enc:
                tokens = parts.image_encoder(torch.rand(1, 3, 224, 224, dtype=BF16),
                                             output_hidden_states=True).hidden_states[-2] if clip else None
                condition = sampler._condition(request)
            # UniPC finds its step index by comparing fake timesteps (no values): the first step is index 0
            with sim.section() as step, mock.patch.object(type(parts.scheduler), "index_for_timestep",
                                                          lambda *args, **kwargs: 0):
                latents = sampler._denoise(request, condition, tokens, emb,
                                           SamplingSettings(steps=1, guidance=size.guidance), 0, 1)
            with sim.section() as dec:
                sampler._decode(latents)
    sections = {"encode": enc, "denoise_step": step, "decode": dec}
    peaks = {k: p.peak_bytes / GB for k, p in sections.items()}
    worst = max(peaks, key=peaks.get)
    return _result(sections[worst], models, enc.flops + size.steps * step.flops + dec.flops,
                   {"part_peaks_gb": peaks, "tflop_per_step": step.flops / 1e12,
                    "tflop_vae_clip": (enc.flops + dec.flops) / 1e12})


def tiling_effect(frames: int = 9, height: int = 480, width: int = 720) -> dict:
    """Measured (CPU, real tensors) effect of sample.vae_tiling on the tiny CogVideoX VAE's decoding of
    random latents at the full frame size, with the full-size VAE's tiles (half the frame per side) and blending."""
    from reangle.models.cogvideox import load_components

    vae = load_components("tiny", ["vae"]).vae
    torch.manual_seed(0)
    latents = torch.randn(1, 16, (frames - 1) // 4 + 1, height // 8, width // 8)
    with torch.no_grad():
        plain = vae.decode(latents).sample
        vae.enable_tiling(tile_sample_min_height=height // 2, tile_sample_min_width=width // 2)  # the 5b VAE's tiles
        tiled = vae.decode(latents).sample
    diff = (plain - tiled).abs()
    return {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
            "output_range": [float(plain.min()), float(plain.max())], "frames": frames}


@deep("cogvideox")
def anchor_finetrainers(precompute_gb: float) -> dict:
    """finetrainers' CogVideoX-5b (text-to-video) LoRA r128 setting: bf16 weights, bf16 LoRA weights and
    AdamW states, batch 1, gradient checkpointing, 49 x 480 x 720 from precomputed latents; its
    published 20.7 GiB is the reserved peak, reached while precomputing (T5 + VAE encoding)."""
    from diffusers import CogVideoXTransformer3DModel

    from reangle.models.lora import add_lora

    config = {**_cogvideox_config(), "in_channels": 16, "use_learned_positional_embeddings": False}
    with torch.device("meta"):
        model = CogVideoXTransformer3DModel.from_config(config).to(BF16)
        add_lora(model, rank=128, alpha=128)
        model.to(BF16)
        model.enable_gradient_checkpointing()
        model.train()
    with Simulation() as sim:
        materialize(model)
        opt = _steady_adamw([p for p in model.parameters() if p.requires_grad])  # bf16 states: bf16 LoRA weights
        latents = torch.randn(1, 13, 16, 60, 90, dtype=BF16)
        text = torch.randn(1, 226, 4096, dtype=BF16)
        with sim.section() as s:
            out = model(hidden_states=latents, encoder_hidden_states=text, timestep=torch.tensor([500]),
                        return_dict=False)[0]
            out.float().square().mean().backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            del out
    train_gib = s.peak_bytes / GIB
    precompute_gib = precompute_gb * GB / GIB
    simulated = max(train_gib, precompute_gib)
    return {"published_reserved_gib": 20.7, "simulated_train_step_gib": train_gib,
            "simulated_precompute_gib": precompute_gib, "simulated_peak_gib": simulated,
            "ratio_simulated_to_published": simulated / 20.7}


def projected(tflop: float, mfu: float = MFU) -> dict:
    return {gpu: tflop / (peak * mfu) for gpu, peak in PEAK_TFLOPS.items()}


PHASE_GOALS = {"stage2_step": ("80gb", 18), "sample_view": ("80gb", 30), "stage3_view": ("80gb", 60)}


def preset_settings(path: Path) -> dict:
    """The settings of a configs/gpu preset that change a simulated phase (base.yaml's defaults otherwise)."""
    from omegaconf import OmegaConf

    base = OmegaConf.load(Path(__file__).resolve().parents[1] / "configs" / "base.yaml")
    cfg = OmegaConf.merge(base, OmegaConf.load(path))
    return {"image_condition": cfg.train.image_condition, "vae_tiling": bool(cfg.sample.vae_tiling),
            "cpu_offload": bool(cfg.sample.cpu_offload), "max_batch": int(cfg.inpaint.max_batch),
            "storage": cfg.model.storage_dtype, "inpaint_storage": cfg.inpaint.storage_dtype,
            "inpaint_offload": cfg.inpaint.offload,
            "met3r_chunk": int(cfg.inpaint.met3r.max_pairs_per_chunk), "eval_met3r_chunk": int(cfg.eval.batch_size)}


def markdown(result: dict) -> str:
    """The tables of RESULTS.md / README from a result: phases, then presets with their H100 times."""
    rows = ["| phase (simulated) | peak GB | weights GB | activations GB | TFLOP | H100 s | A100 s |",
            "|---|---|---|---|---|---|---|"]
    for name, p in result["phases"].items():
        rows.append(f"| {name} | {p['peak_gb']:.1f} | {p['weights_gb']:.1f} | {p['activations_gb']:.1f} | "
                    f"{p['tflop']:,.0f} | {p['projected_s']['h100']:,.0f} | {p['projected_s']['a100']:,.0f} |")
    names = list(next(iter(result["presets"].values()))["phase_peaks_gb"]) if result["presets"] else []
    rows += ["", "| preset | max peak GB | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(names)]
    for preset, p in result["presets"].items():
        rows.append(f"| {preset} | {p['max_peak_gb']:.1f} | "
                    + " | ".join(f"{p['phase_peaks_gb'][n]:.1f}" for n in names) + " |")
    return "\n".join(rows)


class PhaseCache:
    """Results of phase runs by name and arguments, kept in memory and in ``folder`` (``None``: memory
    only), so a phase asked again is not simulated again and an interrupted simulation resumes where
    it stopped. Phases marked :func:`deep` are extrapolated from 1 and 2 units of their model unless
    ``full_depth``."""

    def __init__(self, folder: str | None, full_depth: bool = False):
        self.folder = Path(folder) if folder else None
        self.full_depth = full_depth
        self.memory: dict[str, dict] = {}
        if self.folder:
            self.folder.mkdir(parents=True, exist_ok=True)

    def __call__(self, fn: Callable, **kwargs):
        extrapolated = hasattr(fn, "deep_model") and not self.full_depth
        name = fn.__name__ + "".join(f"-{k}={v}" for k, v in sorted(kwargs.items())) + \
            ("-extrapolated" if extrapolated else "")
        path = self.folder / f"{name}.json" if self.folder else None
        if name not in self.memory:
            if path is not None and path.is_file():
                self.memory[name] = json.loads(path.read_text())
            else:
                self.memory[name] = at_full_depth(fn, **kwargs) if extrapolated else fn(**kwargs)
                if path is not None:
                    path.write_text(json.dumps(self.memory[name]))
        return json.loads(json.dumps(self.memory[name]))  # a copy: callers add keys


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="*", default=None, help="preset YAMLs (default: configs/gpu/*.yaml)")
    parser.add_argument("--skip-validation", action="store_true")
    parser.add_argument("--markdown", default=None, help="also write the tables to this file")
    parser.add_argument("--cache", default=None, help="folder keeping each phase's result (resume after a stop)")
    parser.add_argument("--full-depth", action="store_true",
                        help="simulate the deep transformers whole instead of extrapolating from 1 and 2 blocks")
    args = parser.parse_args(argv)
    run = PhaseCache(args.cache, args.full_depth)
    start = time.perf_counter()
    phases: dict[str, dict] = {}
    phases["stage1_depth"] = run(phase_depth)
    encode = run(phase_encode)
    phases["prompt_t5"], phases["cache_vae_encode"] = encode["prompt"], encode["video"]
    train = {c: run(phase_train_step, image_condition=c) for c in ("per_step", "cached")}
    phases["stage2_step"], phases["stage2_step_cached_image"] = train["per_step"], train["cached"]
    sample = {(t, o): run(phase_sample, tiling=t, offload=o) for t, o in ((False, False), (True, False), (True, True))}
    phases["sample_view"], phases["sample_view_tiled"] = sample[False, False], sample[True, False]
    phases["sample_view_tiled_offload"] = sample[True, True]
    phases["stage3_view"] = run(phase_inpaint)
    phases["eval_met3r"] = run(phase_met3r)
    for metric in EVAL_METRICS:
        phases[f"eval_{metric}"] = run(phase_eval, metric=metric, batch=EVAL_BATCH)
    for name in wan_models():
        phases[f"{name}_step"] = run(phase_wan_train_step, model=name)
        if name == "wan2.2_a14b":  # both experts resident: over 80 GB in bf16
            phases[f"{name}_step_fp8"] = run(phase_wan_train_step, model=name, storage="fp8")
        phases[f"{name}_prompt_umt5"] = run(phase_wan_prompt, model=name)
        phases[f"{name}_sample_view"] = run(phase_wan_sample, model=name)
    steps = 400
    paper = {"paper_a100_s": 3600, "steps": steps,
             "projected_a100_s": projected(steps * phases["stage2_step"]["tflop"])["a100"],
             "implied_mfu": steps * phases["stage2_step"]["tflop"] / (PEAK_TFLOPS["a100"] * 3600)}

    # finetrainers precomputes with T5 and the VAE both resident (we release T5 before the VAE encodes)
    precompute_with_t5 = encode["video"]["peak_gb"] + encode["prompt"]["weights_gb"] - encode["video"]["weights_gb"]
    presets = {}
    paths = [Path(p) for p in args.presets] if args.presets is not None else \
        sorted((Path(__file__).resolve().parents[1] / "configs" / "gpu").glob("*.yaml"))
    inpaint_peaks = {(4, 8, None, None): phases["stage3_view"]["peak_gb"]}
    met3r_peaks = {8: phases["eval_met3r"]["peak_gb"]}
    for path in paths:
        s = preset_settings(path)
        key = (s["max_batch"], s["met3r_chunk"], s["inpaint_storage"], s["inpaint_offload"])
        if key not in inpaint_peaks:
            options = {k: v for k, v in (("storage", key[2]), ("offload", key[3])) if v}  # cache names without nulls
            inpaint_peaks[key] = run(phase_inpaint_peak, max_batch=key[0], met3r_chunk=key[1], **options)
        if s["eval_met3r_chunk"] not in met3r_peaks:
            met3r_peaks[s["eval_met3r_chunk"]] = run(phase_met3r, chunk=s["eval_met3r_chunk"])["peak_gb"]
        storage = {"storage": s["storage"]} if s["storage"] else {}  # model.storage_dtype (cache names without it)
        sampled = run(phase_sample, tiling=s["vae_tiling"], offload=s["cpu_offload"], **storage)
        trained = run(phase_train_step, image_condition=s["image_condition"], **storage) if storage \
            else train[s["image_condition"]]
        if storage:  # the presets' fp8 phases, as rows of their own
            phases["stage2_step" + ("_cached_image" if s["image_condition"] == "cached" else "") + "_fp8"] = trained
            phases["sample_view" + "_tiled" * s["vae_tiling"] + "_offload" * s["cpu_offload"] + "_fp8"] = sampled
        peaks = {"stage1_depth": phases["stage1_depth"]["peak_gb"], "prompt_t5": phases["prompt_t5"]["peak_gb"],
                 "cache_vae_encode": phases["cache_vae_encode"]["peak_gb"],
                 "stage2_step": trained["peak_gb"], "sample_view": sampled["peak_gb"],
                 "stage3_view": inpaint_peaks[key], "eval_met3r": met3r_peaks[s["eval_met3r_chunk"]]}
        peaks.update({f"eval_{m}": run(phase_eval, metric=m, batch=s["eval_met3r_chunk"])["peak_gb"]
                      for m in EVAL_METRICS})
        presets[path.stem] = {"settings": s, "phase_peaks_gb": peaks, "max_peak_gb": max(peaks.values()),
                              "worst_phase": max(peaks, key=peaks.get)}
    for p in phases.values():
        p["projected_s"] = projected(p["tflop"])
    result = {"phases": phases, "presets": presets,
              "validation": {"small_models_cpu": {} if args.skip_validation else run(validate_small),
                             "vae_tiling_effect_tiny": run(tiling_effect),
                             "finetrainers_anchor": run(anchor_finetrainers, precompute_gb=precompute_with_t5), "paper_400_steps": paper},
              "assumptions": {"peak_tflops_bf16_dense": PEAK_TFLOPS, "mfu": MFU,
                              "mfu_basis": "assumed, not measured: the paper's ~1 h for 400 stage II steps on an "
                                           "A100 implies about 0.45 with the simulated step FLOPs; 0.40 leaves room "
                                           "for data loading and host work",
                              "depth": "full depth" if args.full_depth else "deep transformers extrapolated from 2 "
                                       "and 4 blocks (FLUX: 1 and 2 units); repeated gradient-free calls replayed",
                              "gb": "1e9 bytes",
                              "memory": "simulated allocated bytes (not reserved); per phase with only its models"},
              "simulator_seconds": time.perf_counter() - start}
    print(json.dumps(result, indent=1))
    if args.markdown:
        Path(args.markdown).write_text(markdown(result) + "\n")
    return result


if __name__ == "__main__":
    main()
