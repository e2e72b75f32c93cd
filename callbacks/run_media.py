"""What a researcher looks for in the run's logger (W&B) besides losses and samples.

* when training starts: Omega's preview, the warped views in one grid (``omega/preview``);
* when training ends, after stage III (list it after
  :class:`callbacks.consistent_inpainting.ConsistentInpainting`): each view's warped first frame
  beside its inpainted start frame (``stage3/start_frames``: warped | inpainted) and the chosen
  MEt3R score of every step (``stage3/scores``: view, step, score);
* when training ends, after the LoRA export (list it after :class:`callbacks.lora_export.LoraExport`):
  the final LoRA folder as a W&B artifact of type ``model`` (``lora_artifact``).

Loggers without ``log_video`` / ``log_image`` / ``log_table`` (CSV) are skipped; only global
rank 0 logs.
"""
from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import numpy as np

from reangle.data.omega import INPUT_VIEW
from reangle.inpaint.run import SCORES_FILE
from reangle.io.video import to_uint8
from reangle.sampling.plan import INPAINTED_DIR

PREVIEWS = ("preview.mp4", "preview.gif")


class RunMedia(L.Callback):
    """``run_dir``: the run directory (``start_frames/``, ``lora/final``); ``lora_artifact``: log the
    final LoRA as a W&B artifact."""

    def __init__(self, run_dir: str | Path, lora_artifact: bool = False):
        self.run_dir, self.lora_artifact = Path(run_dir), lora_artifact

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or not hasattr(trainer.datamodule, "omega"):
            return
        root = trainer.datamodule.omega().root
        preview = next((root / name for name in PREVIEWS if (root / name).is_file()), None)
        for logger in trainer.loggers:
            if preview is not None and hasattr(logger, "log_video"):
                logger.log_video(key="omega/preview", videos=[str(preview)], step=trainer.global_step,
                                 caption=["Omega: the input and the warped views"])

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        self._log_start_frames(trainer)
        if self.lora_artifact:
            self._log_lora(trainer)

    def _log_start_frames(self, trainer: L.Trainer) -> None:
        folder = self.run_dir / INPAINTED_DIR
        if not (folder / SCORES_FILE).is_file() or not hasattr(trainer.datamodule, "omega"):
            return
        from PIL import Image

        omega = trainer.datamodule.omega()
        views = json.loads((folder / SCORES_FILE).read_text())["views"]
        pairs, captions, rows = [], [], []
        for name, record in views.items():
            if name == INPUT_VIEW or not (folder / f"{name}.png").is_file():
                continue
            warped = to_uint8(omega.read_frames(omega.view(name))[:1])[0]
            inpainted = np.asarray(Image.open(folder / f"{name}.png").convert("RGB"))
            pairs.append(np.concatenate([warped, inpainted], axis=1))
            captions.append(f"{name}: warped | inpainted")
            rows += [[name, step, score] for step, score in enumerate(record.get("scores") or [])]
        for logger in trainer.loggers:
            if pairs and hasattr(logger, "log_image"):
                logger.log_image(key="stage3/start_frames", images=pairs, caption=captions, step=trainer.global_step)
            if rows and hasattr(logger, "log_table"):
                logger.log_table(key="stage3/scores", columns=["view", "step", "met3r"], data=rows,
                                 step=trainer.global_step)

    def _log_lora(self, trainer: L.Trainer) -> None:
        lora = self.run_dir / "lora" / "final"
        if not lora.is_dir():
            return
        for logger in trainer.loggers:
            run = getattr(logger, "experiment", None)
            if hasattr(run, "log_artifact"):
                import wandb

                artifact = wandb.Artifact(f"lora-{run.id}", type="model",
                                          metadata={"global_step": trainer.global_step, "run_dir": str(self.run_dir)})
                artifact.add_dir(str(lora))
                run.log_artifact(artifact)
