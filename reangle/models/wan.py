"""Loading Wan image-to-video components from a hub id, a local folder or a tiny config.

Public API::

    load_wan_components(pretrained, parts=None, *, tiny=None, cache_dir=..., revision=None,
                        dtype=torch.float32, device="cpu") -> WanComponents
    resolve_wan(pretrained, *, tiny=None, cache_dir=...) -> str     # folder or hub id
    wan_conditioning(transformer_config, vae_config) -> "channels" | "first_latent"
    WanTinyConfig                                  # sizes (and variant) of the tiny random model
    WanComponents.pipeline() -> WanImageToVideoPipeline
    FULL_SIZE_TRANSFORMERS, FULL_SIZE_VAES         # released configs, by hub id
    build_wan_transformer_on_meta(config) / build_wan_vae_on_meta(config)   (no memory)

``pretrained`` is a hub id (``Wan-AI/Wan2.1-I2V-14B-480P-Diffusers``), a local folder in the
diffusers layout, or ``"tiny"``; all three go through the same ``from_pretrained`` calls
(``"tiny"`` first writes a seeded random model into ``cache_dir/models/wan-tiny-<hash>``).
Two start-frame conditionings exist, told apart by the loaded configs (:func:`wan_conditioning`):

* ``channels`` (Wan2.1-I2V): the transformer takes ``2 z + 4`` channels (noisy latents, a
  4-channel first-frame mask, the VAE latent of the first frame followed by black frames) and
  CLIP image tokens in its cross-attention;
* ``first_latent`` (Wan2.2-TI2V-5B): the transformer takes ``z`` channels; the first latent
  frame is replaced by the clean VAE latent of the start image and its tokens get timestep 0
  (diffusers' ``expand_timesteps``); no image encoder.

Wan2.2-I2V-A14B has the ``channels`` layout without CLIP tokens and two experts of the same
architecture (:func:`expert_boundary`): ``transformer`` denoises the timesteps
``t >= boundary_ratio * 1000`` (high noise), ``transformer_2`` the others; the pipeline's
``model_index.json`` names ``transformer_2`` and holds ``boundary_ratio``.

The tiny model (``WanTinyConfig.variant``): ``i2v`` has the Wan2.1-I2V structure (UMT5, CLIP,
a Wan VAE with 4x temporal / 8x spatial compression and 16 latent channels, a 36-channel
transformer with image cross-attention, UniPC with Wan2.1-480P's shift 3); ``i2v_a14b`` the
Wan2.2-I2V-A14B one (the same VAE, two 36-channel transformers without image cross-attention,
boundary ratio 0.9, UniPC with shift 5, no CLIP); ``ti2v`` the
Wan2.2-TI2V-5B one (UMT5, the residual Wan2.2 VAE: 2 x 2 pixel patches then 8x, so 16x
spatial, 48 latent channels; a 48-channel transformer without image cross-attention; UniPC
with Wan2.2-TI2V's shift 5).
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from reangle.models.cogvideox import (DEFAULT_CACHE, ModelLoadError, folder_or_hub_id, load_parts, publish_tiny,
                                      sizes_from_mapping, tiny_t5_tokenizer)
from reangle.utils import fingerprint

WAN21_I2V_480P = "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers"
WAN22_TI2V_5B = "Wan-AI/Wan2.2-TI2V-5B-Diffusers"
WAN22_I2V_A14B = "Wan-AI/Wan2.2-I2V-A14B-Diffusers"
WAN_COMPONENTS = ("tokenizer", "text_encoder", "image_processor", "image_encoder", "vae", "transformer",
                  "transformer_2", "scheduler")
IMAGE_PARTS = ("image_processor", "image_encoder")   # Wan2.1-I2V's CLIP; Wan2.2 models have none
TINY_VARIANTS = ("i2v", "i2v_a14b", "ti2v")
# Wan's text length (wan/configs/shared_config.py: text_len = 512; the pipeline's max_sequence_length).
TEXT_LENGTH = 512

# The scheduler of Wan-AI/Wan2.1-I2V-14B-480P-Diffusers (scheduler/scheduler_config.json): UniPC on
# flow sigmas shifted by 3.0 (Wan's sample_shift for 480p), velocity ("flow") prediction.
SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000, "prediction_type": "flow_prediction", "use_flow_sigmas": True, "flow_shift": 3.0,
    "solver_order": 2, "solver_type": "bh2", "predict_x0": True, "lower_order_final": True,
    "final_sigmas_type": "zero", "timestep_spacing": "linspace",
}
# Wan2.2-TI2V-5B samples with shift 5.0 (Wan2.2's wan/configs/wan_ti2v_5B.py: sample_shift).
TI2V_FLOW_SHIFT = 5.0
# Wan2.2-I2V-A14B (Wan2.2's wan/configs/wan_i2v_A14B.py): sample_shift 5.0, boundary 0.900 (the high-noise
# expert takes t >= 900), sample_guide_scale (3.5, 3.5), sample_steps 40.
A14B_FLOW_SHIFT = 5.0
A14B_BOUNDARY_RATIO = 0.9

# Transformer configs of the released checkpoints. Wan2.1-I2V-14B-480P: diffusers'
# scripts/convert_wan_to_diffusers.py ("Wan-I2V-14B-480p"), the dims of Wan's own
# wan/configs/wan_i2v_14B.py (dim 5120, ffn 13824, 40 heads, 40 layers, CLIP ViT-H 1280).
# Wan2.2-TI2V-5B: Wan2.2's wan/configs/wan_ti2v_5B.py (dim 3072 = 24 x 128, ffn 14336,
# 30 layers, 48 latent channels in and out, no image encoder). Wan2.2-I2V-A14B: Wan2.2's
# wan/configs/wan_i2v_A14B.py (the Wan2.1-14B dims: dim 5120, ffn 13824, 40 heads, 40 layers; the
# Wan2.1 VAE, so 36 = 16 + 4 + 16 input channels) without the CLIP image branch; both experts
# (transformer/ and transformer_2/) have this config.
FULL_SIZE_TRANSFORMERS: dict[str, dict[str, Any]] = {
    WAN21_I2V_480P: {
        "patch_size": [1, 2, 2], "num_attention_heads": 40, "attention_head_dim": 128, "in_channels": 36,
        "out_channels": 16, "text_dim": 4096, "freq_dim": 256, "ffn_dim": 13824, "num_layers": 40,
        "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": 1e-6, "image_dim": 1280,
        "added_kv_proj_dim": 5120, "rope_max_seq_len": 1024, "pos_embed_seq_len": None,
    },
    WAN22_TI2V_5B: {
        "patch_size": [1, 2, 2], "num_attention_heads": 24, "attention_head_dim": 128, "in_channels": 48,
        "out_channels": 48, "text_dim": 4096, "freq_dim": 256, "ffn_dim": 14336, "num_layers": 30,
        "cross_attn_norm": True, "qk_norm": "rms_norm_across_heads", "eps": 1e-6, "image_dim": None,
        "added_kv_proj_dim": None, "rope_max_seq_len": 1024, "pos_embed_seq_len": None,
    },
}
FULL_SIZE_TRANSFORMERS[WAN22_I2V_A14B] = {**FULL_SIZE_TRANSFORMERS[WAN21_I2V_480P], "image_dim": None,
                                          "added_kv_proj_dim": None}   # Wan2.1-14B without the CLIP branch


# VAE configs of the released checkpoints (vae/config.json; the latent statistics, not weights,
# left out). Wan2.1 (also Wan2.2-I2V-A14B's): diffusers' AutoencoderKLWan defaults, which
# scripts/convert_wan_to_diffusers.py uses for the Wan2.1 VAE. Wan2.2-TI2V-5B: that script's Wan2.2 VAE config (Wan2.2's
# wan/modules/vae2_2.py: dim 160, decoder dim 256, z_dim 48, 12 = 3 x 2 x 2 patched pixel channels).
FULL_SIZE_VAES: dict[str, dict[str, Any]] = {
    WAN21_I2V_480P: {
        "base_dim": 96, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_scales": [],
        "temperal_downsample": [False, True, True], "dropout": 0.0,
    },
    WAN22_TI2V_5B: {
        "base_dim": 160, "decoder_base_dim": 256, "z_dim": 48, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2,
        "attn_scales": [], "temperal_downsample": [False, True, True], "dropout": 0.0, "is_residual": True,
        "in_channels": 12, "out_channels": 12, "patch_size": 2, "scale_factor_temporal": 4,
        "scale_factor_spatial": 16,
    },
}
# Wan2.2-I2V-A14B uses the Wan2.1 VAE (Wan2.2's wan/configs/wan_i2v_A14B.py: vae_checkpoint Wan2.1_VAE.pth).
FULL_SIZE_VAES[WAN22_I2V_A14B] = FULL_SIZE_VAES[WAN21_I2V_480P]


@dataclass
class WanTinyConfig:
    """Sizes of the tiny random Wan; ``variant``: ``i2v`` (Wan2.1-I2V: any frame count 1 + 4k and size
    multiple of 16 runs), ``i2v_a14b`` (Wan2.2-I2V-A14B: the same grid, two experts) or ``ti2v``
    (Wan2.2-TI2V: sizes multiple of 32); ``image_dim``/``image_size``: the CLIP of ``i2v`` only."""

    seed: int = 0
    variant: str = "i2v"
    num_layers: int = 2
    num_attention_heads: int = 2
    attention_head_dim: int = 12
    ffn_dim: int = 48
    freq_dim: int = 32
    text_dim: int = 32
    text_layers: int = 1
    image_dim: int = 32
    image_size: int = 32       # CLIP input side; (image_size / 8)^2 + 1 image tokens
    vae_base_dim: int = 8

    def __post_init__(self):
        if self.variant not in TINY_VARIANTS:
            raise ModelLoadError(f"unknown tiny Wan variant {self.variant!r}; use one of {TINY_VARIANTS}")

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any] | "WanTinyConfig" | None) -> "WanTinyConfig":
        return sizes_from_mapping(cls, values)

    @property
    def size_multiple(self) -> int:
        """Height/width multiple in pixels: the VAE's spatial factor (8, or 16 with Wan2.2's 2 x 2 pixel
        patches) times the transformer's 2 x 2 patches."""
        return 32 if self.variant == "ti2v" else 16

    def key(self) -> str:
        return fingerprint(asdict(self))


