"""train.py end to end on the tiny model as a researcher uses it: running twice into one folder,
resuming after a kill, SIGTERM, and a diverging loss."""
import json
import os
import signal
from pathlib import Path

import lightning as L
import pytest
import torch

import train
from reangle.run_folder import RunFolderError
from reangle.training.module import DivergedError


def _args(tmp_path, tiny_omega, tiny_model_dir, *extra):
    return ["--config", "configs/presets/tiny.yaml", "data.height=64", "data.width=96", f"train.omega={tiny_omega}",
            f"run.root={tmp_path}", "run.name=r", f"run.cache_dir={tiny_model_dir.parent.parent}", "train.steps=2",
            "train.checkpoint_every=1", "inpaint.enabled=false", "sample.steps=2", *extra]


def test_a_second_run_into_the_same_folder_is_refused_and_resume_continues_its_own_run(
        tmp_path, tiny_omega, tiny_model_dir):
    train.main(_args(tmp_path, tiny_omega, tiny_model_dir))
    run = tmp_path / "r"
    saved = (run / "config.yaml").read_bytes()
    with pytest.raises(RunFolderError, match=r"another config \(train.lr"):
        train.main(_args(tmp_path, tiny_omega, tiny_model_dir, "train.lr=1e-2"))
    with pytest.raises(RunFolderError, match="continue it with train.resume=last"):
        train.main(_args(tmp_path, tiny_omega, tiny_model_dir))
    assert (run / "config.yaml").read_bytes() == saved
    sample = run / "samples" / "orbit_left_0.json"
    first = json.loads(sample.read_text())
    assert first["run"] == json.loads((run / "run.json").read_text())["fingerprint"]
    sample.unlink()  # as if killed while sampling, before the view was finished
    trainer = train.main(_args(tmp_path, tiny_omega, tiny_model_dir, "train.resume=last"))
    assert trainer.global_step == 2
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["last.ckpt", "step-000001.ckpt",
                                                                        "step-000002.ckpt"]  # no last-v1.ckpt
    assert json.loads(sample.read_text()) == first  # sampled again, the same view of the same run


def test_the_report_lists_what_is_missing(tmp_path, tiny_omega, tiny_model_dir, capsys):
    from reangle.config import config_from_args
    from reangle.data.omega import Omega

    train.main(_args(tmp_path, tiny_omega, tiny_model_dir))
    cfg = config_from_args(train.parse_args(_args(tmp_path, tiny_omega, tiny_model_dir)))
    (tmp_path / "r" / "samples" / "orbit_left_0.mp4").unlink()
    assert train.report(cfg, Omega.load(tiny_omega)) == ["sampled view orbit_left_0"]
    assert "missing: sampled view orbit_left_0" in capsys.readouterr().out


class _Sigterm(L.Callback):
    """Sends this process SIGTERM (as SLURM does) during optimizer step ``step``."""

    def __init__(self, step):
        self.step = step

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_saves_a_checkpoint_and_exits_non_zero_then_resume_finishes(
        tmp_path, tiny_omega, tiny_model_dir, monkeypatch):
    args = _args(tmp_path, tiny_omega, tiny_model_dir, "train.steps=4", "train.checkpoint_every=100")
    callbacks = train.training_callbacks
    monkeypatch.setattr(train, "training_callbacks", lambda cfg: [*callbacks(cfg), _Sigterm(1)])
    with pytest.raises(SystemExit, match="interrupted by SIGTERM at step 2") as exit_:
        train.main(args)
    assert exit_.value.code != 0
    run = tmp_path / "r"
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 2
    assert not (run / "lora" / "final").exists() and not (run / "samples").exists()
    monkeypatch.setattr(train, "training_callbacks", callbacks)
    trainer = train.main([*args, "train.resume=last"])
    assert trainer.global_step == 4 and (run / "lora" / "final").is_dir()
    assert (run / "samples" / "orbit_left_0.mp4").is_file()


# "diverging": an optimizer whose first step leaves a weight infinite (a learning rate of .inf itself is
# refused when the config is read); 1e30: finite weights whose next loss is NaN
@pytest.mark.parametrize("lr, message", [("diverging", "weight tensors .* are not finite after step 1: training stopped"),
                                         ("1e30", "the training loss is nan at step 1: training stopped")])
def test_a_non_finite_loss_stops_training_without_writing_non_finite_weights(
        tmp_path, tiny_omega, tiny_model_dir, lr, message, monkeypatch):
    if lr == "diverging":
        adamw_step = torch.optim.AdamW.step

        def diverging_step(self, *args, **kwargs):
            result = adamw_step(self, *args, **kwargs)
            with torch.no_grad():
                self.param_groups[0]["params"][0].fill_(float("inf"))
            return result

        monkeypatch.setattr(torch.optim.AdamW, "step", diverging_step)
    with pytest.raises(DivergedError, match=message):
        train.main(_args(tmp_path, tiny_omega, tiny_model_dir, f"train.lr={1e-4 if lr == 'diverging' else lr}",
                         "train.grad_clip=null"))
    run = tmp_path / "r"
    assert not (run / "lora" / "final").exists() and not (run / "samples").exists()
    checkpoints = sorted((run / "checkpoints").glob("*.ckpt")) if (run / "checkpoints").exists() else []
    for ckpt in checkpoints:
        assert all(torch.isfinite(v).all() for v in torch.load(ckpt, weights_only=False)["state_dict"].values())
    if lr == "1e30":  # the step-1 weights are huge but finite: kept as the last checkpoint
        assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)["global_step"] == 1
