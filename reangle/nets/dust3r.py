"""DUSt3R (``AsymmetricCroCo3DStereo``) pair-wise point-map regression, inference only.

Checkpoint-compatible port: module and parameter names equal the official ones, so
official ``.pth`` files and Hugging Face ``model.safetensors`` exports load strictly.
MASt3R checkpoints (``AsymmetricMASt3R``, head ``catmlp+dpt``) load too; their
local-feature MLP is dropped and only points and confidences are predicted.

Public API::

    @dataclass
    class PairPrediction:
        pts3d_1: Tensor  # (B, H, W, 3) float32, view-1 points in view-1 camera frame
        conf_1: Tensor   # (B, H, W) float32, confidence > 1
        pts3d_2: Tensor  # (B, H, W, 3) float32, view-2 points in view-1 camera frame
        conf_2: Tensor   # (B, H, W) float32, confidence > 1

    class DUSt3R(nn.Module):
        def __init__(self, *, enc_embed_dim=1024, enc_depth=24, enc_num_heads=16,
                     dec_embed_dim=768, dec_depth=12, dec_num_heads=12,
                     img_size=(512, 512), patch_size=16, mlp_ratio=4.0,
                     head_type="dpt", output_mode="pts3d",
                     depth_mode=("exp", -inf, inf), conf_mode=("exp", 1, inf),
                     pos_embed="RoPE100", norm_im2_in_dec=True,
                     feature_dim=256, last_dim=128, layer_dims=(96, 192, 384, 768))
        def forward(self, img1_pm1: Tensor, img2_pm1: Tensor) -> PairPrediction
            # images (B, 3, H, W) in [-1, 1], H and W multiples of 16

    PRESETS: dict[str, dict]   # official configurations, by checkpoint name
    DEFAULT_HUB_ID = "naver/DUSt3R_ViTLarge_BaseDecoder_512_dpt"

    def load_dust3r(source, *, device="cpu", dtype=torch.float32, head_dtype=None) -> DUSt3R
        # source: a hub id ("naver/DUSt3R_..."); a local folder with model.safetensors
        #         + config.json (or that .safetensors file); a local official .pth file;
        #         or a mapping of constructor kwargs (random weights).
        # Returns the model in eval mode with gradients off.

Outputs are float32 whatever the weight dtype: the raw head output is post-processed
(``exp`` modes) in float32, where half precision would overflow.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import math
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reangle.nets.layers import Mlp

__all__ = ["DEFAULT_HUB_ID", "DUSt3R", "PRESETS", "PairPrediction", "load_dust3r"]

INF = math.inf
DEFAULT_HUB_ID = "naver/DUSt3R_ViTLarge_BaseDecoder_512_dpt"

_VIT_LARGE_BASE_DECODER = dict(
    enc_embed_dim=1024, enc_depth=24, enc_num_heads=16, dec_embed_dim=768, dec_depth=12, dec_num_heads=12,
    output_mode="pts3d", depth_mode=("exp", -INF, INF), conf_mode=("exp", 1, INF), pos_embed="RoPE100",
)
PRESETS: dict[str, dict] = {
    "DUSt3R_ViTLarge_BaseDecoder_512_dpt": dict(_VIT_LARGE_BASE_DECODER, img_size=(512, 512), head_type="dpt"),
    "DUSt3R_ViTLarge_BaseDecoder_512_linear": dict(_VIT_LARGE_BASE_DECODER, img_size=(512, 512), head_type="linear"),
    "DUSt3R_ViTLarge_BaseDecoder_224_linear": dict(_VIT_LARGE_BASE_DECODER, img_size=(224, 224), head_type="linear"),
}

_LN_EPS = 1e-6
_DPT_PATCH = 16  # the DPT head's upsampling stages assume 16-pixel tokens


@dataclass
class PairPrediction:
    """Point maps and confidences of an image pair, both point maps in view 1's camera frame."""

    pts3d_1: Tensor
    conf_1: Tensor
    pts3d_2: Tensor
    conf_2: Tensor


# ----------------------------------------------------------------------------- RoPE