@dataclass
class WanComponents:
    """The loaded parts (``None`` for parts not asked for) and where they came from."""

    source: str
    tokenizer: Any = None
    text_encoder: Any = None
    image_processor: Any = None
    image_encoder: Any = None
    vae: Any = None
    transformer: Any = None
    transformer_2: Any = None
    scheduler: Any = None
    boundary_ratio: float | None = None   # two experts: where transformer_2 takes over (model_index.json)

    def pipeline(self):
        """A ``WanImageToVideoPipeline`` over these parts (all the model has must be loaded), with
        ``expand_timesteps`` set for a ``first_latent`` model and ``boundary_ratio`` for two experts."""
        from diffusers import WanImageToVideoPipeline

        if self.transformer is None or self.vae is None:
            raise ModelLoadError("cannot build the pipeline: the transformer and the VAE were not loaded")
        first_latent = wan_conditioning(self.transformer.config, self.vae.config) == "first_latent"
        needed = model_parts(self.transformer.config, self.boundary_ratio is not None)
        missing = [p for p in needed if getattr(self, p) is None]
        if missing:
            raise ModelLoadError(f"cannot build the pipeline: component(s) {missing} were not loaded")
        return WanImageToVideoPipeline(**{p: getattr(self, p) for p in needed}, expand_timesteps=first_latent,
                                       boundary_ratio=self.boundary_ratio)


