"""``python train.py --config configs/presets/tiny_wan.yaml`` end to end on the CPU (stages I-III, sampling,
LoRA export) and the exported Wan LoRA checked with diffusers alone; sample.py's path samples it again."""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import train
from reangle.config import load_run_config
from reangle.models.wan import load_wan_components
from reangle.sampling.run import run_files, sample_from_config


def output_change(pipe, load_lora, **extra) -> float:
    """Max abs change of the stock pipeline's 9 x 64 x 96 output (2 steps, seeded) once ``load_lora(pipe)``
    has loaded the exported LoRA: diffusers alone."""
    pipe.set_progress_bar_config(disable=True)
    image = Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 96, 3), dtype=np.uint8))
    kwargs = dict(image=image, prompt="a colour ramp", num_frames=9, height=64, width=96, num_inference_steps=2,
                  output_type="pt", **extra)
    base = pipe(**kwargs, generator=torch.Generator().manual_seed(0)).frames
    load_lora(pipe)
    tuned = pipe(**kwargs, generator=torch.Generator().manual_seed(0)).frames
    return float((tuned - base).abs().max())


def test_tiny_wan_preset_runs_every_stage_and_exports_a_lora_the_wan_pipeline_loads(tmp_path, tiny_wan_dir):
    cache = tiny_wan_dir.parent.parent
    trainer = train.main(["--config", "configs/presets/tiny_wan.yaml", f"run.root={tmp_path}", "run.name=wan",
                          f"run.cache_dir={cache}", "train.lr=1e-2"])
    run = tmp_path / "wan"
    assert trainer.global_step == 4
    views = ["orbit_left_00", "orbit_right_00", "orbit_up_00", "orbit_down_00", "dolly_in_00", "dolly_out_00"]
    assert sorted(p.stem for p in (run / "start_frames").glob("*.png")) == sorted(views)   # stage III
    for view in views:                                                                  # sampling at train end
        meta = json.loads((run / "samples" / f"{view}.json").read_text())
        assert meta["start_frame_source"] == "inpainted" and meta["global_step"] == 4
        assert meta["settings"]["num_frames"] == 9 and meta["settings"]["scheduler"] == "UniPCMultistepScheduler"
    lora = run / "lora" / "final" / "pytorch_lora_weights.safetensors"
    exported = load_file(str(lora))
    assert all(k.startswith("transformer.blocks.") and ".attn1." in k for k in exported)   # the preset's targets
    assert any(v.abs().sum() > 0 for k, v in exported.items() if "lora_B" in k)

    # diffusers alone: the stock pipeline over the tiny Wan loads the LoRA and its output changes
    pipe = load_wan_components(str(tiny_wan_dir)).pipeline()
    assert output_change(pipe, lambda p: p.load_lora_weights(str(lora.parent))) > 1e-4

    # sample.py's path (a run directory): the Wan family's sampler with the run's LoRA
    _, run_lora = run_files(run)
    cfg = load_run_config(run, overrides=["sample.steps=2", f"sample.out_dir={tmp_path / 'again'}"])
    result = sample_from_config(cfg, run_lora, views=["orbit_left_00"], progress=False)
    assert [v.name for v in result.views] == ["orbit_left_00"] and result.views[0].frames.shape == (9, 64, 96, 3)


def test_dynamic_mode_trains_and_samples_wan_from_an_existing_omega(tmp_path, tiny_wan_dir):
    from conftest import write_test_omega

    omega = write_test_omega(tmp_path / "omega", mode="dynamic").root
    trainer = train.main(["--config", "configs/presets/tiny_wan.yaml", "mode=dynamic", f"train.omega={omega}",
                          f"run.root={tmp_path}", "run.name=dyn", f"run.cache_dir={tiny_wan_dir.parent.parent}",
                          "train.steps=2", "sample.steps=2"])
    assert trainer.global_step == 2
    meta = json.loads((tmp_path / "dyn" / "samples" / "orbit_left_0.json").read_text())
    assert meta["prompt"].startswith("CAMERA_ORBIT_LEFT") and meta["start_frame_source"] == "input_first_frame"


