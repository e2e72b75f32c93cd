"""DUSt3R port: golden outputs of the reference code, checkpoint formats, official key layout, errors."""

import argparse
import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from reangle.nets.dust3r import DUSt3R, PRESETS, PairPrediction, load_dust3r

OUTPUTS = {"pts3d_1": "res1.pts3d", "conf_1": "res1.conf", "pts3d_2": "res2.pts3d_in_other_view", "conf_2": "res2.conf"}
ALIASES = [f"downstream_head{h}.dpt.scratch.layer_rn.{i}.weight" for h in (1, 2) for i in range(4)]

@pytest.fixture(scope="module")
def golden(golden_dir):
    return golden_dir / "dust3r"


@pytest.fixture(scope="module")
def case(golden):
    return json.loads((golden / "case.json").read_text())


@pytest.fixture(scope="module")
def io(golden):
    return load_file(golden / "io.safetensors")


@pytest.fixture(scope="module")
def golden_kwargs(case):
    heads = case["dpt_head_overrides"]
    return dict(case["constructor_kwargs"], feature_dim=heads["feature_dim"], last_dim=heads["last_dim"],
                layer_dims=heads["layer_dims"])


def _check_outputs(model, io, case):
    tol = case["tolerance"]["suggested"]
    with torch.no_grad():
        out = model(io["view1.img"], io["view2.img"])
    assert isinstance(out, PairPrediction)
    for field, key in OUTPUTS.items():
        torch.testing.assert_close(getattr(out, field), io[key], rtol=tol["rtol"], atol=tol["atol"], msg=field)


def test_golden_weights_reproduce_reference_outputs(golden_kwargs, io, case, golden):
    model = load_dust3r(golden_kwargs)
    state = load_file(golden / "weights.safetensors")
    assert set(ALIASES) <= set(state)  # both spellings of the DPT convs
    model.load_state_dict(state, strict=True)
    _check_outputs(model, io, case)


def test_official_pth_loads_without_arbitrary_unpickling(io, case, golden):
    model = load_dust3r(golden / "ckpt_style.pth")
    head = model.downstream_head1.dpt
    assert [m.out_channels for m in head.scratch.layer_rn] == [case["dpt_head_overrides"]["feature_dim"]] * 4
    assert [seq[0].out_channels for seq in head.act_postprocess] == case["dpt_head_overrides"]["layer_dims"]
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    _check_outputs(model, io, case)


def test_hf_folder_without_alias_keys_loads(tmp_path, io, case, golden):
    export = case["hf_safetensors_export_check"]
    state = load_file(golden / "weights.safetensors")
    for key in export["keys_dropped"]:
        del state[key]
    assert len(state) == export["model_safetensors_keys"]
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt", **export["file_metadata_header"]})
    (tmp_path / "config.json").write_text(export["config_json_written"])
    assert "Infinity" in (tmp_path / "config.json").read_text()
    model = load_dust3r(str(tmp_path))
    _check_outputs(model, io, case)


def test_hub_id_reads_the_downloaded_export(tmp_path, monkeypatch, io, case, golden):
    import huggingface_hub

    state = load_file(golden / "weights.safetensors")
    save_file({k: v for k, v in state.items() if k not in ALIASES}, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(case["hf_safetensors_export_check"]["config_json_written"])
    requested = []

    def fake_download(repo_id, filename):
        requested.append((repo_id, filename))
        return str(tmp_path / filename)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    model = load_dust3r("naver/DUSt3R_ViTLarge_BaseDecoder_512_dpt")
    assert sorted(requested) == [("naver/DUSt3R_ViTLarge_BaseDecoder_512_dpt", "config.json"),
                                 ("naver/DUSt3R_ViTLarge_BaseDecoder_512_dpt", "model.safetensors")]
    _check_outputs(model, io, case)
    assert load_dust3r(tmp_path / "model.safetensors").state_dict().keys() == model.state_dict().keys()


def test_mast3r_checkpoint_loads_with_descriptor_head_dropped(tmp_path, io, case, golden):
    state = load_file(golden / "weights.safetensors")
    idim = case["constructor_kwargs"]["enc_embed_dim"] + case["constructor_kwargs"]["dec_embed_dim"]
    for h in (1, 2):
        state[f"downstream_head{h}.head_local_features.fc1.weight"] = torch.randn(4 * idim, idim)
        state[f"downstream_head{h}.head_local_features.fc2.weight"] = torch.randn(25 * 256, 4 * idim)
    model_string = case["ckpt_style"]["args_model"].replace("AsymmetricCroCo3DStereo", "AsymmetricMASt3R")
    model_string = model_string.replace("head_type='dpt', output_mode='pts3d'",
                                        "head_type='catmlp+dpt', output_mode='pts3d+desc24'")
    model_string = model_string[:-1] + ", two_confs=True, desc_conf_mode=('exp', 0, inf))"
    path = tmp_path / "mast3r.pth"
    torch.save({"args": argparse.Namespace(model=model_string), "model": state}, path)
    model = load_dust3r(path)
    assert not any("head_local_features" in k for k in model.state_dict())
    _check_outputs(model, io, case)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_full_size_presets_have_the_official_keys_and_shapes(name, golden):
    official = json.loads((golden / "official_state_dict_shapes.json").read_text())["models"][name]
    with torch.device("meta"):
        model = DUSt3R(**PRESETS[name])
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert shapes == official["shapes"]
    if model.downstream_head1.__class__.__name__ == "DPTHead":
        assert list(model.downstream_head1.dpt.hooks) == official["dpt_hooks"]


def test_default_constructor_is_the_512_dpt_checkpoint():
    with torch.device("meta"):
        default, preset = DUSt3R(), DUSt3R(**PRESETS["DUSt3R_ViTLarge_BaseDecoder_512_dpt"])
    assert {k: v.shape for k, v in default.state_dict().items()} == {k: v.shape for k, v in preset.state_dict().items()}


def test_missing_key_is_a_clear_error_naming_key_and_file(tmp_path, golden):
    ckpt = torch.load(golden / "ckpt_style.pth", map_location="cpu", weights_only=False)
    del ckpt["model"]["dec_blocks2.3.cross_attn.projk.bias"]
    path = tmp_path / "broken.pth"
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match=r"dec_blocks2\.3\.cross_attn\.projk\.bias") as err:
        load_dust3r(path)
    assert str(path) in str(err.value)


