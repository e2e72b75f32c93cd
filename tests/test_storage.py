"""Float8 weight storage (model.storage_dtype, inpaint.storage_dtype): what is stored in float8, that the LoRA
stays float32 and trains through gradient checkpointing, and that the output is exactly that of the weights
rounded through float8 (the only numerical change), for stage II training, sampling and stage III."""
import pytest
import torch

from reangle.config import CHOICES, ConfigError, load_config
from reangle.models.cogvideox_i2v import CogVideoXI2V
from reangle.models.storage import STORAGE_DTYPES, compute_dtype, store_weights
from reangle.simulate import tensor_bytes

F8 = torch.float8_e4m3fn


def fp8_names(model):
    return {n for n, p in model.named_parameters() if p.dtype == F8}


def round_through_fp8(model, names):
    """The reference: the parameters ``names`` rounded through float8 and kept in their own dtype."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n in names:
                p.copy_(p.to(F8).to(p.dtype))


def tiny_spec(cache, storage):
    spec = CogVideoXI2V("tiny", cache_dir=str(cache), weights_dtype="fp32", lora_rank=4, lora_alpha=4,
                        image_condition="cached", gradient_checkpointing=True)
    spec.storage_dtype = storage
    torch.manual_seed(0)  # the LoRA's initialisation
    spec.load_diffusion_model()
    with torch.no_grad():  # a non-zero LoRA B, the same in every spec
        for n, p in spec.transformer.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(n))) * 0.1)
    return spec


def batch():
    g = torch.Generator().manual_seed(1)
    return {"video_mean": torch.randn(1, 3, 16, 8, 12, generator=g), "video_logvar": torch.full((1, 3, 16, 8, 12), -4.0),
            "image_mean": torch.randn(1, 1, 16, 8, 12, generator=g), "image_logvar": torch.full((1, 1, 16, 8, 12), -4.0),
            "prompt_embeds": torch.randn(1, 226, 32, generator=g)}


def loss_and_grads(spec):
    pair = spec.training_pair(batch(), torch.Generator().manual_seed(2))
    loss = (pair.weight.view(-1, 1, 1, 1, 1) * (pair.prediction - pair.target).square()).mean()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in spec.transformer.named_parameters() if p.requires_grad}


@pytest.fixture(scope="module")
def specs(tiny_model_dir):
    cache = tiny_model_dir.parent.parent
    return tiny_spec(cache, "fp8"), tiny_spec(cache, None)


def test_fp8_storage_keeps_the_frozen_layers_in_float8_and_the_lora_in_float32(specs):
    stored, plain = specs
    t = stored.transformer
    names = fp8_names(t)
    assert names and all(".base_layer." in n or "lora" not in n for n in names)
    assert any(n.endswith("attn1.to_q.base_layer.weight") for n in names)  # the LoRA-wrapped projections
    assert any(".ff.net." in n for n in names)                              # the feed-forward layers
    # diffusers' skip patterns: patch embedding and norms (including the adaptive norms' linears) keep fp32
    assert not any(n.startswith("patch_embed.") or ".norm" in n or n.startswith("norm") for n in names)
    lora = {n: p for n, p in t.named_parameters() if p.requires_grad}
    assert lora and all("lora_" in n and p.dtype == torch.float32 for n, p in lora.items())
    assert not any("lora_" in n and hasattr(m, "_diffusers_hook") and m._diffusers_hook.get_hook("layerwise_casting")
                   for n, m in t.named_modules())
    assert compute_dtype(t) == torch.float32
    # one byte per stored weight instead of four
    numel = sum(p.numel() for n, p in t.named_parameters() if n in names)
    assert tensor_bytes(plain.transformer) - tensor_bytes(t) == 3 * numel


def test_fp8_training_step_with_checkpointing_is_the_rounded_weights_step(specs):
    stored, plain = specs
    assert stored.transformer.gradient_checkpointing and stored.transformer.training
    reference = plain
    round_through_fp8(reference.transformer, fp8_names(stored.transformer))
    loss, grads = loss_and_grads(stored)
    ref_loss, ref_grads = loss_and_grads(reference)
    assert torch.allclose(loss, ref_loss, rtol=1e-6, atol=0)
    assert grads.keys() == ref_grads.keys() and all(torch.allclose(grads[k], ref_grads[k], rtol=1e-5, atol=1e-7)
                                                    for k in grads)
    assert all(g.abs().sum() > 0 for k, g in grads.items() if "lora_A" in k)  # B != 0: A learns too
    frozen = {n: p.clone() for n, p in stored.transformer.named_parameters() if p.dtype == F8}
    params = [p for p in stored.transformer.parameters() if p.requires_grad]
    before = [p.clone() for p in params]
    torch.optim.AdamW(params, lr=1e-3).step()
    assert all(p.dtype == torch.float32 and not torch.equal(p, b) for p, b in zip(params, before))
    assert all(torch.equal(p.view(torch.uint8), frozen[n].view(torch.uint8))
               for n, p in stored.transformer.named_parameters() if n in frozen)
    with torch.no_grad():  # the specs are shared with the next tests: LoRA as before, no gradients
        for p, b in zip(params, before):
            p.copy_(b)
    stored.transformer.zero_grad(set_to_none=True)
    reference.transformer.zero_grad(set_to_none=True)


def test_sampling_with_the_trained_fp8_transformer_is_the_rounded_weights_sampling(specs, tiny_model_dir):
    from reangle.models.cogvideox import load_components
    from reangle.sampling.sampler import CogVideoXSampler, SampleRequest, SamplingSettings

    stored, plain = specs
    parts = load_components(str(tiny_model_dir), ["vae", "text_encoder", "tokenizer"])
    request = SampleRequest(torch.rand(3, 64, 96, generator=torch.Generator().manual_seed(4)), "a red ball", 7, 9)
    videos = []
    for spec in (stored, plain):
        round_through_fp8(plain.transformer, fp8_names(stored.transformer))  # idempotent
        sampler = CogVideoXSampler(spec.transformer, parts.vae, spec.scheduler, parts.text_encoder, parts.tokenizer,
                                   progress=False)
        assert sampler.dtype == torch.float32
        settings = SamplingSettings(steps=2, guidance=6.0)
        videos.append(sampler.sample([request], sampler.encode_prompts(["a red ball", ""]), settings)[0])
    assert (videos[0] - videos[1]).abs().max() <= 1e-5


def test_bf16_weights_with_fp8_storage_and_a_float32_lora_run_outside_autocast(tiny_model_dir):
    """Sampling runs without autocast: peft casts the bf16 input of each float32 LoRA layer (as without storage)."""
    spec = CogVideoXI2V("tiny", cache_dir=str(tiny_model_dir.parent.parent), weights_dtype="bf16", lora_rank=4,
                        lora_alpha=4, image_condition="cached")
    spec.storage_dtype = "fp8"
    t = spec.load_diffusion_model()
    assert fp8_names(t) and compute_dtype(t) == torch.bfloat16
    assert not any(hasattr(m, "_diffusers_hook") and m._diffusers_hook.get_hook("peft_autocast_disable")
                   for m in t.modules())
    with torch.no_grad():
        out = t(hidden_states=torch.randn(1, 3, 32, 8, 12, dtype=torch.bfloat16), timestep=torch.tensor([10]),
                encoder_hidden_states=torch.randn(1, 226, 32, dtype=torch.bfloat16), return_dict=False)[0]
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_a_loaded_lora_keeps_its_weights_under_fp8_storage(tmp_path, tiny_model_dir):
    from conftest import random_lora_file
    from reangle.models.cogvideox import load_components
    from reangle.models.family import load_sampler
    from reangle.models.lora import lora_state_dict

    transformer = load_components(str(tiny_model_dir), ["transformer"]).transformer
    path, adapted = random_lora_file(transformer, tmp_path / "lora")
    cfg = load_config(["configs/presets/tiny.yaml"], [f"run.cache_dir={tiny_model_dir.parent.parent}",
                                                      "data.height=64", "data.width=96", "model.storage_dtype=fp8"])
    sampler = load_sampler(cfg, path, torch.device("cpu"), offload=False, vae_tiling=False, scheduler_kind="model",
                           progress=False)
    assert fp8_names(sampler.transformer)
    ours, theirs = lora_state_dict(sampler.transformer), lora_state_dict(adapted)
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_stage3_with_fp8_flux_and_controlnet_is_the_rounded_weights_stage3(tiny_model_dir):
    from reangle.inpaint.multiview import InpaintSettings, ViewInput, inpaint_views
    from reangle.inpaint.run import load_models

    overrides = [f"run.cache_dir={tiny_model_dir.parent.parent}", "data.height=64", "data.width=96"]
    prompt = "a colour ramp"
    g = torch.Generator().manual_seed(5)
    image, visible = torch.rand(3, 64, 64, generator=g), torch.ones(64, 64)
    visible[:, :20] = 0
    settings = InpaintSettings(steps=2, candidates=2, size=64)
    images, models = [], []
    for storage in ("fp8", "null"):
        cfg = load_config(["configs/presets/tiny.yaml"], [*overrides, f"inpaint.storage_dtype={storage}"])
        inpainter, met3r = load_models(cfg, torch.device("cpu"), [prompt])
        models.append(inpainter)
        if storage == "null":  # the reference: the stored layers' weights rounded through fp8
            for net, stored in ((inpainter.pipe.transformer, models[0].pipe.transformer),
                                (inpainter.controlnet, models[0].controlnet)):
                round_through_fp8(net, fp8_names(stored))
        views = [ViewInput("a", image, visible, prompt), ViewInput("b", image.flip(-1), visible.flip(-1), prompt)]
        images.append(torch.stack([o.image for o in inpaint_views(inpainter, met3r, views, settings, progress=False)]))
    stored = models[0]
    assert fp8_names(stored.pipe.transformer) and fp8_names(stored.controlnet)
    assert not fp8_names(models[1].pipe.transformer)
    assert stored.pipe.text_encoder is None and stored.pipe.text_encoder_2 is None  # released after the prompt
    assert torch.isfinite(images[0]).all() and (images[0] - images[1]).abs().max() <= 1e-5
    with pytest.raises(RuntimeError, match="encode_prompts"):
        stored.condition(image[None], visible[None, None], "another prompt")


def test_storage_dtype_keys_take_null_or_fp8_only():
    assert CHOICES["model.storage_dtype"] == CHOICES["inpaint.storage_dtype"] == (None, *STORAGE_DTYPES)
    assert load_config(["configs/presets/tiny.yaml"], ["model.storage_dtype=fp8"]).model.storage_dtype == "fp8"
    for key in ("model.storage_dtype", "inpaint.storage_dtype"):
        with pytest.raises(ConfigError, match=key.replace(".", r"\.") + ".*null, fp8"):
            load_config(["configs/presets/tiny.yaml"], [f"{key}=bf16"])
    with pytest.raises(ValueError, match="storage dtype"):
        store_weights(torch.nn.Linear(2, 2), "int4", torch.float32)



@pytest.mark.parametrize("preset,model,inpaint", [("24gb", "fp8", None), ("48gb", None, None), ("80gb", "fp8", None)])
def test_gpu_presets_store_what_the_readme_says(preset, model, inpaint):
    cfg = load_config(["configs/presets/tiny.yaml", f"configs/gpu/{preset}.yaml"])
    assert (cfg.model.storage_dtype, cfg.inpaint.storage_dtype) == (model, inpaint)


def test_wan_spec_stores_its_frozen_transformer_in_fp8_too(tiny_wan_dir):
    from reangle.models.wan_i2v import WanI2V

    spec = WanI2V("tiny", cache_dir=str(tiny_wan_dir.parent.parent), weights_dtype="fp32", lora_rank=4, lora_alpha=4)
    spec.storage_dtype = "fp8"
    t = spec.load_diffusion_model()
    names = fp8_names(t)
    assert any(n.endswith("attn1.to_q.base_layer.weight") for n in names)
    assert not any(n.startswith(("patch_embedding.", "condition_embedder.")) for n in names)  # Wan's skip patterns
    assert all(p.dtype == torch.float32 for p in t.parameters() if p.requires_grad)
    assert compute_dtype(t) == torch.float32


def test_a_tiny_train_run_with_fp8_storage_exports_a_float32_lora_and_samples(tmp_path, tiny_omega, tiny_model_dir):
    import train
    from safetensors.torch import load_file

    train.main(["--config", "configs/presets/tiny.yaml", "data.height=64", "data.width=96", f"train.omega={tiny_omega}",
                f"run.root={tmp_path}", "run.name=fp8", f"run.cache_dir={tiny_model_dir.parent.parent}",
                "train.steps=2", "train.gradient_checkpointing=true", "sample.steps=1", "inpaint.steps=2",
                "model.storage_dtype=fp8", "inpaint.storage_dtype=fp8"])
    run = tmp_path / "fp8"
    lora = load_file(run / "lora" / "final" / "pytorch_lora_weights.safetensors")
    assert lora and all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in lora.values())
    assert any(v.abs().sum() > 0 for k, v in lora.items() if "lora_B" in k)  # trained
    assert (run / "start_frames" / "scores.json").is_file() and list((run / "samples").glob("*.mp4"))
