"""VBench model loaders: VBench's own preprocessing (torchvision transforms as VBench writes them),
full-size builds on meta with the official key names/shapes, checkpoint layouts and errors."""
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torchvision import transforms as T

from reangle.models import vbench as vb
from reangle.nets.amt import AMTS
from reangle.nets.dino import build_dino

DATA = Path(__file__).parent / "data"


def _frames(n, h, w, seed=0):
    """Frames on the 8-bit grid, as decoded from a video."""
    return torch.randint(0, 256, (n, 3, h, w), generator=torch.Generator().manual_seed(seed)).float() / 255


def _levels(frames):
    """VBench's ``load_video`` output: the frames' 8-bit levels as float32 0-255."""
    return (frames * 255).round().float()


def _openai_visual_keys(width, layers, patch, embed_dim):
    """Key -> shape of ``visual.*`` in OpenAI's CLIP checkpoints (clip/model.py VisionTransformer), prefix dropped."""
    grid = 224 // patch
    keys = {"class_embedding": (width,), "positional_embedding": (grid * grid + 1, width), "proj": (width, embed_dim),
            "conv1.weight": (width, 3, patch, patch), "ln_pre.weight": (width,), "ln_pre.bias": (width,),
            "ln_post.weight": (width,), "ln_post.bias": (width,)}
    for i in range(layers):
        b = f"transformer.resblocks.{i}"
        keys.update({f"{b}.ln_1.weight": (width,), f"{b}.ln_1.bias": (width,), f"{b}.ln_2.weight": (width,),
                     f"{b}.ln_2.bias": (width,), f"{b}.attn.in_proj_weight": (3 * width, width),
                     f"{b}.attn.in_proj_bias": (3 * width,), f"{b}.attn.out_proj.weight": (width, width),
                     f"{b}.attn.out_proj.bias": (width,), f"{b}.mlp.c_fc.weight": (4 * width, width),
                     f"{b}.mlp.c_fc.bias": (4 * width,), f"{b}.mlp.c_proj.weight": (width, 4 * width),
                     f"{b}.mlp.c_proj.bias": (width,)})
    return keys


def _layout(module):
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


# ----------------------------------------------------------------------------- full-size builds on meta