def wan_conditioning(transformer_config: Mapping[str, Any], vae_config: Mapping[str, Any]) -> str:
    """How the transformer of these configs takes the start frame: ``channels`` (Wan2.1-I2V style,
    ``in_channels = 2 z + 4``) or ``first_latent`` (Wan2.2-TI2V style, ``in_channels = z``, no image
    tokens); any other layout is a :class:`ModelLoadError`."""
    z, channels = int(vae_config["z_dim"]), int(transformer_config["in_channels"])
    if channels == 2 * z + 4:
        return "channels"
    if channels == z and transformer_config.get("image_dim") is None:
        return "first_latent"
    raise ModelLoadError(f"a Wan transformer with {channels} input channels over a {z}-channel VAE is not an "
                         f"image-to-video layout this project knows (Wan2.1-I2V: {2 * z + 4}; Wan2.2-TI2V: {z})")


def high_noise(timestep: torch.Tensor, boundary_ratio: float, num_train_timesteps: int) -> torch.Tensor:
    """Whether a two-expert model's high-noise ``transformer`` takes ``timestep`` (bool, same shape):
    ``timestep >= boundary_ratio * num_train_timesteps``, as ``WanImageToVideoPipeline`` switches;
    ``transformer_2`` takes the others."""
    return timestep >= boundary_ratio * num_train_timesteps