def _rope_tables(grid_hw: tuple[int, int], head_dim: int, freq: float, device: torch.device) -> tuple[Tensor, Tensor]:
    """cos/sin tables (N, 2, 1, head_dim // 4) float32 for a row-major token grid.

    Axis 1 selects the coordinate: 0 = row (rotates the first half of each head),
    1 = column (second half).
    """
    gh, gw = grid_hw
    half = head_dim // 2
    inv_freq = 1.0 / freq ** (torch.arange(0, half, 2, device=device, dtype=torch.float32) / half)
    rows = torch.arange(gh, device=device, dtype=torch.float32).repeat_interleave(gw)
    cols = torch.arange(gw, device=device, dtype=torch.float32).repeat(gh)
    angles = torch.stack((rows, cols), dim=1)[:, :, None, None] * inv_freq
    return angles.cos(), angles.sin()


def _apply_rope(x: Tensor, rope: tuple[Tensor, Tensor]) -> Tensor:
    """Rotate (B, heads, N, head_dim) queries/keys by their 2D token positions."""
    cos, sin = (t.to(x.dtype) for t in rope)
    t = x.unflatten(-1, (2, 2, -1))  # (..., axis, half, head_dim // 4)
    rotated = torch.stack((-t[..., 1, :], t[..., 0, :]), dim=-2)
    return (t * cos + rotated * sin).flatten(-3)


# ----------------------------------------------------------------------------- transformer