def test_unexpected_key_is_a_clear_error(tmp_path, case, golden):
    export = case["hf_safetensors_export_check"]
    state = load_file(golden / "weights.safetensors")
    state["enc_pos_embed"] = torch.zeros(1, 16, 64)
    save_file(state, tmp_path / "model.safetensors")
    (tmp_path / "config.json").write_text(export["config_json_written"])
    with pytest.raises(ValueError, match="unexpected keys.*enc_pos_embed"):
        load_dust3r(tmp_path)


def test_pth_with_code_in_model_string_is_rejected(tmp_path):
    path = tmp_path / "evil.pth"
    torch.save({"args": argparse.Namespace(model="AsymmetricCroCo3DStereo(enc_depth=__import__('os').getpid())"),
                "model": {}}, path)
    with pytest.raises(ValueError, match="enc_depth.*not a literal"):
        load_dust3r(path)


def test_bad_sources_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing config.json"):
        load_dust3r(tmp_path)
    with pytest.raises(FileNotFoundError, match="neither an existing folder"):
        load_dust3r(tmp_path / "nothing.pth")
    with pytest.raises(ValueError, match="unsupported model arguments.*enc_dept"):
        load_dust3r({"enc_dept": 2})


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return load_dust3r(dict(enc_embed_dim=32, enc_depth=2, enc_num_heads=2, dec_embed_dim=24, dec_depth=4,
                            dec_num_heads=2, feature_dim=16, last_dim=8, layer_dims=(8, 8, 16, 16)))


def test_wrong_image_shape_or_range_is_a_clear_error(tiny):
    good = torch.zeros(1, 3, 32, 48)
    with pytest.raises(ValueError, match="multiples of 16"):
        tiny(torch.zeros(1, 3, 40, 48), good)
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        tiny(torch.zeros(3, 32, 48), good)
    with pytest.raises(ValueError, match="same, non-zero number of images"):
        tiny(good, torch.zeros(2, 3, 32, 48))
    with pytest.raises(ValueError, match=r"\[-1, 1\].*255"):
        tiny(good, torch.full((1, 3, 32, 48), 255.0))


def test_batched_pairs_equal_single_pairs_and_views_may_differ_in_size(tiny):
    torch.manual_seed(1)
    img1, img2 = torch.rand(3, 3, 48, 80) * 2 - 1, torch.rand(3, 3, 48, 80) * 2 - 1  # odd 3x5 token grid
    with torch.no_grad():
        batch = tiny(img1, img2)
        single = tiny(img1[1:2], img2[1:2])
        mixed = tiny(img1, torch.rand(3, 3, 32, 64) * 2 - 1)
    assert batch.pts3d_1.shape == (3, 48, 80, 3) and batch.conf_2.shape == (3, 48, 80)
    torch.testing.assert_close(batch.pts3d_2[1:2], single.pts3d_2, rtol=1e-4, atol=1e-5)
    assert mixed.pts3d_2.shape == (3, 32, 64, 3) and mixed.conf_1.shape == (3, 48, 80)
    assert (batch.conf_1 > 1).all()


def test_bfloat16_backbone_with_float32_heads_stays_close(io, case, golden):
    ref = load_dust3r(golden / "ckpt_style.pth")
    low = load_dust3r(golden / "ckpt_style.pth", dtype=torch.bfloat16, head_dtype=torch.float32)
    assert low.enc_blocks[0].attn.qkv.weight.dtype == torch.bfloat16
    assert low.downstream_head2.dpt.head[4].weight.dtype == torch.float32
    with torch.no_grad():
        a, b = ref(io["view1.img"], io["view2.img"]), low(io["view1.img"], io["view2.img"])
    assert b.pts3d_1.dtype == torch.float32
    rel = (a.pts3d_2 - b.pts3d_2).norm() / a.pts3d_2.norm()
    assert rel < 0.1, rel


def test_linear_head_writes_each_token_to_its_own_16x16_patch():
    torch.manual_seed(0)
    model = load_dust3r(dict(enc_embed_dim=32, enc_depth=1, enc_num_heads=2, dec_embed_dim=24, dec_depth=1,
                             dec_num_heads=2, head_type="linear"))
    tokens = torch.zeros(1, 6, 24)  # 2x3 token grid
    tokens[0, 4] = torch.randn(24)  # row 1, column 1
    raw = model.downstream_head1([tokens], (32, 48))
    background = model.downstream_head1.proj.bias.view(4, 16, 16)
    torch.testing.assert_close(raw[0, :, :16, :16], background)
    assert not torch.allclose(raw[0, :, 16:, 16:32], background)
    torch.testing.assert_close(raw[0, :, 16:, 32:], background)
