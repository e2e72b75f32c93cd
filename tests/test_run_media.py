"""W&B runs hold what a researcher looks for: Omega's preview, stage III's start frames (warped |
inpainted) with their per-step scores, and the final LoRA as an artifact."""
import json
import shutil
import types

import numpy as np
import torch

from callbacks.run_media import RunMedia
from reangle.config import CONFIG_DIR, load_config
from reangle.data.omega import Omega
from reangle.io.video import to_uint8, write_gif, write_image
from reangle.training.wandb_run import wants_lora_artifact


class Recorder:
    """A logger with W&B's media methods that records what it is given."""

    def __init__(self):
        self.calls = []

    def log_video(self, **kwargs):
        self.calls.append(("video", kwargs))

    def log_image(self, **kwargs):
        self.calls.append(("image", kwargs))

    def log_table(self, **kwargs):
        self.calls.append(("table", kwargs))


def _trainer(omega, loggers):
    return types.SimpleNamespace(is_global_zero=True, global_step=4, loggers=loggers,
                                 datamodule=types.SimpleNamespace(omega=lambda: omega))


def test_omega_preview_and_start_frames_with_scores_are_logged(tmp_path, tiny_omega):
    omega = Omega.load(shutil.copytree(tiny_omega, tmp_path / "omega"))
    preview = write_gif(torch.rand(3, 3, 16, 16), omega.root / "preview.gif")
    run_dir = tmp_path / "run"
    view = omega.views[1].name
    inpainted = torch.rand(3, omega.height, omega.width)
    write_image(inpainted, run_dir / "start_frames" / f"{view}.png")
    (run_dir / "start_frames" / "scores.json").write_text(json.dumps(
        {"inpainter": "controlnet", "views": {view: {"scores": [0.3, None, 0.1], "searched_with": []}}}))
    recorder, csv_like = Recorder(), types.SimpleNamespace()
    media = RunMedia(run_dir)
    media.on_train_start(_trainer(omega, [recorder, csv_like]), None)
    media.on_train_end(_trainer(omega, [recorder, csv_like]), None)
    kinds = [kind for kind, _ in recorder.calls]
    assert kinds == ["video", "image", "table"]
    video, image, table = (kwargs for _, kwargs in recorder.calls)
    assert video["key"] == "omega/preview" and video["videos"] == [str(preview)]
    assert image["key"] == "stage3/start_frames" and image["caption"] == [f"{view}: warped | inpainted"]
    pair, = image["images"]
    warped = to_uint8(omega.read_frames(omega.view(view))[:1])[0]
    assert pair.shape == (omega.height, 2 * omega.width, 3)
    assert np.array_equal(pair[:, :omega.width], warped)
    assert np.array_equal(pair[:, omega.width:], to_uint8(inpainted[None])[0])
    assert table["key"] == "stage3/scores" and table["data"] == [[view, 0, 0.3], [view, 1, None], [view, 2, 0.1]]


def test_the_final_lora_is_a_wandb_artifact(tmp_path, tiny_omega):
    run_dir = tmp_path / "run"
    (run_dir / "lora" / "final").mkdir(parents=True)
    (run_dir / "lora" / "final" / "pytorch_lora_weights.safetensors").write_bytes(b"weights")
    logged = []
    run = types.SimpleNamespace(id="lora0001", log_artifact=logged.append)  # a W&B run's artifact interface
    logger = types.SimpleNamespace(experiment=run)
    csv_like = types.SimpleNamespace(experiment=types.SimpleNamespace())
    RunMedia(run_dir, lora_artifact=False).on_train_end(_trainer(Omega.load(tiny_omega), [logger, csv_like]), None)
    assert logged == []
    RunMedia(run_dir, lora_artifact=True).on_train_end(_trainer(Omega.load(tiny_omega), [logger, csv_like]), None)
    artifact, = logged
    assert artifact.name == "lora-lora0001" and artifact.type == "model"
    assert set(artifact.manifest.entries) == {"pytorch_lora_weights.safetensors"}
    assert artifact.metadata["global_step"] == 4


def test_lora_artifact_defaults_to_online_runs_only():
    def logger(*overrides):
        return load_config([CONFIG_DIR / "presets" / "tiny.yaml"], list(overrides)).logger

    assert not wants_lora_artifact(logger())  # csv
    assert not wants_lora_artifact(logger("logger.kind=wandb", "logger.wandb_mode=offline"))
    assert wants_lora_artifact(logger("logger.kind=wandb", "logger.wandb_mode=offline", "logger.lora_artifact=true"))
    assert wants_lora_artifact(logger("logger.kind=wandb", "logger.wandb_mode=online"))
    assert not wants_lora_artifact(logger("logger.kind=wandb", "logger.wandb_mode=online", "logger.lora_artifact=false"))
