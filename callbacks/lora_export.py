"""Export the LoRA in diffusers format next to every checkpoint and at the end of training.

Folders: ``<dirpath>/step-<global step>/`` at each checkpoint and ``<dirpath>/final/`` when
fitting ends, each holding ``pytorch_lora_weights.safetensors`` for the backbone pipeline's
``load_lora_weights`` (and, for a two-expert Wan2.2-A14B, the low-noise expert's
``pytorch_lora_weights_transformer_2.safetensors``, loaded with ``load_into_transformer_2=True``).
Every rank takes part in gathering the weights (FSDP and DeepSpeed ZeRO-3 shard them); only
global rank 0 writes.
"""
from __future__ import annotations

from pathlib import Path

import lightning as L

from reangle.training.full_params import full_parameters


class LoraExport(L.Callback):
    def __init__(self, dirpath: str | Path):
        self.dirpath = Path(dirpath)
        self._exported_step: int | None = None

    def _export(self, trainer: L.Trainer, pl_module: L.LightningModule, name: str) -> None:
        with full_parameters(trainer.strategy, pl_module):  # collective: every rank
            state = pl_module.spec.lora_state()
        if trainer.is_global_zero:
            pl_module.spec.save_lora(self.dirpath / name, state)

    def on_save_checkpoint(self, trainer, pl_module, checkpoint) -> None:
        if self._exported_step != trainer.global_step:  # "last" and "step-N" are saved at the same step
            self._export(trainer, pl_module, f"step-{trainer.global_step:06d}")
            self._exported_step = trainer.global_step

    def on_train_end(self, trainer, pl_module) -> None:
        self._export(trainer, pl_module, "final")
