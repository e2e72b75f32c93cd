"""Wan: one loading path for tiny / local folder, the released transformers' layouts on the meta device,
the latent mask on Wan's latent grid (checked against what the VAE itself mixes), and the frame/size rule."""
import re

import pytest
import torch

from reangle.models.cogvideox import ModelLoadError, layout
from reangle.models.wan import (FULL_SIZE_TRANSFORMERS, FULL_SIZE_VAES, WAN21_I2V_480P, WAN22_I2V_A14B,
                                WAN22_TI2V_5B, build_wan_transformer_on_meta, build_wan_vae_on_meta,
                                load_wan_components, resolve_wan)


def test_tiny_and_its_folder_load_the_same_weights(tiny_wan_dir):
    tiny = load_wan_components("tiny", ["transformer", "scheduler"], cache_dir=tiny_wan_dir.parent.parent)
    local = load_wan_components(str(tiny_wan_dir), ["transformer", "scheduler"])
    assert tiny.source == local.source == str(tiny_wan_dir)
    a, b = tiny.transformer.state_dict(), local.transformer.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert tiny.transformer.config.in_channels == 36 and tiny.transformer.config.image_dim is not None
    assert tiny.scheduler.config.prediction_type == "flow_prediction" and tiny.scheduler.config.flow_shift == 3.0


def test_unknown_source_and_incomplete_folder_are_clear_errors(tmp_path):
    with pytest.raises(ModelLoadError, match="neither a local folder nor a hub id"):
        resolve_wan("not a model id")
    with pytest.raises(ModelLoadError, match="has no subfolder"):
        load_wan_components(str(tmp_path), ["image_encoder"])


# --- the released checkpoints ---------------------------------------------------------------------------
# Expected layouts are written from Wan's own model definition (Wan-Video/Wan2.1 and Wan2.2,
# wan/modules/model.py: WanModel with the dims of wan/configs/wan_i2v_14B.py, wan_ti2v_5B.py and
# wan_i2v_A14B.py, whose two experts share one layout) in the
# original checkpoints' key names, then renamed the way diffusers' scripts/convert_wan_to_diffusers.py
# renames them into the *-Diffusers repositories.

def _official_layout(dim, ffn, layers, in_dim, out_dim, text_dim=4096, freq_dim=256, image_dim=None):
    shapes = {"patch_embedding.weight": (dim, in_dim, 1, 2, 2), "patch_embedding.bias": (dim,),
              "text_embedding.0.weight": (dim, text_dim), "text_embedding.0.bias": (dim,),
              "text_embedding.2.weight": (dim, dim), "text_embedding.2.bias": (dim,),
              "time_embedding.0.weight": (dim, freq_dim), "time_embedding.0.bias": (dim,),
              "time_embedding.2.weight": (dim, dim), "time_embedding.2.bias": (dim,),
              "time_projection.1.weight": (6 * dim, dim), "time_projection.1.bias": (6 * dim,),
              "head.head.weight": (out_dim * 4, dim), "head.head.bias": (out_dim * 4,), "head.modulation": (1, 2, dim)}
    if image_dim:
        shapes.update({"img_emb.proj.0.weight": (image_dim,), "img_emb.proj.0.bias": (image_dim,),
                       "img_emb.proj.1.weight": (image_dim, image_dim), "img_emb.proj.1.bias": (image_dim,),
                       "img_emb.proj.3.weight": (dim, image_dim), "img_emb.proj.3.bias": (dim,),
                       "img_emb.proj.4.weight": (dim,), "img_emb.proj.4.bias": (dim,)})
    for i in range(layers):
        p = f"blocks.{i}."
        shapes[p + "modulation"] = (1, 6, dim)
        for attn in ("self_attn", "cross_attn"):
            for proj in ("q", "k", "v", "o"):
                shapes[f"{p}{attn}.{proj}.weight"], shapes[f"{p}{attn}.{proj}.bias"] = (dim, dim), (dim,)
            shapes[f"{p}{attn}.norm_q.weight"] = shapes[f"{p}{attn}.norm_k.weight"] = (dim,)
        if image_dim:
            for proj in ("k_img", "v_img"):
                shapes[f"{p}cross_attn.{proj}.weight"], shapes[f"{p}cross_attn.{proj}.bias"] = (dim, dim), (dim,)
            shapes[f"{p}cross_attn.norm_k_img.weight"] = (dim,)
        shapes[p + "norm3.weight"] = shapes[p + "norm3.bias"] = (dim,)
        shapes[p + "ffn.0.weight"], shapes[p + "ffn.0.bias"] = (ffn, dim), (ffn,)
        shapes[p + "ffn.2.weight"], shapes[p + "ffn.2.bias"] = (dim, ffn), (dim,)
    return shapes