def model_parts(transformer_config: Mapping[str, Any], two_experts: bool = False) -> tuple[str, ...]:
    """The components a model with this transformer has: all, less the CLIP pair without image tokens
    and ``transformer_2`` without a second expert."""
    left_out = (IMAGE_PARTS if transformer_config.get("image_dim") is None else ()) + \
        (() if two_experts else ("transformer_2",))
    return tuple(p for p in WAN_COMPONENTS if p not in left_out)


def read_model_index(root: str, revision: str | None = None) -> dict[str, Any]:
    """The pipeline's ``model_index.json`` of a folder or hub id (``{}`` when it has none)."""
    from diffusers import DiffusionPipeline

    try:
        return dict(DiffusionPipeline.load_config(root, **({"revision": revision} if revision else {})))
    except OSError:  # a folder without model_index.json: its components say the rest
        return {}


def expert_boundary(model_index: Mapping[str, Any], name: str) -> float | None:
    """The ``boundary_ratio`` of a two-expert model (Wan2.2-A14B: ``transformer_2`` takes the timesteps
    below ``boundary_ratio * num_train_timesteps``), ``None`` for one transformer; a model index with
    only one of the two is a :class:`ModelLoadError` (``name``: the model, for the message)."""
    second = (model_index.get("transformer_2") or [None])[-1] is not None
    ratio = model_index.get("boundary_ratio")
    if second != (ratio is not None):
        raise ModelLoadError(f"{name}: model_index.json has {'a transformer_2' if second else 'a boundary_ratio'} "
                             f"without {'a boundary_ratio' if second else 'a transformer_2'}; a two-expert Wan "
                             f"needs both")
    if ratio is not None and not 0 < float(ratio) < 1:
        raise ModelLoadError(f"{name}: boundary_ratio {ratio} is not between 0 and 1")
    return None if ratio is None else float(ratio)


def _component_classes() -> dict[str, Any]:
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanTransformer3DModel
    from transformers import AutoTokenizer, CLIPImageProcessor, CLIPVisionModel, UMT5EncoderModel

    return {"tokenizer": AutoTokenizer, "text_encoder": UMT5EncoderModel, "image_processor": CLIPImageProcessor,
            "image_encoder": CLIPVisionModel, "vae": AutoencoderKLWan, "transformer": WanTransformer3DModel,
            "transformer_2": WanTransformer3DModel, "scheduler": UniPCMultistepScheduler}


def _tiny_wan21_vae(cfg: WanTinyConfig):
    """A random tiny Wan2.1 VAE (16 latent channels, 4x temporal / 8x spatial)."""
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan(base_dim=cfg.vae_base_dim, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                            temperal_downsample=[False, True, True])


