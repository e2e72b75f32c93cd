"""Bad configs, missing Omega files and corrupt cache entries: clear errors or a rebuild."""
import shutil

import pytest
import torch

import train
from reangle.config import ConfigError, load_config
from reangle.data.datamodule import OmegaDataModule
from reangle.data.omega import OmegaError
from reangle.data.tensor_cache import CacheError, TensorCache
from reangle.models.cogvideox_i2v import CogVideoXI2V
from reangle.training import build


def _cfg(tmp_path, tiny_omega, tiny_model_dir, *extra):
    return load_config(["configs/presets/tiny.yaml"], ["data.height=64", "data.width=96", f"train.omega={tiny_omega}",
                                                        f"run.root={tmp_path}", f"run.cache_dir={tiny_model_dir.parent.parent}",
                                                        *extra])


def test_unknown_training_key_is_named():
    with pytest.raises(ConfigError, match="train.stepz"):
        load_config(["configs/presets/tiny.yaml"], ["data.height=64", "data.width=96", "train.stepz=3"])


def test_bad_values_are_rejected_before_training(tmp_path, tiny_omega, tiny_model_dir):
    with pytest.raises(ValueError, match="normalisation"):
        build.build_module(_cfg(tmp_path, tiny_omega, tiny_model_dir, "train.loss_normalize=mean"),
                           build.build_spec(_cfg(tmp_path, tiny_omega, tiny_model_dir)))
    with pytest.raises(ValueError, match="weight dtype"):
        build.build_spec(_cfg(tmp_path, tiny_omega, tiny_model_dir, "model.weights_dtype=int8"))
    with pytest.raises(ConfigError, match="logger.kind"):
        build.build_loggers(_cfg(tmp_path, tiny_omega, tiny_model_dir, "logger.kind=tensorboard"))
    with pytest.raises(ConfigError, match="checkpoint .* not found"):
        train.main(["--config", "configs/presets/tiny.yaml", "data.height=64", "data.width=96", f"train.omega={tiny_omega}",
                    f"run.root={tmp_path}", "train.resume=last"])


def test_lora_on_missing_modules_is_a_clear_error(tiny_model_dir):
    spec = CogVideoXI2V("tiny", cache_dir=str(tiny_model_dir.parent.parent), weights_dtype="fp32",
                        lora_targets=["no_such_proj"])
    with pytest.raises(ValueError, match="lora.targets"):
        spec.load_diffusion_model()


def test_missing_omega_files_are_named(tmp_path, tiny_omega, tiny_model_dir):
    broken = tmp_path / "omega"
    shutil.copytree(tiny_omega, broken)
    (broken / "orbit_left_0" / "mask.npz").unlink()
    spec = CogVideoXI2V("tiny", cache_dir=str(tiny_model_dir.parent.parent), weights_dtype="fp32")
    with pytest.raises(OmegaError, match="mask.npz"):
        OmegaDataModule(spec, broken, tmp_path / "cache").prepare_data()
    with pytest.raises(OmegaError, match="no view 'nope'"):
        OmegaDataModule(spec, tiny_omega, tmp_path / "cache", views=["nope"]).prepare_data()


def test_corrupt_cache_entries_are_rebuilt_by_prepare_and_refused_by_setup(tmp_path, tiny_omega, tiny_model_dir):
    spec = CogVideoXI2V("tiny", cache_dir=str(tiny_model_dir.parent.parent), weights_dtype="fp32")
    dm = OmegaDataModule(spec, tiny_omega, tmp_path / "cache", batch_size=2)
    dm.prepare_data()
    dm.setup("fit")
    batch = next(iter(dm.train_dataloader()))
    assert batch["video_mean"].shape == (2, 3, 16, 8, 12) and batch["prompt_embeds"].shape == (2, 226, 32)
    assert batch["mask"].shape == (2, 3, 8, 12) and not torch.equal(batch["mask"][0], batch["mask"][1])
    entries = sorted((tmp_path / "cache" / "latents").glob("*.safetensors"))
    assert len(entries) == 2
    good = entries[0].read_bytes()
    entries[0].write_bytes(good[: len(good) // 2])          # truncated: unreadable
    with pytest.raises(CacheError, match="unreadable"):
        OmegaDataModule(spec, tiny_omega, tmp_path / "cache").setup("fit")
    cache = TensorCache(tmp_path / "cache" / "latents")
    key = entries[1].stem
    tensors = cache.load(key, [])
    tensors["video_mean"][0, 0, 0, 0] = float("nan")         # readable but garbage
    cache.save(key, tensors)
    dm2 = OmegaDataModule(spec, tiny_omega, tmp_path / "cache")
    dm2.prepare_data()                                         # rebuilds both
    assert entries[0].read_bytes() == good
    dm2.setup("fit")
    assert all(torch.isfinite(s["video_mean"]).all() for s in dm2.dataset.samples)


def test_cache_entry_under_another_key_is_refused(tmp_path):
    cache = TensorCache(tmp_path)
    cache.save("a", {"x": torch.ones(2)})
    shutil.copy(cache.path("a"), cache.path("b"))
    with pytest.raises(CacheError, match="written for key 'a'"):
        cache.load("b", ["x"])


def test_train_refuses_a_missing_video_before_loading_any_model(tmp_path, monkeypatch):
    from reangle.io.video import VideoError

    def no_model(*args, **kwargs):
        raise AssertionError("the model was loaded before the input video was checked")

    monkeypatch.setattr(train, "build_module", no_model)
    monkeypatch.setattr(train, "build_trainer", no_model)
    with pytest.raises(VideoError, match="not found"):
        train.main(["--config", "configs/presets/tiny.yaml", f"data.video={tmp_path / 'missing.mp4'}",
                    "depth.source=depth_anything", f"run.root={tmp_path}", f"run.cache_dir={tmp_path / 'cache'}"])
