"""DINO ViT port: golden outputs of the reference, official key names and shapes, loader sources."""
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from reangle.nets.dino import HUB_URLS, build_dino, load_dino

GOLDEN = Path("/work/shared/golden/dino_vit")


def _expected_keys(depth):
    keys = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias"}
    for i in range(depth):
        for name in ("norm1", "attn.qkv", "attn.proj", "norm2", "mlp.fc1", "mlp.fc2"):
            keys |= {f"blocks.{i}.{name}.weight", f"blocks.{i}.{name}.bias"}
    return keys


@pytest.mark.skipif(not GOLDEN.is_dir(), reason="golden vectors not available")
@pytest.mark.parametrize("name", ["x", "x_grid"])
def test_reproduces_reference_outputs(name):
    """Non-square 4x6 patch grid (bicubic +0.1 resampling of pos_embed) and the native 14x14 grid."""
    io = load_file(str(GOLDEN / "io.safetensors"))
    model = load_dino(GOLDEN / "weights.safetensors", num_heads=4)  # case.json: embed 64, depth 3, 4 heads
    x = io[f"{name}.input"]
    with torch.no_grad():
        cls = model(x)
        tokens = model.get_intermediate_layers(x, n=1)
    torch.testing.assert_close(cls, io[f"{name}.forward_cls"], rtol=1e-4, atol=1e-4)
    assert len(tokens) == 1
    torch.testing.assert_close(tokens[0], io[f"{name}.intermediate_n1_0"], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("arch,dim,heads", [("vit_small", 384, 6), ("vit_base", 768, 12)])
def test_full_size_presets_have_official_keys_and_shapes(arch, dim, heads):
    with torch.device("meta"):
        model = build_dino(arch, patch_size=16)
    state = model.state_dict()
    assert set(state) == _expected_keys(12)
    assert state["pos_embed"].shape == (1, 197, dim)
    assert state["cls_token"].shape == (1, 1, dim)
    assert state["patch_embed.proj.weight"].shape == (dim, 3, 16, 16)
    assert state["blocks.11.attn.qkv.weight"].shape == (3 * dim, dim)
    assert state["blocks.0.mlp.fc1.weight"].shape == (4 * dim, dim)
    assert model.blocks[0].attn.num_heads == heads


def test_intermediate_layers_and_forward_agree():
    torch.manual_seed(0)
    model = load_dino({"embed_dim": 32, "depth": 3, "num_heads": 2})
    x = torch.randn(2, 3, 48, 32)
    layers = model.get_intermediate_layers(x, n=2)
    assert [t.shape for t in layers] == [torch.Size([2, 1 + 3 * 2, 32])] * 2
    torch.testing.assert_close(model(x), layers[-1][:, 0])


def test_loads_official_style_pth_with_prefixes(tmp_path):
    torch.manual_seed(0)
    source = load_dino({"embed_dim": 64, "depth": 2, "num_heads": 1})
    path = tmp_path / "teacher.pth"
    state = {f"module.backbone.{k}": v for k, v in source.state_dict().items()}
    state["module.head.last_layer.weight"] = torch.zeros(3, 3)  # training-head keys are dropped
    torch.save(state, path)
    loaded = load_dino(path, num_heads=1)
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(loaded(x), source(x))
    assert not any(p.requires_grad for p in loaded.parameters()) and not loaded.training


def test_bad_sources_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a file nor a hub name"):
        load_dino("dino_vits17")
    path = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(1)}, path)
    with pytest.raises(ValueError, match="not a DINO ViT state dict"):
        load_dino(path)
    assert set(HUB_URLS) == {"dino_vits16", "dino_vitb16"}
