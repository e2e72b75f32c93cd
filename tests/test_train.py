"""train.py end to end on the tiny model: LoRA export loads in diffusers, resume is exact."""
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import train
from callbacks.progress import StepProgressBar
from reangle.config import config_from_args
from reangle.models.cogvideox import COMPONENTS, load_components
from reangle.training import build


def _args(tmp_path, tiny_omega, tiny_model_dir, name, *extra):
    return ["--config", "configs/presets/tiny.yaml", "data.height=64", "data.width=96", f"train.omega={tiny_omega}",
            f"run.root={tmp_path}", f"run.name={name}", f"run.cache_dir={tiny_model_dir.parent.parent}", *extra]


def _lora(run_dir):
    return load_file(str(Path(run_dir) / "lora" / "final" / "pytorch_lora_weights.safetensors"))


def test_run_writes_a_lora_that_the_diffusers_pipeline_loads_and_that_changes_its_output(
        tmp_path, tiny_omega, tiny_model_dir):
    trainer = train.main(_args(tmp_path, tiny_omega, tiny_model_dir, "e2e", "train.lr=1e-2"))
    run = tmp_path / "e2e"
    assert trainer.global_step == 4 and isinstance(trainer.progress_bar_callback, StepProgressBar)
    assert (run / "config.yaml").is_file() and (run / "logs" / "version_0" / "metrics.csv").is_file()
    assert json.loads((run / "omega.json").read_text())["path"] == str(Path(tiny_omega).resolve())
    assert sorted(p.name for p in (run / "lora").iterdir()) == ["final", "step-000002", "step-000004"]
    metrics = (run / "logs" / "version_0" / "metrics.csv").read_text().splitlines()[0].split(",")
    assert {"train/loss", "lr-AdamW", "perf/step_s", "perf/peak_memory_gb"} <= set(metrics)
    # checkpoints hold the LoRA weights only
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert ckpt["state_dict"] and all(".lora_" in k for k in ckpt["state_dict"])

    pipe = load_components(str(tiny_model_dir), COMPONENTS).pipeline()
    kwargs = dict(image=torch.rand(3, 64, 96, generator=torch.Generator().manual_seed(1)), prompt="a colour ramp",
                  num_frames=9, height=64, width=96, num_inference_steps=2, output_type="pt")
    base = pipe(**kwargs, generator=torch.Generator().manual_seed(0)).frames
    pipe.load_lora_weights(str(run / "lora" / "final"))
    tuned = pipe(**kwargs, generator=torch.Generator().manual_seed(0)).frames
    assert (tuned - base).abs().max() > 1e-4
    exported = _lora(run)
    assert all(k.startswith("transformer.") for k in exported) and any(v.abs().sum() > 0 for k, v in exported.items()
                                                                        if "lora_B" in k)


class _Killed(RuntimeError):
    pass


class _KillAt:
    """A callback that stops the process (an exception) before optimizer step ``step``."""

    def __new__(cls, step):
        import lightning as L

        class Kill(L.Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                if trainer.global_step == step:
                    raise _Killed(f"killed at step {step}")

        return Kill()


def _fit(argv, callbacks=()):
    cfg = config_from_args(train.parse_args(argv))
    import lightning as L

    L.seed_everything(cfg.run.seed)
    spec = build.build_spec(cfg)
    trainer = build.build_trainer(cfg, [*train.training_callbacks(cfg), *callbacks])
    trainer.fit(build.build_module(cfg, spec), datamodule=build.build_datamodule(cfg, spec),
                ckpt_path=build.resume_path(cfg))
    return trainer


def test_a_killed_and_resumed_run_ends_with_the_weights_of_an_uninterrupted_one(tmp_path, tiny_omega, tiny_model_dir):
    common = ("train.steps=5", "train.checkpoint_every=1", "train.image_dropout=0.5", "train.lr=1e-2")
    _fit(_args(tmp_path, tiny_omega, tiny_model_dir, "straight", *common))
    with pytest.raises(_Killed):  # after the checkpoint of step 3, in the middle of the second epoch
        _fit(_args(tmp_path, tiny_omega, tiny_model_dir, "killed", *common), [_KillAt(3)])
    assert not (tmp_path / "killed" / "lora" / "final").exists()
    assert torch.load(tmp_path / "killed" / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 3
    _fit(_args(tmp_path, tiny_omega, tiny_model_dir, "killed", *common, "train.resume=last"))
    straight, resumed = _lora(tmp_path / "straight"), _lora(tmp_path / "killed")
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[k], resumed[k]) for k in straight)
    # and the interruption mattered: the step-3 LoRA differs from the final one
    step3 = load_file(str(tmp_path / "killed" / "lora" / "step-000003" / "pytorch_lora_weights.safetensors"))
    assert any(not torch.equal(step3[k], resumed[k]) for k in step3)