def _build_tiny(cfg: WanTinyConfig):
    """Random tiny Wan components of ``cfg.variant`` (not saved), as a pipeline."""
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanImageToVideoPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    tokenizer = tiny_t5_tokenizer(TEXT_LENGTH)
    text_encoder = UMT5EncoderModel(UMT5Config(
        vocab_size=len(tokenizer), d_model=cfg.text_dim, d_kv=8, d_ff=2 * cfg.text_dim, num_layers=cfg.text_layers,
        num_heads=max(1, cfg.text_dim // 8), relative_attention_num_buckets=8, relative_attention_max_distance=32))
    transformer_sizes = dict(
        patch_size=(1, 2, 2), num_attention_heads=cfg.num_attention_heads, attention_head_dim=cfg.attention_head_dim,
        text_dim=cfg.text_dim, freq_dim=cfg.freq_dim, ffn_dim=cfg.ffn_dim, num_layers=cfg.num_layers,
        rope_max_seq_len=64)
    common = dict(tokenizer=tokenizer, text_encoder=text_encoder)
    if cfg.variant == "ti2v":
        z = 48
        # fixed, non-trivial latent statistics so that the normalisation is exercised
        stats = dict(latents_mean=torch.linspace(-0.3, 0.3, z).tolist(),
                     latents_std=torch.linspace(0.5, 1.5, z).tolist())
        vae = AutoencoderKLWan(base_dim=cfg.vae_base_dim, z_dim=z, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                               temperal_downsample=[False, True, True], is_residual=True, in_channels=12,
                               out_channels=12, patch_size=2, scale_factor_spatial=16, **stats)
        transformer = WanTransformer3DModel(in_channels=z, out_channels=z, **transformer_sizes)
        scheduler = UniPCMultistepScheduler(**{**SCHEDULER_CONFIG, "flow_shift": TI2V_FLOW_SHIFT})
        return WanImageToVideoPipeline(vae=vae, transformer=transformer, scheduler=scheduler, expand_timesteps=True,
                                       **common)
    if cfg.variant == "i2v_a14b":
        vae = _tiny_wan21_vae(cfg)
        high, low = (WanTransformer3DModel(in_channels=36, out_channels=16, **transformer_sizes) for _ in range(2))
        scheduler = UniPCMultistepScheduler(**{**SCHEDULER_CONFIG, "flow_shift": A14B_FLOW_SHIFT})
        return WanImageToVideoPipeline(vae=vae, transformer=high, transformer_2=low, scheduler=scheduler,
                                       boundary_ratio=A14B_BOUNDARY_RATIO, **common)
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    image_encoder = CLIPVisionModel(CLIPVisionConfig(
        hidden_size=cfg.image_dim, intermediate_size=2 * cfg.image_dim, num_hidden_layers=2, num_attention_heads=2,
        image_size=cfg.image_size, patch_size=8, projection_dim=cfg.image_dim))
    image_processor = CLIPImageProcessor(size={"shortest_edge": cfg.image_size},
                                         crop_size={"height": cfg.image_size, "width": cfg.image_size})
    vae = _tiny_wan21_vae(cfg)
    inner = cfg.num_attention_heads * cfg.attention_head_dim
    transformer = WanTransformer3DModel(in_channels=36, out_channels=16, image_dim=cfg.image_dim,
                                        added_kv_proj_dim=inner, **transformer_sizes)
    scheduler = UniPCMultistepScheduler(**SCHEDULER_CONFIG)
    return WanImageToVideoPipeline(vae=vae, scheduler=scheduler, image_processor=image_processor,
                                   image_encoder=image_encoder, transformer=transformer, **common)


def materialize_wan_tiny(tiny: WanTinyConfig | Mapping[str, Any] | None,
                         cache_dir: str | os.PathLike = DEFAULT_CACHE) -> Path:
    """Write the tiny Wan into ``cache_dir/models/wan-tiny-<hash>`` unless it is there; returns the folder."""
    return publish_tiny(WanTinyConfig.from_mapping(tiny), _build_tiny, Path(cache_dir) / "models", "wan-tiny")


def resolve_wan(pretrained: str, *, tiny: WanTinyConfig | Mapping[str, Any] | None = None,
                cache_dir: str | os.PathLike = DEFAULT_CACHE) -> str:
    """The folder or hub id that ``from_pretrained`` reads for ``pretrained``."""
    if pretrained == "tiny":
        return str(materialize_wan_tiny(tiny, cache_dir))
    return folder_or_hub_id(pretrained, WAN21_I2V_480P, "model.pretrained")


def load_wan_components(pretrained: str = WAN21_I2V_480P, parts: Iterable[str] | None = None, *,
                        tiny: WanTinyConfig | Mapping[str, Any] | None = None,
                        cache_dir: str | os.PathLike = DEFAULT_CACHE, revision: str | None = None,
                        dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> WanComponents:
    """Load the asked ``parts`` of a Wan image-to-video model (models in ``eval()`` on ``device``, ``dtype``);
    ``None``: every part the model has (:func:`model_parts` of its transformer config and model index).
    ``boundary_ratio`` is set from the model index whatever the parts."""
    root = resolve_wan(pretrained, tiny=tiny, cache_dir=cache_dir)
    out = WanComponents(source=root, boundary_ratio=expert_boundary(read_model_index(root, revision), pretrained))
    if parts is None:
        from diffusers import WanTransformer3DModel

        parts = model_parts(WanTransformer3DModel.load_config(
            root, subfolder="transformer", **({"revision": revision} if revision else {})),
            out.boundary_ratio is not None)
    load_parts(out, pretrained, root, parts, _component_classes(), "Wan image-to-video", revision=revision,
               dtype=dtype, device=device)
    return out


def build_wan_transformer_on_meta(config: Mapping[str, Any]):
    """A ``WanTransformer3DModel`` of ``config`` on the meta device."""
    from accelerate import init_empty_weights
    from diffusers import WanTransformer3DModel

    with init_empty_weights(include_buffers=True):
        return WanTransformer3DModel.from_config(dict(config))


def build_wan_vae_on_meta(config: Mapping[str, Any]):
    """An ``AutoencoderKLWan`` of ``config`` on the meta device."""
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKLWan

    with init_empty_weights(include_buffers=True):
        return AutoencoderKLWan.from_config(dict(config))


# --- conditioning, shared by training (reangle.models.wan_i2v) and sampling (reangle.sampling.wan) ---------

def latent_stats(vae_config: Mapping[str, Any], like: torch.Tensor, channel_dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The VAE's per-channel latent ``(mean, std)`` shaped to broadcast along ``channel_dim`` of ``like``."""
    shape = [1] * like.dim()
    shape[channel_dim] = int(vae_config["z_dim"])
    mean = torch.tensor(vae_config["latents_mean"]).view(shape).to(like.device, like.dtype)
    std = torch.tensor(vae_config["latents_std"]).view(shape).to(like.device, like.dtype)
    return mean, std


def normalize_latents(latents: torch.Tensor, vae_config: Mapping[str, Any], channel_dim: int = 1) -> torch.Tensor:
    """Raw VAE latents -> the diffusion model's space: ``(z - latents_mean) / latents_std`` per channel."""
    mean, std = latent_stats(vae_config, latents, channel_dim)
    return (latents - mean) * (1.0 / std)


@torch.no_grad()
def encode_wan_prompts(tokenizer, text_encoder, prompts: list[str], device: torch.device,
                       max_length: int = TEXT_LENGTH) -> torch.Tensor:
    """UMT5 embeddings ``[B, max_length, D]`` as Wan uses them: the cleaned prompt's tokens with its
    attention mask, the states past the prompt's length set to zero."""
    from diffusers.pipelines.wan.pipeline_wan_i2v import prompt_clean

    tokens = tokenizer([prompt_clean(p) for p in prompts], padding="max_length", max_length=max_length,
                       truncation=True, add_special_tokens=True, return_attention_mask=True, return_tensors="pt")
    mask = tokens.attention_mask.to(device)
    states = text_encoder(tokens.input_ids.to(device), mask).last_hidden_state
    return states * mask.unsqueeze(-1).to(states.dtype)


@torch.no_grad()
def encode_wan_image(image_processor, image_encoder, images: torch.Tensor) -> torch.Tensor:
    """CLIP image tokens ``[B, T, D]`` (the penultimate hidden states, as Wan2.1-I2V uses them) of
    ``[B, 3, H, W]`` images in [0, 1], given to the processor as 8-bit RGB images."""
    from PIL import Image

    pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    inputs = image_processor(images=[Image.fromarray(p) for p in pixels], return_tensors="pt")
    device = next(image_encoder.parameters()).device
    return image_encoder(inputs.pixel_values.to(device, image_encoder.dtype), output_hidden_states=True).hidden_states[-2]


@torch.no_grad()
def encode_mode(vae, video_pm1: torch.Tensor) -> torch.Tensor:
    """The normalised VAE mode ``[B, C, F, h, w]`` (float32) of a ``[B, 3, N, H, W]`` video in [-1, 1]."""
    return normalize_latents(vae.encode(video_pm1.to(vae.dtype)).latent_dist.mode().float(), vae.config)


def wan_first_latent(vae, images_pm1: torch.Tensor) -> torch.Tensor:
    """Wan2.2-TI2V's condition ``[B, C, 1, h, w]``: the normalised VAE mode of the start images
    ``[B, 3, H, W]`` in [-1, 1] encoded alone (one latent frame)."""
    return encode_mode(vae, images_pm1[:, :, None])


def with_first_latent(latents: torch.Tensor, condition: torch.Tensor, frame_dim: int = 2) -> torch.Tensor:
    """``latents`` with latent frame 0 (along ``frame_dim``) replaced by the one-frame ``condition``."""
    rest = latents.narrow(frame_dim, 1, latents.shape[frame_dim] - 1)
    return torch.cat([condition.to(latents.dtype), rest], dim=frame_dim)


def first_latent_timesteps(timestep: torch.Tensor, frames: int, height: int, width: int,
                           patch: tuple[int, int]) -> torch.Tensor:
    """Per-token timesteps ``[B, F * (h / p_h) * (w / p_w)]`` of a ``first_latent`` model: 0 on latent
    frame 0's tokens (it holds the clean start image), ``timestep[b]`` on the others; tokens in the
    transformer's order (frame, row, column). ``timestep``: ``[B]`` or a scalar."""
    keep = torch.ones(frames, height // patch[0], width // patch[1], device=timestep.device)
    keep[0] = 0
    return keep.flatten()[None] * timestep.reshape(-1, 1)


@torch.no_grad()
def wan_image_condition(vae, images_pm1: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Wan2.1-I2V's condition ``[B, 4 + C, F, h, w]``: a first-frame mask (1 on the first pixel frame,
    folded like the VAE folds time: 4 channels per latent frame) and the normalised VAE mode of the
    first frame ``[B, 3, H, W]`` in [-1, 1] followed by ``num_frames - 1`` black frames."""
    b, _, h, w = images_pm1.shape
    t = int(vae.config.scale_factor_temporal)
    video = torch.cat([images_pm1[:, :, None], images_pm1.new_zeros(b, 3, num_frames - 1, h, w)], dim=2)
    latent = encode_mode(vae, video)
    frames, lh, lw = latent.shape[2:]
    mask = latent.new_zeros(b, t, frames, lh, lw)
    mask[:, :, 0] = 1.0   # the first latent frame holds the given first frame (repeated to fill its 4 slots)
    return torch.cat([mask, latent], dim=1)