def test_tiny_wan22_preset_runs_the_pipeline_and_exports_a_lora_the_expand_timesteps_pipeline_loads(
        tmp_path, tiny_wan22_dir):
    """The whole pipeline (stages I-III, sampling, export) on the tiny Wan2.2-TI2V, kept short: two motions,
    two optimizer steps, two sampling steps."""
    trainer = train.main(["--config", "configs/presets/tiny_wan.yaml", "configs/presets/tiny_wan22.yaml",
                          f"run.root={tmp_path}", "run.name=wan22", f"run.cache_dir={tiny_wan22_dir.parent.parent}",
                          "views.motions=[orbit_left,dolly_in]", "train.steps=2", "sample.steps=2", "train.lr=1e-2"])
    run = tmp_path / "wan22"
    assert trainer.global_step == 2
    assert sorted(p.stem for p in (run / "start_frames").glob("*.png")) == ["dolly_in_00", "orbit_left_00"]
    meta = json.loads((run / "samples" / "orbit_left_00.json").read_text())
    assert meta["start_frame_source"] == "inpainted" and meta["settings"]["num_frames"] == 9
    lora = run / "lora" / "final" / "pytorch_lora_weights.safetensors"
    assert all(k.startswith("transformer.blocks.") and ".attn1." in k for k in load_file(str(lora)))

    pipe = load_wan_components(str(tiny_wan22_dir)).pipeline()       # expand_timesteps, no CLIP
    assert pipe.config.expand_timesteps and pipe.image_encoder is None
    assert output_change(pipe, lambda p: p.load_lora_weights(str(lora.parent))) > 1e-4

    _, run_lora = run_files(run)                                   # sample.py's path: no CLIP parts to load
    cfg = load_run_config(run, overrides=["sample.steps=2", f"sample.out_dir={tmp_path / 'again'}"])
    result = sample_from_config(cfg, run_lora, views=["dolly_in_00"], progress=False)
    assert result.views[0].frames.shape == (9, 64, 96, 3)


def test_tiny_wan22_a14b_preset_trains_a_lora_per_expert_and_samples_with_both(tmp_path, tiny_wan22_a14b_dir):
    """The whole pipeline on the tiny two-expert Wan2.2-I2V-A14B, kept short: two motions, four optimizer
    steps, two sampling steps (timesteps 999 and 833: both experts act); each exported file loads into its
    expert of the stock pipeline, and sample.py's path loads both (and needs the second)."""
    from reangle.models.lora import LORA_FILE_2, LoraFileError

    trainer = train.main(["--config", "configs/presets/tiny_wan.yaml", "configs/presets/tiny_wan22_a14b.yaml",
                          f"run.root={tmp_path}", "run.name=a14b", f"run.cache_dir={tiny_wan22_a14b_dir.parent.parent}",
                          "views.motions=[orbit_left,dolly_in]", "train.steps=4", "sample.steps=2", "train.lr=1e-2"])
    run = tmp_path / "a14b"
    assert trainer.global_step == 4
    meta = json.loads((run / "samples" / "orbit_left_00.json").read_text())
    assert meta["start_frame_source"] == "inpainted" and meta["settings"]["num_frames"] == 9
    final = run / "lora" / "final"
    high, low = (load_file(str(final / name)) for name in ("pytorch_lora_weights.safetensors", LORA_FILE_2))
    assert high.keys() == low.keys() and all(k.startswith("transformer.blocks.") and ".attn1." in k for k in high)
    moved = [any(state[k].abs().max() > 0 for k in state if "lora_B" in k) for state in (high, low)]
    assert moved == [True, True]                                  # both experts were trained (B starts at zero)
    stored = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    experts = {k.split(".")[1] for k in stored}                    # net.<expert>.blocks...: both LoRAs, resumable
    assert experts == {"transformer", "transformer_2"} and all("lora_" in k for k in stored)

    pipe = load_wan_components(str(tiny_wan22_a14b_dir)).pipeline()
    assert pipe.config.boundary_ratio == 0.9 and pipe.image_encoder is None

    def load_both(p):
        p.load_lora_weights(str(final))
        p.load_lora_weights(str(final), weight_name=LORA_FILE_2, load_into_transformer_2=True)
        assert p.transformer.peft_config and p.transformer_2.peft_config
    assert output_change(pipe, load_both, guidance_scale=3.5, guidance_scale_2=3.5) > 1e-4

    _, run_lora = run_files(run)                                   # sample.py's path: both files
    cfg = load_run_config(run, overrides=["sample.steps=2", f"sample.out_dir={tmp_path / 'again'}"])
    again = sample_from_config(cfg, run_lora, views=["orbit_left_00"], progress=False)
    assert again.views[0].frames.shape == (9, 64, 96, 3)
    (final / LORA_FILE_2).unlink()                                 # the low-noise LoRA is required, not optional
    with pytest.raises(LoraFileError, match="low-noise"):
        sample_from_config(cfg, run_lora, views=["orbit_left_00"], progress=False)