class Attention(nn.Module):
    """Multi-head self-attention with 2D RoPE on (B, N, dim) tokens."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor]) -> Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(_apply_rope(q, rope), _apply_rope(k, rope), v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class CrossAttention(nn.Module):
    """Multi-head attention of (B, Nq, dim) queries to (B, Nk, dim) memory tokens, 2D RoPE on both."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.projq = nn.Linear(dim, dim)
        self.projk = nn.Linear(dim, dim)
        self.projv = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def _heads(self, x: Tensor) -> Tensor:
        b, n, c = x.shape
        return x.view(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def forward(self, x: Tensor, mem: Tensor, rope_x: tuple[Tensor, Tensor], rope_mem: tuple[Tensor, Tensor]) -> Tensor:
        q = _apply_rope(self._heads(self.projq(x)), rope_x)
        k = _apply_rope(self._heads(self.projk(mem)), rope_mem)
        out = F.scaled_dot_product_attention(q, k, self._heads(self.projv(mem)))
        return self.proj(out.transpose(1, 2).flatten(2))


class EncoderBlock(nn.Module):
    """Pre-norm ViT block: self-attention then MLP, on (B, N, dim)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=_LN_EPS)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=_LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor]) -> Tensor:
        x = x + self.attn(self.norm1(x), rope)
        return x + self.mlp(self.norm2(x))


class DecoderBlock(nn.Module):
    """Self-attention, cross-attention to the other view's tokens, MLP; on (B, N, dim)."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float, norm_mem: bool):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=_LN_EPS)
        self.attn = Attention(dim, num_heads)
        self.cross_attn = CrossAttention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=_LN_EPS)
        self.norm3 = nn.LayerNorm(dim, eps=_LN_EPS)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.norm_y = nn.LayerNorm(dim, eps=_LN_EPS) if norm_mem else nn.Identity()

    def forward(self, x: Tensor, y: Tensor, rope_x: tuple[Tensor, Tensor], rope_y: tuple[Tensor, Tensor]) -> Tensor:
        x = x + self.attn(self.norm1(x), rope_x)
        y = self.norm_y(y)
        x = x + self.cross_attn(self.norm2(x), y, rope_x, rope_y)
        return x + self.mlp(self.norm3(x))


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection: (B, 3, H, W) -> (B, H/p * W/p, dim), row-major."""

    def __init__(self, patch_size: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, img: Tensor) -> Tensor:
        return self.proj(img).flatten(2).transpose(1, 2)


# ----------------------------------------------------------------------------- heads

class ResidualConvUnit(nn.Module):
    """x + conv(relu(conv(relu(x)))), 3x3 convs with bias."""

    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv2d(features, features, 3, padding=1)
        self.conv2 = nn.Conv2d(features, features, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(F.relu(x))))


class FusionBlock(nn.Module):
    """Adds the refined skip input, refines, upsamples x2 (bilinear, corners aligned), 1x1 conv."""

    def __init__(self, features: int):
        super().__init__()
        self.out_conv = nn.Conv2d(features, features, 1)
        self.resConfUnit1 = ResidualConvUnit(features)
        self.resConfUnit2 = ResidualConvUnit(features)

    def forward(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = F.interpolate(self.resConfUnit2(x), scale_factor=2, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class DPTAdapter(nn.Module):
    """DPT decoder: 4 hooked token maps (B, N, C_i) -> raw prediction (B, num_channels, H, W)."""

    def __init__(self, hooks: tuple[int, ...], dim_tokens: tuple[int, ...], layer_dims: tuple[int, ...],
                 feature_dim: int, last_dim: int, num_channels: int):
        super().__init__()
        self.hooks = hooks
        self.scratch = nn.Module()
        for i, dim in enumerate(layer_dims, start=1):
            setattr(self.scratch, f"layer{i}_rn", nn.Conv2d(dim, feature_dim, 3, padding=1, bias=False))
        # second spelling of the same four convs, as in the official state dict
        self.scratch.layer_rn = nn.ModuleList(getattr(self.scratch, f"layer{i}_rn") for i in range(1, 5))
        for i in range(1, 5):
            setattr(self.scratch, f"refinenet{i}", FusionBlock(feature_dim))
        self.head = nn.Sequential(
            nn.Conv2d(feature_dim, feature_dim // 2, 3, padding=1),
            nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True),
            nn.Conv2d(feature_dim // 2, last_dim, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(last_dim, num_channels, 1),
        )
        d0, d1, d2, d3 = layer_dims
        self.act_postprocess = nn.ModuleList([
            nn.Sequential(nn.Conv2d(dim_tokens[0], d0, 1), nn.ConvTranspose2d(d0, d0, 4, stride=4)),  # 1/4
            nn.Sequential(nn.Conv2d(dim_tokens[1], d1, 1), nn.ConvTranspose2d(d1, d1, 2, stride=2)),  # 1/8
            nn.Sequential(nn.Conv2d(dim_tokens[2], d2, 1)),  # 1/16
            nn.Sequential(nn.Conv2d(dim_tokens[3], d3, 1), nn.Conv2d(d3, d3, 3, stride=2, padding=1)),  # 1/32
        ])

    def forward(self, tokens: list[Tensor], image_hw: tuple[int, int]) -> Tensor:
        gh, gw = image_hw[0] // _DPT_PATCH, image_hw[1] // _DPT_PATCH
        l1, l2, l3, l4 = (
            conv(post(tokens[hook].transpose(1, 2).unflatten(2, (gh, gw))))
            for hook, post, conv in zip(self.hooks, self.act_postprocess, self.scratch.layer_rn)
        )
        path = self.scratch.refinenet4(l4)[:, :, : l3.shape[2], : l3.shape[3]]
        path = self.scratch.refinenet3(path, l3)
        path = self.scratch.refinenet2(path, l2)
        path = self.scratch.refinenet1(path, l1)
        return self.head(path)


class DPTHead(nn.Module):
    """DPT head on [encoder output, decoder block outputs...]; raw output (B, 4, H, W)."""

    def __init__(self, enc_dim: int, dec_dim: int, dec_depth: int, feature_dim: int, last_dim: int,
                 layer_dims: tuple[int, ...]):
        super().__init__()
        hooks = (0, dec_depth * 2 // 4, dec_depth * 3 // 4, dec_depth)
        self.dpt = DPTAdapter(hooks, (enc_dim, dec_dim, dec_dim, dec_dim), layer_dims, feature_dim, last_dim, 4)

    def forward(self, tokens: list[Tensor], image_hw: tuple[int, int]) -> Tensor:
        return self.dpt(tokens, image_hw)


class LinearHead(nn.Module):
    """Per-token linear map of the last decoder output to p x p pixels; raw output (B, 4, H, W)."""

    def __init__(self, dec_dim: int, patch_size: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Linear(dec_dim, 4 * patch_size**2)

    def forward(self, tokens: list[Tensor], image_hw: tuple[int, int]) -> Tensor:
        p = self.patch_size
        feat = self.proj(tokens[-1]).transpose(1, 2).unflatten(2, (image_hw[0] // p, image_hw[1] // p))
        return F.pixel_shuffle(feat, p)


# ----------------------------------------------------------------------------- model

class DUSt3R(nn.Module):
    """Siamese ViT encoder, two cross-attending decoders and one head per view.

    Constructor arguments are the official ``AsymmetricCroCo3DStereo`` ones (inference
    subset) plus the DPT head sizes ``feature_dim``, ``last_dim`` and ``layer_dims``,
    which the official code fixes to the defaults used here. ``img_size`` is the
    training resolution, kept for reference; any multiple of 16 is accepted at run time.
    """

    def __init__(self, *, enc_embed_dim: int = 1024, enc_depth: int = 24, enc_num_heads: int = 16,
                 dec_embed_dim: int = 768, dec_depth: int = 12, dec_num_heads: int = 12,
                 img_size: tuple[int, int] = (512, 512), patch_size: int = 16, mlp_ratio: float = 4.0,
                 head_type: str = "dpt", output_mode: str = "pts3d",
                 depth_mode: tuple = ("exp", -INF, INF), conf_mode: tuple = ("exp", 1, INF),
                 pos_embed: str = "RoPE100", norm_im2_in_dec: bool = True,
                 feature_dim: int = 256, last_dim: int = 128, layer_dims: tuple[int, ...] = (96, 192, 384, 768)):
        super().__init__()
        match = re.fullmatch(r"RoPE(\d+(?:\.\d+)?)", pos_embed)
        if match is None:
            raise ValueError(f"pos_embed={pos_embed!r} is not supported; use 'RoPE<freq>', e.g. 'RoPE100'.")
        if output_mode != "pts3d":
            raise ValueError(f"output_mode={output_mode!r} is not supported; only 'pts3d' is.")
        if tuple(depth_mode) != ("exp", -INF, INF):
            raise ValueError(f"depth_mode={depth_mode!r} is not supported; only ('exp', -inf, inf) is.")
        if conf_mode is None or len(conf_mode) != 3 or conf_mode[0] != "exp":
            raise ValueError(f"conf_mode={conf_mode!r} is not supported; use ('exp', vmin, vmax).")
        for name, dim, heads in (("enc", enc_embed_dim, enc_num_heads), ("dec", dec_embed_dim, dec_num_heads)):
            if dim % heads or (dim // heads) % 4:
                raise ValueError(f"{name}_embed_dim={dim} must split into {name}_num_heads={heads} heads "
                                 "whose size is a multiple of 4 (2D RoPE).")
        if head_type not in ("dpt", "linear"):
            raise ValueError(f"head_type={head_type!r} is not supported; use 'dpt' or 'linear'.")
        if head_type == "dpt" and patch_size != _DPT_PATCH:
            raise ValueError(f"the DPT head needs patch_size={_DPT_PATCH}, got {patch_size}.")
        if any(s % patch_size for s in img_size):
            raise ValueError(f"img_size={tuple(img_size)} must be a multiple of patch_size={patch_size}.")
        if len(layer_dims) != 4:
            raise ValueError(f"layer_dims must have 4 entries, got {tuple(layer_dims)}.")

        self.img_size = tuple(img_size)
        self.patch_size = patch_size
        self.rope_freq = float(match.group(1))
        self.enc_head_dim = enc_embed_dim // enc_num_heads
        self.dec_head_dim = dec_embed_dim // dec_num_heads
        self.conf_vmin, self.conf_vmax = float(conf_mode[1]), float(conf_mode[2])

        self.mask_token = nn.Parameter(torch.zeros(1, 1, dec_embed_dim))  # training only; kept for strict loading
        self.patch_embed = PatchEmbed(patch_size, enc_embed_dim)
        self.enc_blocks = nn.ModuleList(EncoderBlock(enc_embed_dim, enc_num_heads, mlp_ratio) for _ in range(enc_depth))
        self.enc_norm = nn.LayerNorm(enc_embed_dim, eps=_LN_EPS)
        self.decoder_embed = nn.Linear(enc_embed_dim, dec_embed_dim)
        self.dec_blocks = nn.ModuleList(
            DecoderBlock(dec_embed_dim, dec_num_heads, mlp_ratio, norm_im2_in_dec) for _ in range(dec_depth))
        self.dec_norm = nn.LayerNorm(dec_embed_dim, eps=_LN_EPS)
        self.dec_blocks2 = nn.ModuleList(
            DecoderBlock(dec_embed_dim, dec_num_heads, mlp_ratio, norm_im2_in_dec) for _ in range(dec_depth))
        for name in ("downstream_head1", "downstream_head2"):
            if head_type == "dpt":
                head = DPTHead(enc_embed_dim, dec_embed_dim, dec_depth, feature_dim, last_dim, tuple(layer_dims))
            else:
                head = LinearHead(dec_embed_dim, patch_size)
            setattr(self, name, head)

    def _check_images(self, img1: Tensor, img2: Tensor) -> None:
        for name, img in (("img1_pm1", img1), ("img2_pm1", img2)):
            if img.ndim != 4 or img.shape[1] != 3 or not img.is_floating_point():
                raise ValueError(f"{name} must be a float tensor (B, 3, H, W); got {img.dtype} {tuple(img.shape)}.")
            if img.shape[2] % self.patch_size or img.shape[3] % self.patch_size:
                raise ValueError(f"{name} height and width must be multiples of {self.patch_size}; "
                                 f"got {tuple(img.shape[2:])}. Resize or crop the images first.")
        if img1.shape[0] != img2.shape[0] or img1.shape[0] == 0:
            raise ValueError(f"img1_pm1 and img2_pm1 must hold the same, non-zero number of images; "
                             f"got {img1.shape[0]} and {img2.shape[0]}.")
        lo, hi = torch.stack([torch.minimum(img1.amin(), img2.amin()),
                              torch.maximum(img1.amax(), img2.amax())]).tolist()
        if not (-1.001 <= lo and hi <= 1.001):
            raise ValueError(f"images must be in [-1, 1] (pixel / 127.5 - 1); got values in [{lo:.4g}, {hi:.4g}].")

    def _encode(self, img: Tensor, rope: tuple[Tensor, Tensor]) -> Tensor:
        x = self.patch_embed(img.to(self.patch_embed.proj.weight.dtype))
        for blk in self.enc_blocks:
            x = blk(x, rope)
        return self.enc_norm(x)

    def _postprocess(self, raw: Tensor) -> tuple[Tensor, Tensor]:
        """Raw (B, 4, H, W) -> points (B, H, W, 3) and confidence (B, H, W), float32."""
        fmap = raw.float().permute(0, 2, 3, 1)
        xyz = fmap[..., :3]
        dist = xyz.norm(dim=-1, keepdim=True)
        pts3d = xyz / dist.clip(min=1e-8) * torch.expm1(dist)
        conf = self.conf_vmin + fmap[..., 3].exp().clip(max=self.conf_vmax - self.conf_vmin)
        return pts3d, conf

    def encode(self, img_pm1: Tensor) -> Tensor:
        """Encoder tokens (B, N, C) of images (B, 3, H, W) in [-1, 1], for ``forward(..., encodings=...)``."""
        self._check_images(img_pm1, img_pm1)
        grid = (img_pm1.shape[-2] // self.patch_size, img_pm1.shape[-1] // self.patch_size)
        return self._encode(img_pm1, _rope_tables(grid, self.enc_head_dim, self.rope_freq, img_pm1.device))

    def forward(self, img1_pm1: Tensor, img2_pm1: Tensor,
                encodings: tuple[Tensor, Tensor] | None = None) -> PairPrediction:
        """Predict both point maps of B image pairs (B, 3, H, W) in [-1, 1]; views may differ in size.

        ``encodings``: the two views' encoder tokens from :meth:`encode`, when already computed
        (an image in many pairs is then encoded once).
        """
        self._check_images(img1_pm1, img2_pm1)
        hw1, hw2 = tuple(img1_pm1.shape[-2:]), tuple(img2_pm1.shape[-2:])
        p, dev = self.patch_size, img1_pm1.device
        grid1, grid2 = (hw1[0] // p, hw1[1] // p), (hw2[0] // p, hw2[1] // p)
        enc_rope1 = _rope_tables(grid1, self.enc_head_dim, self.rope_freq, dev)
        dec_rope1 = _rope_tables(grid1, self.dec_head_dim, self.rope_freq, dev)
        if encodings is not None:
            dec_rope2 = _rope_tables(grid2, self.dec_head_dim, self.rope_freq, dev) if hw1 != hw2 else dec_rope1
            enc1, enc2 = encodings
        elif hw1 == hw2:
            dec_rope2 = dec_rope1
            enc1, enc2 = self._encode(torch.cat((img1_pm1, img2_pm1)), enc_rope1).chunk(2)
        else:
            enc_rope2 = _rope_tables(grid2, self.enc_head_dim, self.rope_freq, dev)
            dec_rope2 = _rope_tables(grid2, self.dec_head_dim, self.rope_freq, dev)
            enc1, enc2 = self._encode(img1_pm1, enc_rope1), self._encode(img2_pm1, enc_rope2)

        outs1, outs2 = [enc1], [enc2]
        f1, f2 = self.decoder_embed(enc1), self.decoder_embed(enc2)
        for blk1, blk2 in zip(self.dec_blocks, self.dec_blocks2):
            f1, f2 = blk1(f1, f2, dec_rope1, dec_rope2), blk2(f2, f1, dec_rope2, dec_rope1)
            outs1.append(f1)
            outs2.append(f2)
        outs1[-1], outs2[-1] = self.dec_norm(f1), self.dec_norm(f2)

        raw = []
        for head, outs, hw in ((self.downstream_head1, outs1, hw1), (self.downstream_head2, outs2, hw2)):
            head_dtype = next(head.parameters()).dtype
            raw.append(head([t.to(head_dtype) for t in outs], hw))
        pts3d_1, conf_1 = self._postprocess(raw[0])
        pts3d_2, conf_2 = self._postprocess(raw[1])
        return PairPrediction(pts3d_1=pts3d_1, conf_1=conf_1, pts3d_2=pts3d_2, conf_2=conf_2)


# ----------------------------------------------------------------------------- loading

_OFFICIAL_CLASSES = ("AsymmetricCroCo3DStereo", "AsymmetricMASt3R")
_PATCH_EMBED_CLASSES = ("PatchEmbedDust3R", "ManyAR_PatchEmbed")
# official constructor arguments that change nothing at inference
_TRAINING_ONLY_KWARGS = ("landscape_only", "freeze", "mask_ratio")
# AsymmetricMASt3R arguments that only concern the dropped descriptor head
_MAST3R_DESC_KWARGS = ("desc_mode", "two_confs", "desc_conf_mode")
_LOCAL_FEATURE_KEY = re.compile(r"downstream_head[12]\.head_local_features\.")
_CONSTRUCTOR_KWARGS = frozenset(inspect.signature(DUSt3R).parameters)


def _as_float(value):
    """``'inf'`` / ``'-inf'`` strings (JSON-written configs) -> floats; other values unchanged."""
    infinities = ("inf", "-inf", "infinity", "-infinity")
    return float(value) if isinstance(value, str) and value.lower() in infinities else value


def _model_kwargs(raw: Mapping, origin: str) -> tuple[dict, bool]:
    """Official constructor kwargs -> (DUSt3R kwargs, whether MASt3R descriptor weights must be dropped)."""
    kwargs = dict(raw)
    patch_embed_cls = kwargs.pop("patch_embed_cls", "PatchEmbedDust3R")
    if patch_embed_cls not in _PATCH_EMBED_CLASSES:
        raise ValueError(f"{origin}: patch_embed_cls={patch_embed_cls!r} is not supported ({_PATCH_EMBED_CLASSES}).")
    for key in _TRAINING_ONLY_KWARGS:
        kwargs.pop(key, None)
    mast3r = kwargs.get("head_type") == "catmlp+dpt"
    if mast3r:
        if not str(kwargs.get("output_mode", "")).startswith("pts3d+desc"):
            raise ValueError(f"{origin}: head 'catmlp+dpt' expects output_mode 'pts3d+desc<dim>', "
                             f"got {kwargs.get('output_mode')!r}.")
        kwargs.update(head_type="dpt", output_mode="pts3d")
        for key in _MAST3R_DESC_KWARGS:
            kwargs.pop(key, None)
    unknown = sorted(set(kwargs) - _CONSTRUCTOR_KWARGS)
    if unknown:
        raise ValueError(f"{origin}: unsupported model arguments {unknown}; known: {sorted(_CONSTRUCTOR_KWARGS)}.")
    for key in ("depth_mode", "conf_mode"):
        if kwargs.get(key) is not None:
            kwargs[key] = tuple(_as_float(v) for v in kwargs[key])
    for key in ("img_size", "layer_dims"):
        if key in kwargs:
            kwargs[key] = tuple(kwargs[key])
    return kwargs, mast3r


class _InfToConstant(ast.NodeTransformer):
    """Turns ``inf`` and ``float('inf')`` into constants so ``ast.literal_eval`` accepts them."""

    def visit_Name(self, node: ast.Name) -> ast.AST:
        return ast.Constant(INF) if node.id == "inf" else node

    def visit_Call(self, node: ast.Call) -> ast.AST:
        if (isinstance(node.func, ast.Name) and node.func.id == "float" and len(node.args) == 1
                and not node.keywords and isinstance(node.args[0], ast.Constant)):
            return ast.Constant(float(node.args[0].value))
        return node


def _parse_model_string(text: str, origin: str) -> dict:
    """``"AsymmetricCroCo3DStereo(a=1, b=('exp', -inf, inf))"`` -> kwargs, without evaluating code."""
    try:
        call = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as err:
        raise ValueError(f"{origin}: args.model is not a constructor call: {text!r}") from err
    if (not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name)
            or call.func.id not in _OFFICIAL_CLASSES or call.args):
        raise ValueError(f"{origin}: args.model must be {' or '.join(_OFFICIAL_CLASSES)}(key=value, ...); got {text!r}")
    kwargs = {}
    for kw in call.keywords:
        if kw.arg is None:
            raise ValueError(f"{origin}: args.model uses **kwargs, which cannot be read: {text!r}")
        try:
            kwargs[kw.arg] = ast.literal_eval(_InfToConstant().visit(kw.value))
        except ValueError as err:
            raise ValueError(f"{origin}: argument {kw.arg!r} of args.model is not a literal: {text!r}") from err
    return kwargs


def _read_pth(path: Path) -> tuple[dict, dict[str, Tensor]]:
    """Official ``{'args': Namespace(model=...), 'model': state_dict}`` file, read with weights_only."""
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (pickle.UnpicklingError, RuntimeError) as err:
        raise ValueError(f"{path}: not a DUSt3R checkpoint that loads with weights_only=True ({err}).") from err
    if not isinstance(ckpt, dict) or "model" not in ckpt or not hasattr(ckpt.get("args"), "model"):
        found = list(ckpt)[:5] if isinstance(ckpt, dict) else type(ckpt).__name__
        raise ValueError(f"{path}: expected an official DUSt3R checkpoint {{'args': Namespace(model=...), "
                         f"'model': state_dict}}; found {found}.")
    return _parse_model_string(ckpt["args"].model, str(path)), ckpt["model"]


def _read_hf(config: Path, weights: Path) -> tuple[dict, dict[str, Tensor]]:
    """Hugging Face export: ``config.json`` (may contain Infinity) + ``model.safetensors``."""
    from safetensors.torch import load_file

    for required in (config, weights):
        if not required.is_file():
            raise FileNotFoundError(f"{required.parent}: missing {required.name}; a DUSt3R export needs "
                                    "config.json and model.safetensors side by side.")
    return json.loads(config.read_text()), load_file(weights, device="cpu")


def _dpt_dims(state: Mapping[str, Tensor]) -> dict:
    """DPT head sizes read from the weight shapes (reduced heads are not in any config)."""
    prefix = "downstream_head1.dpt."
    needed = [prefix + "head.0.weight", prefix + "head.2.weight"]
    needed += [f"{prefix}act_postprocess.{i}.0.weight" for i in range(4)]
    if not all(k in state for k in needed):
        return {}  # reported as missing keys by the strict check
    return dict(
        feature_dim=state[needed[0]].shape[1],
        last_dim=state[needed[1]].shape[0],
        layer_dims=tuple(state[k].shape[0] for k in needed[2:]),
    )


def _fill_aliases(state: dict[str, Tensor]) -> None:
    """Adds whichever spelling of the DPT ``layerN_rn`` / ``layer_rn.N-1`` pair a file left out."""
    for head in ("downstream_head1", "downstream_head2"):
        for i in range(1, 5):
            a = f"{head}.dpt.scratch.layer{i}_rn.weight"
            b = f"{head}.dpt.scratch.layer_rn.{i - 1}.weight"
            if a in state and b not in state:
                state[b] = state[a]
            elif b in state and a not in state:
                state[a] = state[b]


def _load_weights(model: DUSt3R, state: dict[str, Tensor], origin: str) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        raise ValueError(f"{origin}: checkpoint does not match the model built from its config: "
                         f"{len(missing)} missing keys {missing[:5]}, "
                         f"{len(unexpected)} unexpected keys {unexpected[:5]}.")
    wrong = [f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
             for k, v in expected.items() if state[k].shape != v.shape]
    if wrong:
        raise ValueError(f"{origin}: {len(wrong)} tensors have the wrong shape: {wrong[:5]}.")
    model.load_state_dict(state, strict=True, assign=True)


def _download(hub_id: str) -> tuple[Path, Path]:
    """(config.json, model.safetensors) of a hub repository, through the local Hugging Face cache."""
    from huggingface_hub import hf_hub_download

    return Path(hf_hub_download(hub_id, "config.json")), Path(hf_hub_download(hub_id, "model.safetensors"))


def load_dust3r(source: str | Path | Mapping, *, device: str | torch.device = "cpu",
                dtype: torch.dtype = torch.float32, head_dtype: torch.dtype | None = None) -> DUSt3R:
    """Build a DUSt3R from a hub id, local export, official ``.pth`` file or kwargs mapping.

    ``source`` as a mapping takes official constructor kwargs (``'inf'`` strings and
    lists allowed) and gives random weights. A folder (or a ``.safetensors`` file) needs
    ``config.json`` beside ``model.safetensors``. Files are read with their own config;
    the DPT head sizes come from the weight shapes. ``head_dtype`` (default ``dtype``)
    lets the heads run in float32 under a half-precision backbone, as the official code
    does. Returns the model on ``device`` in eval mode with gradients off.
    """
    if isinstance(source, Mapping):
        kwargs, _ = _model_kwargs(source, "config")
        model = DUSt3R(**kwargs)
    else:
        path = Path(source)
        if path.is_dir():
            raw_kwargs, state = _read_hf(path / "config.json", path / "model.safetensors")
        elif path.is_file() and path.suffix == ".safetensors":
            raw_kwargs, state = _read_hf(path.with_name("config.json"), path)
        elif path.is_file():
            raw_kwargs, state = _read_pth(path)
        elif isinstance(source, str) and re.fullmatch(r"[\w-]+/[\w.-]+", source) and not path.suffix:
            config, path = _download(source)
            raw_kwargs, state = _read_hf(config, path)
        else:
            raise FileNotFoundError(f"DUSt3R source {str(source)!r} is neither an existing folder, .safetensors "
                                    "or .pth file nor a hub id like 'naver/DUSt3R_ViTLarge_BaseDecoder_512_dpt'.")
        kwargs, mast3r = _model_kwargs(raw_kwargs, str(path))
        state = dict(state)
        if mast3r:
            state = {k: v for k, v in state.items() if not _LOCAL_FEATURE_KEY.match(k)}
        if kwargs.get("head_type", "dpt") == "dpt":
            kwargs.update(_dpt_dims(state))
        _fill_aliases(state)
        with torch.device("meta"):
            model = DUSt3R(**kwargs)
        _load_weights(model, state, str(path))
    model = model.to(device=device, dtype=dtype)
    if head_dtype is not None:
        model.downstream_head1.to(head_dtype)
        model.downstream_head2.to(head_dtype)
    return model.eval().requires_grad_(False)
