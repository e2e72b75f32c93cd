"""train.image_condition: what the latent cache holds for each mode, and the resolved default."""
import torch

from reangle.config import load_config
from reangle.data.omega import Omega
from reangle.training import build


def _config(tmp_path, tiny_omega, tiny_model_dir, *extra):
    return load_config(["configs/presets/tiny.yaml"], ["data.height=64", "data.width=96", f"train.omega={tiny_omega}",
                                                       f"run.root={tmp_path}",
                                                       f"run.cache_dir={tiny_model_dir.parent.parent}", *extra])


def _samples(cfg):
    spec = build.build_spec(cfg)
    data = build.build_datamodule(cfg, spec)
    data.prepare_data()
    data.setup("fit")
    return spec, data.dataset.samples


def test_per_step_is_the_default_and_caches_the_clean_first_frame(tmp_path, tiny_omega, tiny_model_dir):
    cfg = _config(tmp_path, tiny_omega, tiny_model_dir)
    assert cfg.train.image_condition == "per_step"
    spec, samples = _samples(cfg)
    assert set(samples[0]) == {"video_mean", "video_logvar", "first_frame_pm1", "prompt_embeds", "mask"}
    omega = Omega.load(tiny_omega)
    first = omega.read_frames(omega.views[0])[0] * 2 - 1
    assert torch.allclose(samples[0]["first_frame_pm1"][:, 0], first)
    assert spec.image_vae is None  # loaded onto the training device when fitting starts


def test_cached_mode_keeps_one_noisy_image_latent_per_view(tmp_path, tiny_omega, tiny_model_dir):
    spec, samples = _samples(_config(tmp_path, tiny_omega, tiny_model_dir, "train.image_condition=cached"))
    assert set(samples[0]) == {"video_mean", "video_logvar", "image_mean", "image_logvar", "prompt_embeds", "mask"}
    assert samples[0]["image_mean"].shape == (1, 16, 8, 12)
    spec.load_training_encoders(torch.device("cpu"))
    assert spec.image_vae is None  # no VAE during training
    per_step = build.build_spec(_config(tmp_path, tiny_omega, tiny_model_dir))
    assert spec.fingerprint("video") != per_step.fingerprint("video")  # separate cache entries
