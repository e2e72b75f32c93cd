"""FeatUp joint-bilateral upsampler (``featup.upsamplers.JBUStack``) and its ``dino16`` model.

Checkpoint-compatible port of the torch.hub model ``mhamilton723/FeatUp`` /
``dino16`` (``use_norm=True``): ``UpsampledBackbone`` with

- ``model``: ``nn.Sequential(DinoFeaturizer, ChannelNorm)``; ``model.0.model`` is a
  DINO ViT-S/16 (last block's patch tokens after the final norm, as a
  ``(B, 384, H/16, W/16)`` map), ``model.1.norm`` a LayerNorm over channels;
- ``upsampler``: ``JBUStack`` = four ``JBULearnedRange`` layers ``up1..up4`` (x2 each,
  so x16 in all) and a residual 1x1 ``fixup_proj``.

State-dict keys therefore equal the official ones: ``model.0.model.<DINO keys>``,
``model.1.norm.{weight,bias}``, ``upsampler.up{1..4}.{range_temp, sigma_spatial,
range_proj.{0,3}.{weight,bias}, fixup_proj.{0,3}.{weight,bias}}``,
``upsampler.fixup_proj.1.{weight,bias}`` (Sequential indices count the GELU and
Dropout2d layers, which hold no weights).

Images: ``forward`` takes ImageNet-normalised images ``(B, 3, H, W)`` with H, W
multiples of 16 and uses them both as the backbone input and as the guidance.
"""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .dino import (VisionTransformer, clean_state_dict, config_from_state_dict, load_dino, read_state_dict,
                   sidecar_heads)

HUB_ID = "mhamilton723/FeatUp"
DINO16_CKPT_URL = (
    "https://marhamilresearch4.blob.core.windows.net/feature-upsampling-public/pretrained/"
    "dino16_jbu_stack_cocostuff.ckpt"
)
"""Checkpoint that ``torch.hub.load("mhamilton723/FeatUp", "dino16", use_norm=True)`` loads."""


def adaptive_conv(inp: Tensor, filters: Tensor) -> Tensor:
    """Per-pixel convolution: ``out[b,c,h,w] = sum_{i,j} inp[b,c,h+i,w+j] * filters[b,h,w,i,j]``.

    ``inp`` (B, C, H+k-1, W+k-1) is the padded input, ``filters`` (B, H, W, k, k);
    returns (B, C, H, W). One fused multiply-add per kernel offset into the output,
    so the forward needs no memory beyond the output; differentiable in both inputs.
    """
    b, c, hp, wp = inp.shape
    fb, h, w, k, k2 = filters.shape
    if fb != b or k != k2 or hp != h + k - 1 or wp != w + k - 1:
        raise ValueError(
            f"adaptive_conv: input {tuple(inp.shape)} does not fit filters {tuple(filters.shape)} "
            "(need input (B, C, H+k-1, W+k-1) and filters (B, H, W, k, k))"
        )
    weights = filters.permute(0, 3, 4, 1, 2).unsqueeze(3)  # (B, k, k, 1, H, W)
    out = inp.new_zeros(b, c, h, w)
    for i in range(k):
        for j in range(k):
            out.addcmul_(inp[:, :, i:i + h, j:j + w], weights[:, i, j])
    return out