@pytest.mark.parametrize("name,width,layers,patch,embed_dim", [
    (vb.BACKGROUND_CLIP, 768, 12, 32, 512),   # ViT-B/32
    (vb.AESTHETIC_CLIP, 1024, 24, 14, 768),   # ViT-L/14 (feeds the 768 -> 1 LAION head)
])
def test_full_size_clip_towers_have_openai_keys(name, width, layers, patch, embed_dim):
    with torch.device("meta"):
        visual = vb.build_clip_visual(name)
    assert _layout(visual) == _openai_visual_keys(width, layers, patch, embed_dim)
    assert visual.output_dim == embed_dim
    assert type(visual.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"  # OpenAI weights use QuickGELU


def test_full_size_dino_raft_musiq_amt_build_on_meta():
    with torch.device("meta"):
        dino, raft, musiq, amt = build_dino("vit_base", patch_size=16), vb.build_raft(), vb.build_musiq(), AMTS()
    assert _layout(dino)["pos_embed"] == (1, 197, 768) and len(dino.blocks) == 12
    original = json.loads((DATA / "raft_things_keys.json").read_text())["keys"]  # raft-things.pth layout
    converted = vb.convert_raft_checkpoint({k: torch.zeros(v) for k, v in original.items()})
    expected_raft = {k: tuple(v.shape) for k, v in converted.items()}
    assert _layout(raft) == expected_raft
    musiq_layout = _layout(musiq)  # MUSIQ paper config: patch 32, hidden 384, 14 layers, 3 scales, 10x10 grid
    assert musiq_layout["head.weight"] == (1, 384)  # SPAQ head: one score (the AVA head has 10 bins)
    assert musiq_layout["embedding.weight"] == (384, 256 * 8 * 8)
    assert musiq_layout["transformer_encoder.posembed_input.position_emb"] == (1, 100, 384)
    assert musiq_layout["transformer_encoder.scaleembed_input.scale_emb"] == (3, 384)
    assert sum(k.endswith("attention.query.weight") for k in musiq_layout) == 14
    assert sum(v.numel() for v in amt.state_dict().values()) == 2990543


# ----------------------------------------------------------------------------- preprocessing = VBench's transforms

def test_subject_model_matches_vbench_dino_transform():
    model = vb.load_subject_model("tiny")
    frames = _frames(2, 90, 150)
    vbench_transform = T.Compose([T.Resize(size=224, antialias=False), T.Lambda(lambda x: x.float().div(255.0)),
                                  T.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    x = vbench_transform(_levels(frames))
    assert x.shape[-2:] == (224, 373)
    with torch.no_grad():
        torch.testing.assert_close(model(frames), model.dino(x))
    assert model(frames).shape == (2, 32)


def test_background_model_matches_vbench_clip_transform():
    model = vb.load_background_model("tiny")
    frames = _frames(2, 100, 180)
    vbench_transform = T.Compose([T.Resize(224, interpolation=T.InterpolationMode.BICUBIC, antialias=False),
                                  T.CenterCrop(224), T.Lambda(lambda x: x.float().div(255.0)),
                                  T.Normalize(vb.CLIP_MEAN, vb.CLIP_STD)])
    with torch.no_grad():
        torch.testing.assert_close(model(frames), model.visual(vbench_transform(_levels(frames))))


def test_aesthetic_model_is_normalised_features_through_the_head(tmp_path):
    head = {"weight": torch.randn(1, 16, generator=torch.Generator().manual_seed(1)), "bias": torch.tensor([5.0])}
    path = tmp_path / "sa_0_4_vit_l_14_linear.pth"
    torch.save(head, path)
    model = vb.load_aesthetic_model("tiny", path)
    frames = _frames(3, 64, 64)
    with torch.no_grad():
        features = F.normalize(model.clip(frames), dim=-1)
        torch.testing.assert_close(model(frames), (features @ head["weight"].T + head["bias"]).squeeze(-1) / 10)
    bad = tmp_path / "bad.pth"
    torch.save({"weight": torch.zeros(1, 768), "bias": torch.zeros(1)}, bad)
    with pytest.raises(ValueError, match="16-d CLIP features"):
        vb.load_aesthetic_model("tiny", bad)


def test_imaging_model_resizes_the_longer_side_to_512_like_vbench():
    model = vb.load_imaging_model("tiny")
    frames = _frames(1, 300, 640)
    resized = T.Resize(size=(int(512 / 640 * 300), int(512 / 640 * 640)), antialias=False)(_levels(frames)) / 255.0
    assert resized.shape[-2:] == (240, 512)
    small = _frames(1, 64, 96, seed=1)
    with torch.no_grad():
        torch.testing.assert_close(model(frames), model.musiq(resized).reshape(-1) / 100)
        torch.testing.assert_close(model(small), model.musiq(small).reshape(-1) / 100)  # no resize below 512


# ----------------------------------------------------------------------------- RAFT: key converter, padding

def _raft_things_state():
    """Random tensors in the released layout, the shortcut BatchNorm stored twice (norm3 = downsample.1)."""
    reference = json.loads((DATA / "raft_things_keys.json").read_text())["keys"]
    gen = torch.Generator().manual_seed(0)
    state = {k: torch.randn(*shape, generator=gen) if shape else torch.tensor(3) for k, shape in reference.items()}
    for key in [k for k in state if ".norm3." in k]:
        state[key] = state[key.replace(".norm3.", ".downsample.1.")].clone()
    return state


def test_raft_things_layout_has_the_duplicated_shortcut_norms():
    keys = json.loads((DATA / "raft_things_keys.json").read_text())["keys"]
    assert len(keys) == 179
    norm3 = sorted(k for k in keys if ".norm3." in k)
    assert norm3 == sorted(f"module.cnet.layer{i}.0.norm3.{t}" for i in (2, 3)
                           for t in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked"))


def test_raft_things_layout_converts_and_loads(tmp_path):
    state = _raft_things_state()
    path = tmp_path / "raft-things.pth"
    torch.save(state, path)
    model = vb.load_flow_model(path)
    raft = model.raft
    torch.testing.assert_close(raft.feature_encoder.convnormrelu[0].weight, state["module.fnet.conv1.weight"])
    torch.testing.assert_close(raft.context_encoder.layer3[0].downsample[1].running_var,
                               state["module.cnet.layer3.0.downsample.1.running_var"])
    torch.testing.assert_close(raft.update_block.recurrent_block.convgru2.convq.weight,
                               state["module.update_block.gru.convq2.weight"])
    torch.testing.assert_close(raft.mask_predictor.conv.bias, state["module.update_block.mask.2.bias"])
    torch.testing.assert_close(raft.update_block.motion_encoder.convcorr2[0].weight,
                               state["module.update_block.encoder.convc2.weight"])


def test_raft_checkpoint_with_unequal_shortcut_norms_is_refused(tmp_path):
    state = _raft_things_state()
    state["module.cnet.layer3.0.norm3.running_mean"] += 1
    path = tmp_path / "raft-things.pth"
    torch.save(state, path)
    with pytest.raises(vb.RAFTCheckpointError, match="layer3.0.norm3.running_mean has no equal"):
        vb.load_flow_model(path)


def test_torchvision_format_raft_loads_directly(tmp_path):
    source = vb.build_raft()
    path = tmp_path / "raft_large.safetensors"
    save_file(source.state_dict(), str(path))
    loaded = vb.load_flow_model(path).raft
    torch.testing.assert_close(loaded.state_dict(), source.state_dict())


def test_flow_model_pads_to_a_multiple_of_8_and_crops_back():
    model = vb.load_flow_model("tiny")
    a, b = _frames(1, 130, 136), _frames(1, 130, 136, seed=1)
    with torch.no_grad():
        flow = model(a, b)
        # 130 -> 136 rows (3 above, 3 below), 136 columns unchanged; inputs mapped to [-1, 1]
        pa, pb = (F.pad(x * 2 - 1, (0, 0, 3, 3), mode="replicate") for x in (a, b))
        expected = model.raft(pa, pb, num_flow_updates=20)[-1][..., 3:133, :]
    assert flow.shape == (1, 2, 130, 136)
    torch.testing.assert_close(flow, expected)
    with torch.no_grad():  # the multiple-of-8 area VBench ranks: the padded rows too
        torch.testing.assert_close(model(a, b, padded=True), model.raft(pa, pb, num_flow_updates=20)[-1])


def test_pad_to_multiple_splits_evenly_and_respects_the_minimum():
    x = torch.arange(2 * 3 * 5 * 7, dtype=torch.float32).reshape(2, 3, 5, 7)
    padded, (rows, cols) = vb.pad_to_multiple(x, 4, minimum=10)
    assert padded.shape == (2, 3, 12, 12)
    assert (rows.start, cols.start) == (3, 2)  # 7 rows of padding: 3 above, 4 below; 5 columns: 2 left, 3 right
    torch.testing.assert_close(padded[..., rows, cols], x)
    torch.testing.assert_close(padded[..., 0, 2:9], x[..., 0, :])  # replicated edge


# ----------------------------------------------------------------------------- AMT-S wrapper

def test_interpolation_model_pads_for_amt_and_crops_back():
    model = vb.load_interpolation_model("tiny")
    img0, img1 = _frames(2, 120, 136), _frames(2, 120, 136, seed=1)
    with torch.no_grad():
        out = model(img0, img1, 0.5)
        # 120 rows -> 128 (4 above, 4 below); 136 columns -> 144 (4 left, 4 right)
        p0, p1 = (F.pad(x, (4, 4, 4, 4), mode="replicate") for x in (img0, img1))
        expected = model.amt(p0, p1, torch.full((2, 1, 1, 1), 0.5))[..., 4:124, 4:140]
    assert out.shape == (2, 3, 120, 136)
    torch.testing.assert_close(out, expected)


# ----------------------------------------------------------------------------- checkpoint files

def test_musiq_checkpoint_round_trip(tmp_path):
    source = vb.build_musiq()
    path = tmp_path / "musiq_spaq_ckpt.pth"
    torch.save({f"module.{k}": v for k, v in source.state_dict().items()}, path)
    loaded = vb.load_imaging_model(path).musiq
    torch.testing.assert_close(loaded.state_dict(), source.state_dict())


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::FutureWarning")
def test_clip_file_sources_state_dict_and_torchscript(tmp_path):
    visual = vb.build_clip_visual("tiny")
    state = {f"visual.{k}": v for k, v in visual.state_dict().items()}
    state["token_embedding.weight"] = torch.zeros(4, 2)  # text-tower keys are ignored
    path = tmp_path / "clip.pth"
    torch.save(state, path)
    frames = _frames(1, 64, 64)
    with torch.no_grad():
        expected = vb.CLIPImageFeatures(visual.eval())(frames)
        torch.testing.assert_close(vb._load_clip("tiny", path)(frames), expected)

    class OpenAIStyle(torch.nn.Module):  # the OpenAI release is a TorchScript archive of the whole CLIP
        def __init__(self):
            super().__init__()
            self.visual = visual

        def forward(self, x):
            return self.visual(x)

    scripted = tmp_path / "clip.pt"
    torch.jit.trace(OpenAIStyle().eval(), torch.zeros(1, 3, 224, 224), check_trace=False).save(str(scripted))
    with torch.no_grad():
        torch.testing.assert_close(vb._load_clip("tiny", scripted)(frames), expected)


def test_float16_clip_release_runs_in_float32_on_the_cpu(tmp_path):
    """OpenAI's CLIP files hold float16 tensors; VBench's ``clip.load`` converts the model to float32 on
    the CPU (``model.float()``) and casts the input to it: the same float32 numbers here."""
    visual = vb.build_clip_visual("tiny").eval()
    half = {f"visual.{k}": v.half() if v.is_floating_point() else v for k, v in visual.state_dict().items()}
    path = tmp_path / "ViT-B-32.pth"
    torch.save(half, path)
    loaded = vb._load_clip("tiny", path)
    assert {p.dtype for p in loaded.parameters()} == {torch.float32}
    visual.load_state_dict({k.removeprefix("visual."): v.float() for k, v in half.items()})
    frames = _frames(2, 64, 80)
    with torch.no_grad():
        x = T.Compose([T.Resize(224, interpolation=T.InterpolationMode.BICUBIC, antialias=False), T.CenterCrop(224),
                       T.Lambda(lambda x: x.float().div(255.0)), T.Normalize(vb.CLIP_MEAN, vb.CLIP_STD)])(
            _levels(frames))
        torch.testing.assert_close(loaded(frames), visual(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("loader", [
    vb.load_subject_model, vb.load_background_model, vb.load_imaging_model, vb.load_flow_model,
    vb.load_interpolation_model, lambda p: vb.load_aesthetic_model("tiny", p),
])
def test_missing_checkpoint_names_the_path(tmp_path, loader):
    path = tmp_path / "missing" / "weights.pth"
    with pytest.raises(FileNotFoundError, match=str(path)):
        loader(path)


def test_unreadable_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "raft-things.pth"
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="RAFT checkpoint .* could not be read"):
        vb.load_flow_model(path)
    other = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(1)}, other)
    with pytest.raises(ValueError, match="RAFT-large checkpoint .* does not match the architecture"):
        vb.load_flow_model(other)
