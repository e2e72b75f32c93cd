"""FeatUp JBU port: adaptive convolution, layer semantics, official dino16 key names, checkpoint loading."""
import pytest
import torch
import torch.nn.functional as F

from reangle.nets.dino import build_dino
from reangle.nets.featup import JBULearnedRange, JBUStack, UpsampledBackbone, adaptive_conv, load_featup

TINY = {"dino": {"embed_dim": 64, "depth": 2, "num_heads": 1}, "key_dim": 8}


def _adaptive_conv_loop(inp, filters):
    b, c = inp.shape[:2]
    _, h, w, k, _ = filters.shape
    out = torch.zeros(b, c, h, w, dtype=inp.dtype)
    for n in range(b):
        for y in range(h):
            for x in range(w):
                out[n, :, y, x] = (inp[n, :, y:y + k, x:x + k] * filters[n, y, x]).sum((-2, -1))
    return out


def test_adaptive_conv_matches_per_pixel_loop_and_has_gradients():
    torch.manual_seed(0)
    inp = torch.randn(2, 3, 9, 10, dtype=torch.float64, requires_grad=True)
    filters = torch.randn(2, 5, 6, 5, 5, dtype=torch.float64, requires_grad=True)
    torch.testing.assert_close(adaptive_conv(inp, filters), _adaptive_conv_loop(inp, filters))
    small = (torch.randn(1, 2, 5, 6, dtype=torch.float64, requires_grad=True),
             torch.randn(1, 3, 4, 3, 3, dtype=torch.float64, requires_grad=True))
    assert torch.autograd.gradcheck(adaptive_conv, small)
    with pytest.raises(ValueError, match="does not fit"):
        adaptive_conv(torch.zeros(1, 1, 8, 8), torch.zeros(1, 5, 5, 3, 3))


def _jbu_reference(layer, source, guidance):
    """The layer's formula written with nn.Unfold (as the reference does) and the loop convolution."""
    b, _, h, w = guidance.shape
    d, r = layer.diameter, layer.radius
    keys = layer.range_proj(guidance)
    patches = F.unfold(F.pad(keys, [r] * 4, mode="reflect"), d).reshape(b, keys.shape[1], d * d, h, w)
    logits = torch.einsum("bcphw,bchw->bphw", patches, keys)
    range_kernel = F.softmax(layer.range_temp.exp().clamp(1e-4, 1e4) * logits, dim=1)
    grid = torch.linspace(-1, 1, d)
    gx, gy = torch.meshgrid(grid, grid, indexing="ij")
    spatial = torch.exp(-(gx**2 + gy**2) / (2 * layer.sigma_spatial**2)).reshape(1, d * d, 1, 1)
    kernel = range_kernel * spatial
    kernel = kernel / kernel.sum(1, keepdim=True).clamp(1e-7)
    kernel = kernel + 0.1 * layer.fixup_proj(torch.cat([kernel, guidance], 1))
    kernel = kernel.permute(0, 2, 3, 1).reshape(b, h, w, d, d)
    hr = F.pad(F.interpolate(source, (h, w), mode="bicubic", align_corners=False), [r] * 4, mode="reflect")
    return _adaptive_conv_loop(hr, kernel)


def test_jbu_layer_doubles_resolution_and_matches_its_formula():
    torch.manual_seed(0)
    layer = JBULearnedRange(3, 6, radius=2).eval()
    with torch.no_grad():
        layer.range_temp.fill_(0.7)
        layer.sigma_spatial.fill_(0.6)
        source, guidance = torch.randn(2, 4, 4, 5), torch.randn(2, 3, 8, 10)
        out = layer(source, guidance)
        assert out.shape == (2, 4, 8, 10)
        torch.testing.assert_close(out, _jbu_reference(layer, source, guidance), rtol=1e-5, atol=1e-5)
        stack = JBUStack(4, key_dim=6).eval()
        assert stack(source, torch.randn(2, 3, 64, 80)).shape == (2, 4, 64, 80)