class JBULearnedRange(nn.Module):
    """One x2 joint-bilateral upsampling layer with a learned range kernel.

    ``forward(source (B, C, h, w), guidance (B, G, H, W))`` -> (B, C, H, W), any C; the source
    is bicubically resized to the guidance size, then each output pixel averages its
    (2r+1)^2 neighbourhood with weights = softmax range kernel (similarity of projected
    guidance) x Gaussian spatial kernel, normalised, plus a learned correction.
    """

    def __init__(self, guidance_dim: int, key_dim: int, radius: int = 3):
        super().__init__()
        self.radius = radius
        self.diameter = 2 * radius + 1
        self.key_dim = key_dim
        taps = self.diameter ** 2
        self.range_temp = nn.Parameter(torch.tensor(0.0))
        self.range_proj = nn.Sequential(
            nn.Conv2d(guidance_dim, key_dim, 1), nn.GELU(), nn.Dropout2d(0.1), nn.Conv2d(key_dim, key_dim, 1)
        )
        self.fixup_proj = nn.Sequential(
            nn.Conv2d(guidance_dim + taps, taps, 1), nn.GELU(), nn.Dropout2d(0.1), nn.Conv2d(taps, taps, 1)
        )
        self.sigma_spatial = nn.Parameter(torch.tensor(1.0))

    def range_kernel(self, guidance: Tensor) -> Tensor:
        """Softmax over the (2r+1)^2 neighbours of key similarities: (B, taps, H, W), taps row-major."""
        _, _, h, w = guidance.shape
        keys = self.range_proj(guidance)
        padded = F.pad(keys, [self.radius] * 4, mode="reflect")
        logits = torch.stack(
            [(padded[:, :, i:i + h, j:j + w] * keys).sum(1) for i in range(self.diameter) for j in range(self.diameter)],
            dim=1,
        )
        temperature = self.range_temp.exp().clamp(1e-4, 1e4)
        return F.softmax(temperature * logits, dim=1)

    def spatial_kernel(self) -> Tensor:
        """Gaussian over offsets in [-1, 1]^2 with std ``sigma_spatial``: (1, taps, 1, 1)."""
        offsets = torch.linspace(-1, 1, self.diameter, device=self.sigma_spatial.device)
        dist2 = offsets.view(-1, 1).square() + offsets.view(1, -1).square()
        return torch.exp(-dist2 / (2 * self.sigma_spatial ** 2)).reshape(1, -1, 1, 1)

    def forward(self, source: Tensor, guidance: Tensor) -> Tensor:
        b, _, h, w = guidance.shape
        kernel = self.range_kernel(guidance) * self.spatial_kernel()
        kernel = kernel / kernel.sum(1, keepdim=True).clamp(1e-7)
        kernel = kernel + 0.1 * self.fixup_proj(torch.cat([kernel, guidance], dim=1))
        kernel = kernel.permute(0, 2, 3, 1).reshape(b, h, w, self.diameter, self.diameter)
        hr_source = F.interpolate(source, (h, w), mode="bicubic", align_corners=False)
        hr_source = F.pad(hr_source, [self.radius] * 4, mode="reflect")
        return adaptive_conv(hr_source, kernel)


class JBUStack(nn.Module):
    """Four x2 ``JBULearnedRange`` layers guided by the image, then ``x + 0.1 * fixup_proj(x)``.

    ``forward(source (B, C, h, w), guidance (B, 3, 16h, 16w))`` -> (B, C, 16h, 16w); each
    layer sees the guidance average-pooled to its output size.
    """

    def __init__(self, feat_dim: int, key_dim: int = 32, radius: int = 3):
        super().__init__()
        self.up1 = JBULearnedRange(3, key_dim, radius)
        self.up2 = JBULearnedRange(3, key_dim, radius)
        self.up3 = JBULearnedRange(3, key_dim, radius)
        self.up4 = JBULearnedRange(3, key_dim, radius)
        self.fixup_proj = nn.Sequential(nn.Dropout2d(0.2), nn.Conv2d(feat_dim, feat_dim, kernel_size=1))

    def forward(self, source: Tensor, guidance: Tensor) -> Tensor:
        for up in (self.up1, self.up2, self.up3, self.up4):
            _, _, h, w = source.shape
            source = up(source, F.adaptive_avg_pool2d(guidance, (2 * h, 2 * w)))
        return self.fixup_proj(source) * 0.1 + source


