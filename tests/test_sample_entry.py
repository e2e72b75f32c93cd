"""train.py samples through the callback; sample.py samples a run directory or a config + LoRA;
sharding over ranks and seeds make each view's video independent of the rank; clear errors."""
import json

import pytest
import torch
from omegaconf import OmegaConf

import sample
import train
from reangle.config import load_config
from reangle.io.video import read_video
from reangle.models.lora import LoraFileError
from reangle.sampling.plan import SamplingInputError

TINY = ["--config", "configs/presets/tiny.yaml"]


@pytest.fixture(scope="module")
def run_dir(tiny_omega, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    train.main([*TINY, f"run.root={root}", f"run.cache_dir={root}/cache", f"train.omega={tiny_omega}",
                "data.height=64", "data.width=96", "train.steps=2", "train.checkpoint_every=2", "sample.steps=2",
                "sample.every_n_steps=1", "sample.views=[input,orbit_left_0]"])
    return root / "tiny"


def test_training_samples_every_k_steps_and_at_the_end(run_dir):
    for folder in (run_dir / "samples" / "step_000001", run_dir / "samples"):
        for name in ("input", "orbit_left_0"):
            assert read_video(folder / f"{name}.mp4", 9, 64, 96).shape == (9, 3, 64, 96)
        assert (folder / "grid.mp4").is_file() and (folder / "grid.gif").is_file()
    # mid-training samples start from the warped frame; stage III runs at train end, before the final samples
    early = json.loads((run_dir / "samples" / "step_000001" / "orbit_left_0.json").read_text())
    assert early["start_frame_source"] == "warped_first_frame"
    meta = json.loads((run_dir / "samples" / "orbit_left_0.json").read_text())
    assert meta["start_frame_source"] == "inpainted" and meta["settings"]["steps"] == 2
    assert meta["global_step"] == 2 and meta["camera"]["K"][0][0] == 60.0


def test_sample_py_from_a_run_directory(run_dir, tmp_path):
    out = tmp_path / "out"
    result = sample.main(["--run", str(run_dir), "--views", "orbit_left_0", f"sample.out_dir={out}",
                          "sample.steps=2", "sample.scheduler=dpm", "sample.guidance=4.5"])
    assert [v.name for v in result.views] == ["orbit_left_0"]
    meta = json.loads((out / "orbit_left_0.json").read_text())
    assert meta["lora"].endswith("lora/final/pytorch_lora_weights.safetensors")
    assert meta["settings"]["scheduler"] == "CogVideoXDPMScheduler" and meta["settings"]["guidance"] == 4.5
    assert (out / "grid.gif").is_file()


def test_a_views_video_does_not_depend_on_the_rank_that_made_it(run_dir, tmp_path):
    """Two ranks (simulated one after the other) each make one view; the videos equal a one-rank run's."""
    from reangle.models.cogvideox import COMPONENTS, load_components
    from reangle.models.lora import load_lora
    from reangle.sampling.multiview import sample_views
    from reangle.sampling.plan import plan_views
    from reangle.sampling.run import find_omega
    from reangle.sampling.sampler import CogVideoXSampler, SamplingSettings

    cfg = load_config([run_dir / "config.yaml"])
    omega = find_omega(cfg)
    jobs = plan_views(omega, "static", 7, ["input", "orbit_left_0"])
    parts = load_components(cfg.model.pretrained, COMPONENTS, tiny=OmegaConf.to_container(cfg.model.tiny), cache_dir=cfg.run.cache_dir)
    load_lora(parts.transformer, run_dir / "lora" / "final" / "pytorch_lora_weights.safetensors")

    def run(rank, world, order):
        sampler = CogVideoXSampler(parts.transformer, parts.vae, parts.scheduler, parts.text_encoder,
                                   parts.tokenizer, progress=False)
        res = sample_views(sampler, [jobs[i] for i in order], SamplingSettings(steps=2), 9,
                           tmp_path / f"{rank}-{world}-{order[0]}", 8, rank=rank, world_size=world)
        return {v.name: v.frames for v in res.views}

    single = run(0, 1, [1, 0])
    sharded = {**run(0, 2, [0, 1]), **run(1, 2, [0, 1])}
    assert sorted(sharded) == sorted(single) == ["input", "orbit_left_0"]
    for name in single:
        assert (torch.from_numpy(single[name]).int() - torch.from_numpy(sharded[name]).int()).abs().max() == 0
    assert (single["input"] != single["orbit_left_0"]).any()


def test_sample_py_bad_inputs_give_clear_errors(run_dir, tmp_path):
    with pytest.raises(SamplingInputError, match="run directory not found"):
        sample.main(["--run", str(tmp_path / "nope")])
    with pytest.raises(LoraFileError, match="LoRA file not found"):
        sample.main(["--config", str(run_dir / "config.yaml"), "--lora", str(tmp_path / "missing.safetensors")])
    with pytest.raises(SamplingInputError, match="unknown view name"):
        sample.main(["--run", str(run_dir), "--views", "orbit_up_9"])
    with pytest.raises(SamplingInputError, match="start frame of view 'orbit_left_0' not found"):
        sample.main(["--run", str(run_dir), f"sample.start_frames.orbit_left_0={tmp_path}/none.png"])
    empty = tmp_path / "empty_run"
    (empty / "lora").mkdir(parents=True)
    (empty / "config.yaml").write_text((run_dir / "config.yaml").read_text())
    with pytest.raises(LoraFileError, match="has no exported LoRA"):
        sample.main(["--run", str(empty)])