def _official_upsampler_keys(feat_dim=384, key_dim=32, taps=49, guidance=3):
    """featup.upsamplers.JBUStack(feat_dim): up1..up4 = JBULearnedRange(3, feat_dim, 32, radius=3), fixup_proj."""
    shapes = {}
    for n in range(1, 5):
        p = f"up{n}."
        shapes.update({
            p + "range_temp": (), p + "sigma_spatial": (),
            p + "range_proj.0.weight": (key_dim, guidance, 1, 1), p + "range_proj.0.bias": (key_dim,),
            p + "range_proj.3.weight": (key_dim, key_dim, 1, 1), p + "range_proj.3.bias": (key_dim,),
            p + "fixup_proj.0.weight": (taps, guidance + taps, 1, 1), p + "fixup_proj.0.bias": (taps,),
            p + "fixup_proj.3.weight": (taps, taps, 1, 1), p + "fixup_proj.3.bias": (taps,),
        })
    shapes["fixup_proj.1.weight"] = (feat_dim, feat_dim, 1, 1)
    shapes["fixup_proj.1.bias"] = (feat_dim,)
    return shapes


def test_full_size_dino16_has_official_key_names():
    with torch.device("meta"):
        model = UpsampledBackbone(build_dino("vit_small", patch_size=16))
    state = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    upsampler = {k[len("upsampler."):]: v for k, v in state.items() if k.startswith("upsampler.")}
    assert upsampler == _official_upsampler_keys()
    assert state["model.1.norm.weight"] == (384,) and state["model.1.norm.bias"] == (384,)
    dino = {k for k in state if k.startswith("model.0.model.")}
    assert len(dino) == 150 and state["model.0.model.pos_embed"] == (1, 197, 384)
    assert len(state) == len(upsampler) + 2 + len(dino)


def test_forward_upsamples_to_image_size():
    torch.manual_seed(0)
    model = load_featup(TINY)
    assert model(torch.randn(2, 3, 32, 48)).shape == (2, 64, 32, 48)
    with pytest.raises(ValueError, match="multiple of the patch size"):
        model(torch.randn(1, 3, 30, 32))


def test_loads_lightning_checkpoint_layout(tmp_path):
    torch.manual_seed(0)
    source = load_featup(TINY)
    with torch.no_grad():
        for p in source.upsampler.parameters():
            p.add_(0.1 * torch.randn_like(p))
    state = dict(source.state_dict())
    state.update({"downsampler.w": torch.zeros(3), "scale_net.net.weight": torch.zeros(1)})  # training-only keys
    torch.save({"state_dict": state, "global_step": 10}, tmp_path / "dino16_jbu_stack_cocostuff.ckpt")
    torch.save({f"module.{k}": v for k, v in state.items()}, tmp_path / "ddp.pth")
    images = torch.randn(1, 3, 32, 32)
    expected = source(images)
    for name in ("dino16_jbu_stack_cocostuff.ckpt", "ddp.pth"):
        loaded = load_featup(tmp_path / name, dino_num_heads=1)
        torch.testing.assert_close(loaded(images), expected)
        assert loaded.upsampler.up1.key_dim == 8 and not any(p.requires_grad for p in loaded.parameters())


def test_upsampler_only_checkpoint_takes_dino_from_dino_source(tmp_path):
    torch.manual_seed(0)
    source = load_featup(TINY)
    torch.save(source.upsampler.state_dict(), tmp_path / "jbu.pth")
    with pytest.raises(ValueError, match="dino_source"):
        load_featup(tmp_path / "jbu.pth")
    torch.save(source.model[0].model.state_dict(), tmp_path / "dino.pth")
    loaded = load_featup(tmp_path / "jbu.pth", dino_source=tmp_path / "dino.pth", dino_num_heads=1)
    torch.testing.assert_close(loaded.upsampler.up2.range_proj[0].weight, source.upsampler.up2.range_proj[0].weight)
    assert loaded.dim == 64
    torch.testing.assert_close(loaded.model[1].norm.weight, torch.ones(64))  # never trained by FeatUp
