"""Save a checkpoint when SIGTERM stops training (SLURM sends it before preemption and at the time limit).

Lightning turns SIGTERM into ``SIGTERMException`` at the next step boundary; this callback then
writes ``<dirpath>/last.ckpt`` (the step just finished; the LoRA export of that step follows it),
so ``train.resume=last`` continues from there. ``train.py`` exits non-zero after it: an
interrupted run is never reported as finished. Other exceptions (e.g. a diverged loss) write
nothing, so the last checkpoint keeps the last good weights.
"""
from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.utilities.exceptions import SIGTERMException


class SigtermCheckpoint(L.Callback):
    def __init__(self, dirpath: str | Path):
        self.dirpath = Path(dirpath)

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, SIGTERMException):
            trainer.save_checkpoint(self.dirpath / "last.ckpt")
