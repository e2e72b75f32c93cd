"""The memory plan of train.py (callbacks.memory_plan): a live-object census of the tiny pipeline at
the start of stage III's search and of sampling's denoising finds only the models those phases use."""
import gc
from collections import Counter

import torch

import train
from reangle.inpaint import run as stage3
from reangle.sampling import sampler as sampling


def census() -> dict:
    """Live nn.Module instances by class name, optimizer state elements and gradient elements."""
    gc.collect()
    objects = gc.get_objects()
    modules = [o for o in objects if isinstance(o, torch.nn.Module)]
    return {"modules": Counter(type(m).__name__ for m in modules),
            "optimizer_state": sum(t.numel() for o in objects if isinstance(o, torch.optim.Optimizer)
                                   for state in o.state.values() for t in state.values() if torch.is_tensor(t)),
            "grads": sum(p.grad.numel() for m in modules for p in m.parameters(recurse=False) if p.grad is not None)}


def test_each_phase_of_a_run_holds_only_its_own_models(tmp_path, tiny_omega, tiny_model_dir, monkeypatch):
    seen = {}

    def recording(name, fn):
        def wrapper(*args, **kwargs):
            seen[name] = census()
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(stage3, "inpaint_views", recording("stage3", stage3.inpaint_views))
    monkeypatch.setattr(sampling.CogVideoXSampler, "sample", recording("sampling", sampling.CogVideoXSampler.sample))
    before = census()
    train.main(["--config", "configs/presets/tiny.yaml", "data.height=64", "data.width=96", f"train.omega={tiny_omega}",
                f"run.root={tmp_path}", "run.name=plan", f"run.cache_dir={tiny_model_dir.parent.parent}",
                "sample.steps=1", "inpaint.steps=2"])
    assert set(seen) == {"stage3", "sampling"}

    def new(phase, name):
        return seen[phase]["modules"][name] - before["modules"][name]

    for phase in ("stage3", "sampling"):
        assert seen[phase]["optimizer_state"] == 0, f"{phase}: AdamW states still alive"
        assert seen[phase]["grads"] == 0, f"{phase}: gradients still alive"
    # stage III: FLUX and MEt3R; its text encoders (T5, CLIP) released once the prompts are encoded; no
    # CogVideoX VAE (caching encoders, per-step image VAE)
    assert new("stage3", "FluxTransformer2DModel") == 1 and new("stage3", "InpaintControlNet") == 1
    assert new("stage3", "T5EncoderModel") == 0 and new("stage3", "CLIPTextModel") == 0
    assert new("stage3", "AutoencoderKLCogVideoX") == 0
    # sampling: the fine-tuned transformer and the VAE; FLUX released, T5 released after the prompts
    assert new("sampling", "CogVideoXTransformer3DModel") == 1 and new("sampling", "AutoencoderKLCogVideoX") == 1
    assert new("sampling", "FluxTransformer2DModel") == 0 and new("sampling", "InpaintControlNet") == 0
    assert new("sampling", "T5EncoderModel") == 0


def test_caching_releases_t5_before_the_vae_encodes_the_clips(tmp_path, tiny_omega, tiny_model_dir, monkeypatch):
    from reangle.data.datamodule import OmegaDataModule
    from reangle.models.cogvideox_i2v import CogVideoXI2V

    spec = CogVideoXI2V("tiny", cache_dir=str(tiny_model_dir.parent.parent), weights_dtype="fp32")
    order, before = [], census()
    encode_prompt, encode_video = spec.encode_prompt, spec.encode_video

    def video(*args):
        order.append(("video", census()["modules"]["T5EncoderModel"] - before["modules"]["T5EncoderModel"]))
        return encode_video(*args)

    monkeypatch.setattr(spec, "encode_prompt", lambda p: order.append(("prompt", None)) or encode_prompt(p))
    monkeypatch.setattr(spec, "encode_video", video)
    OmegaDataModule(spec, tiny_omega, tmp_path / "cache", encode_device="cpu").prepare_data()
    assert [kind for kind, _ in order] == ["prompt", "video", "video"]  # one caption, two views
    assert all(t5 == 0 for kind, t5 in order if kind == "video")  # T5 gone while the VAE encodes
    assert spec.encoders is None
