"""The memory plan of one train.py run: each phase keeps on the accelerator only what it uses.

======================  ==========================================================================
stage I (depth)         the depth estimator is a temporary of Omega's build, gone after it
caching                 T5 + VAE: the prompts first, then T5 is released and the VAE encodes the clips;
                        the VAE is unloaded by the data module once the caches are written
training                transformer + LoRA, AdamW states, gradients, the per-step image VAE
train end               :class:`ReleaseTrainingState` drops the AdamW states, the gradients and the
                        spec's training encoders (the LoRA is exported before)
stage III               :func:`parked`: the transformer waits on the CPU while stage III runs: FLUX's
                        T5 + CLIP encode the views' prompts alone on the device and are released, then
                        FLUX + ControlNet + VAE + MEt3R search; all are released when stage III returns
sampling                T5 is released right after the prompts are encoded; transformer, then VAE
evaluation              one metric network at a time (eval.models.release_memory)
======================  ==========================================================================

So the run's peak is the largest phase's, not their sum (benchmarks/full_size.py simulates each).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import lightning as L
import torch

from eval.models import release_memory


class ReleaseTrainingState(L.Callback):
    """At the end of training: drop optimizer states, gradients and the spec's training encoders.
    List it after the callbacks that still need them (LoRA export) and before stage III / sampling."""

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        for optimizer in trainer.optimizers:
            if isinstance(optimizer, torch.optim.Optimizer):
                optimizer.state.clear()
        pl_module.zero_grad(set_to_none=True)
        pl_module.spec.unload_training_encoders()
        release_memory()


@contextlib.contextmanager
def parked(trainer: L.Trainer, module: torch.nn.Module) -> Iterator[None]:
    """``module`` on the CPU for the duration (back on its device after), so another phase gets the
    accelerator. Sharded strategies (FSDP, DeepSpeed) and CPU runs leave it where it is."""
    device = next(module.parameters()).device
    sharded = type(trainer.strategy).__name__.startswith(("FSDP", "DeepSpeed", "ModelParallel"))
    if sharded or device.type == "cpu":
        yield
        return
    module.to("cpu")
    release_memory()
    try:
        yield
    finally:
        release_memory()
        module.to(device)