class DinoFeaturizer(nn.Module):
    """DINO patch tokens of the last block (after the final norm) as a map (B, D, H/p, W/p)."""

    def __init__(self, vit: VisionTransformer):
        super().__init__()
        self.model = vit

    def forward(self, images: Tensor) -> Tensor:
        b, _, h, w = images.shape
        p = self.model.patch_size
        if h % p or w % p:
            raise ValueError(f"image size {h}x{w} must be a multiple of the patch size {p}")
        tokens = self.model.get_intermediate_layers(images, 1)[0][:, 1:]
        return tokens.reshape(b, h // p, w // p, -1).permute(0, 3, 1, 2)


class ChannelNorm(nn.Module):
    """LayerNorm over the channels of a (B, C, H, W) map."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class UpsampledBackbone(nn.Module):
    """FeatUp hub model: ``upsampler(model(images), images)`` -> (B, D, H, W) features."""

    def __init__(self, vit: VisionTransformer, key_dim: int = 32, radius: int = 3):
        super().__init__()
        self.dim = vit.embed_dim
        self.model = nn.Sequential(DinoFeaturizer(vit), ChannelNorm(self.dim))
        self.upsampler = JBUStack(self.dim, key_dim, radius)

    def forward(self, images: Tensor) -> Tensor:
        return self.upsampler(self.model(images), images)


def _featup_keys(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Map a FeatUp checkpoint onto ``UpsampledBackbone`` names.

    Assumed layout (FeatUp's ``train_jbu_upsampler``): the Lightning checkpoint's
    ``state_dict`` holds ``model.0.model.*`` (the frozen DINO), ``model.1.norm.*``,
    ``upsampler.*`` and training-only ``downsampler.*`` / ``scale_net.*`` (dropped, as
    the hub loader does). A DDP ``module.`` prefix is stripped; a bare upsampler state
    dict (``up1.*``, ``fixup_proj.*``) gets the ``upsampler.`` prefix. ``model.1.norm.*``
    may be absent: FeatUp's optimizer holds only the upsampler, downsampler and
    scale net, so the channel norm keeps its initial identity affine.
    """
    out = {}
    for key, value in state.items():
        if key.startswith("module."):
            key = key[len("module."):]
        if key.startswith(("downsampler.", "scale_net.")):
            continue
        if key.startswith(("up1.", "up2.", "up3.", "up4.", "fixup_proj.")):
            key = "upsampler." + key
        out[key] = value
    return out


def build_featup(
    dino: VisionTransformer | str | os.PathLike | Mapping[str, Any], key_dim: int = 32, radius: int = 3
) -> UpsampledBackbone:
    """``UpsampledBackbone`` around a DINO ViT (module or ``load_dino`` source); random upsampler."""
    vit = dino if isinstance(dino, VisionTransformer) else load_dino(dino)
    return UpsampledBackbone(vit, key_dim, radius)


def load_featup(
    source: str | os.PathLike | Mapping[str, Any] = HUB_ID,
    *,
    dino_source: str | os.PathLike | Mapping[str, Any] | None = None,
    dino_num_heads: int | None = None,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
) -> UpsampledBackbone:
    """FeatUp ``dino16`` in eval mode with frozen weights.

    ``source``: ``"mhamilton723/FeatUp"`` (downloads the official ``use_norm=True``
    checkpoint once into the torch hub cache), a local ``.ckpt`` / ``.pth`` /
    ``.safetensors`` file, or a tiny config ``{"dino": <load_dino source or kwargs>,
    "key_dim": int, "radius": int}`` (random weights). When a checkpoint lacks the
    DINO weights (``model.0.model.*``), they come from ``dino_source`` (e.g.
    ``"dino_vits16"``). ``dino_num_heads``: the DINO head count of a checkpoint that is not
    an official preset (see :func:`~reangle.nets.dino.load_dino`; a sidecar works too).
    """
    if isinstance(source, Mapping):
        config = dict(source)
        model = build_featup(config.pop("dino", {"arch": "vit_small"}), **config)
    else:
        name = str(source)
        if name == HUB_ID:
            ckpt = torch.hub.load_state_dict_from_url(DINO16_CKPT_URL, map_location="cpu", weights_only=True)
            state = ckpt.get("state_dict", ckpt)
        elif Path(name).exists():
            state = read_state_dict(name)
        else:
            raise FileNotFoundError(f"FeatUp source {name!r} is neither a file nor the hub id {HUB_ID!r}")
        state = _featup_keys(state)
        prefix = "model.0.model."
        dino_state = clean_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
        if dino_state:
            heads = dino_num_heads if dino_num_heads is not None else sidecar_heads(name)
            vit = VisionTransformer(**config_from_state_dict(dino_state, heads, name))
        elif dino_source is not None:
            vit = load_dino(dino_source, **({} if dino_num_heads is None else {"num_heads": dino_num_heads}))
            state.update({prefix + k: v for k, v in vit.state_dict().items()})
        else:
            raise ValueError(
                f"FeatUp checkpoint {name} holds no DINO weights (model.0.model.*); pass dino_source, "
                "e.g. dino_source='dino_vits16'"
            )
        for key in ("upsampler.up1.range_proj.0.weight", "upsampler.up1.fixup_proj.0.weight"):
            if key not in state:
                raise ValueError(f"not a FeatUp JBU checkpoint: key {key!r} is missing from {name}")
        key_dim = state["upsampler.up1.range_proj.0.weight"].shape[0]
        radius = (math.isqrt(state["upsampler.up1.fixup_proj.0.weight"].shape[0]) - 1) // 2
        model = UpsampledBackbone(vit, key_dim, radius)
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("model.1.norm.")]
        if missing or unexpected:
            raise ValueError(f"FeatUp checkpoint does not match: missing keys {missing}, unexpected keys {unexpected}")
    model.to(device=device, dtype=dtype).eval()
    model.requires_grad_(False)
    return model