_RENAMES = [  # (pattern, replacement), applied in order
    (r"^time_embedding\.0", "condition_embedder.time_embedder.linear_1"),
    (r"^time_embedding\.2", "condition_embedder.time_embedder.linear_2"),
    (r"^text_embedding\.0", "condition_embedder.text_embedder.linear_1"),
    (r"^text_embedding\.2", "condition_embedder.text_embedder.linear_2"),
    (r"^time_projection\.1", "condition_embedder.time_proj"),
    (r"^img_emb\.proj\.0", "condition_embedder.image_embedder.norm1"),
    (r"^img_emb\.proj\.1", "condition_embedder.image_embedder.ff.net.0.proj"),
    (r"^img_emb\.proj\.3", "condition_embedder.image_embedder.ff.net.2"),
    (r"^img_emb\.proj\.4", "condition_embedder.image_embedder.norm2"),
    (r"^head\.modulation", "scale_shift_table"), (r"^head\.head", "proj_out"), (r"\.modulation$", ".scale_shift_table"),
    (r"\.self_attn\.", ".attn1."), (r"\.cross_attn\.", ".attn2."),
    (r"\.(attn\d)\.([qkv])\.", r".\1.to_\2."), (r"\.(attn\d)\.o\.", r".\1.to_out.0."),
    (r"\.k_img\.", ".add_k_proj."), (r"\.v_img\.", ".add_v_proj."), (r"\.norm_k_img\.", ".norm_added_k."),
    (r"\.norm3\.", ".norm2."), (r"\.ffn\.0\.", ".ffn.net.0.proj."), (r"\.ffn\.2\.", ".ffn.net.2."),
]


def _diffusers_names(shapes):
    out = {}
    for key, shape in shapes.items():
        for pattern, repl in _RENAMES:
            key = re.sub(pattern, repl, key)
        out[key] = shape
    return out


@pytest.mark.parametrize("hub_id,dims,billions", [
    (WAN21_I2V_480P, dict(dim=5120, ffn=13824, layers=40, in_dim=36, out_dim=16, image_dim=1280), 16.39),
    (WAN22_TI2V_5B, dict(dim=3072, ffn=14336, layers=30, in_dim=48, out_dim=48), 5.00),
    (WAN22_I2V_A14B, dict(dim=5120, ffn=13824, layers=40, in_dim=36, out_dim=16), 14.29),   # each expert
])
def test_full_size_transformer_matches_the_released_checkpoint_layout(hub_id, dims, billions):
    ours = layout(build_wan_transformer_on_meta(FULL_SIZE_TRANSFORMERS[hub_id]))
    expected = _diffusers_names(_official_layout(**dims))
    assert set(ours) == set(expected)
    assert all(ours[k] == expected[k] for k in expected)
    assert round(sum(torch.Size(s).numel() for s in ours.values()) / 1e9, 2) == billions


@pytest.mark.parametrize("hub_id,z,spatial,in_px,millions", [
    (WAN21_I2V_480P, 16, 8, 3, 126.89),
    (WAN22_TI2V_5B, 48, 16, 12, 704.69),     # 12 = 3 colours x 2 x 2 pixel patches
    (WAN22_I2V_A14B, 16, 8, 3, 126.89),      # the Wan2.1 VAE
])
def test_full_size_vae_fits_its_transformer_and_compresses_as_released(hub_id, z, spatial, in_px, millions):
    """The VAE config on the meta device: its ends (patched pixels in and out, 2 z posterior channels,
    z latent channels, which the transformer of the same checkpoint takes: 2 z + 4 for Wan2.1-I2V,
    z for Wan2.2-TI2V) and its grid: a meta forward of 81 frames of 704 x 1280 gives 21 latent frames
    of (704 / spatial) x (1280 / spatial)."""
    vae = build_wan_vae_on_meta(FULL_SIZE_VAES[hub_id])
    shapes = layout(vae)
    config = FULL_SIZE_VAES[hub_id]
    base, dec = config["base_dim"], config.get("decoder_base_dim", config["base_dim"])
    assert shapes["encoder.conv_in.weight"] == (base, in_px, 3, 3, 3)
    assert shapes["encoder.conv_out.weight"][0] == 2 * z and shapes["quant_conv.weight"][:2] == (2 * z, 2 * z)
    assert shapes["post_quant_conv.weight"][:2] == (z, z) and shapes["decoder.conv_in.weight"][1] == z
    assert shapes["decoder.conv_out.weight"][:2] == (in_px, dec)
    transformer_in = FULL_SIZE_TRANSFORMERS[hub_id]["in_channels"]
    assert transformer_in == (z if hub_id == WAN22_TI2V_5B else 2 * z + 4)
    with torch.no_grad():
        latent = vae.encode(torch.empty(1, 3, 81, 704, 1280, device="meta")).latent_dist.mean
    assert tuple(latent.shape) == (1, z, 21, 704 // spatial, 1280 // spatial)
    assert round(sum(torch.Size(s).numel() for s in shapes.values()) / 1e6, 2) == millions


# --- latent grid -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("which", ["wan2.1", "wan2.2"])
def test_latent_mask_groups_the_frames_the_vae_mixes(which, tiny_wan_dir, tiny_wan22_dir):
    """Which latent frame first reacts to a change of pixel frame j (the VAE is causal in time) is the
    latent frame that holds j; the latent mask must AND exactly those frames, on the VAE's own grid
    (the tiny models' VAEs: Wan2.1's 8x, Wan2.2-TI2V's residual 16x with 2 x 2 pixel patches)."""
    from reangle.data.latent_mask import latent_mask
    from reangle.models.wan_i2v import WanI2V

    folder = tiny_wan_dir if which == "wan2.1" else tiny_wan22_dir
    vae = load_wan_components(str(folder), ["vae"]).vae
    spatial, temporal = vae.config.scale_factor_spatial, vae.config.scale_factor_temporal
    assert spatial == (8 if which == "wan2.1" else 16)
    n, h, w = 9, 2 * spatial, 3 * spatial
    video = torch.rand(1, 3, n, h, w, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        base = vae.encode(video).latent_dist.mean
        owner = []
        for j in range(n):
            changed = video.clone()
            changed[:, :, j] += 0.5
            diff = (vae.encode(changed).latent_dist.mean - base).abs().amax(dim=(0, 1, 3, 4))
            owner.append(int((diff > 1e-6).nonzero()[0]))
    assert owner == [0] + [1 + (j - 1) // temporal for j in range(1, n)]  # the first frame alone, then groups of 4

    pixel = torch.ones(n, h, w, dtype=torch.bool)
    pixel[5, 0, 0] = False              # frame 5, the pixel sampled for latent (0, 0)
    lat = latent_mask(pixel, spatial=spatial, temporal=temporal)
    assert lat.shape == (base.shape[2], *base.shape[3:])     # the VAE's own latent grid
    hidden = torch.zeros_like(lat)
    hidden[owner[5], 0, 0] = True
    assert torch.equal(~lat, hidden)
    assert torch.equal(WanI2V(str(folder), weights_dtype="fp32").latent_mask(pixel), lat)   # the spec's own grid


def test_wan_spec_latent_mask_uses_its_vae_grid(tiny_wan_dir):
    from reangle.models.wan_i2v import WanI2V

    spec = WanI2V(str(tiny_wan_dir), weights_dtype="fp32")
    assert spec.latent_mask(torch.ones(9, 64, 96, dtype=torch.bool)).shape == (3, 8, 12)


def test_frame_grid_per_family():
    from reangle.models import spec_class

    wan = spec_class({"family": "wan", "pretrained": "tiny"})
    wan21 = wan.frame_grid({"pretrained": "Wan-AI/Wan2.1-I2V-14B-480P-Diffusers"})
    wan22 = wan.frame_grid({"pretrained": "Wan-AI/Wan2.2-TI2V-5B-Diffusers"})  # height, width, frames:
    assert (wan21.spatial, wan21.temporal, wan22.spatial) == (16, 4, 32)   # Wan2.2's 16x VAE doubles the multiple
    assert wan21.problem(480, 832, 81) is None and wan22.problem(704, 1280, 121) is None
    assert "1 + 4k" in wan21.problem(480, 832, 80) and "multiples of 16" in wan21.problem(480, 840, 81)
    assert "multiples of 32" in wan22.problem(720, 1280, 121)


def test_a_local_wan_folder_says_its_frame_grid(tiny_wan_dir):
    from reangle.models.wan_i2v import WanI2V

    grid = WanI2V.frame_grid({"pretrained": str(tiny_wan_dir)})
    assert (grid.spatial, grid.temporal) == (16, 4)


def test_backbone_preset_and_tiny_wan_preset_load_and_fit_their_family(tmp_path):
    from reangle.config import ConfigError, load_config

    preset = load_config(["configs/static.yaml", "configs/backbone/wan2.1_i2v_14b.yaml"], ["data.video=clip.mp4"])
    assert (preset.model.family, preset.data.num_frames, preset.data.height, preset.data.width) == ("wan", 81, 480, 832)
    tiny = load_config(["configs/presets/tiny_wan.yaml"])
    assert tiny.model.family == "wan" and tiny.model.pretrained == "tiny"
    with pytest.raises(ConfigError, match="data.num_frames=80"):
        load_config(["configs/presets/tiny_wan.yaml"], ["data.num_frames=80"])
    with pytest.raises(ConfigError, match="unknown model.family"):
        load_config(["configs/presets/tiny_wan.yaml"], ["model.family=hunyuan"])


def test_wan22_backbone_preset_and_tiny_overlay_fit_the_32_px_grid():
    from reangle.config import ConfigError, load_config

    preset = load_config(["configs/static.yaml", "configs/backbone/wan2.2_ti2v_5b.yaml"], ["data.video=clip.mp4"])
    assert (preset.model.pretrained, preset.data.num_frames, preset.data.height, preset.data.width,
            preset.data.fps) == ("Wan-AI/Wan2.2-TI2V-5B-Diffusers", 121, 704, 1280, 24)
    files = ["configs/presets/tiny_wan.yaml", "configs/presets/tiny_wan22.yaml"]
    assert load_config(files).model.wan_tiny.variant == "ti2v"
    load_config(["configs/presets/tiny_wan.yaml"], ["data.height=48"])        # Wan2.1: multiples of 16
    with pytest.raises(ConfigError, match="multiples of 32"):
        load_config(files, ["data.height=48"])
