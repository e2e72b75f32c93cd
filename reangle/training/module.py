"""The LightningModule of stage II: LoRA fine-tuning with the masked diffusion loss.

Randomness per step (VAE posterior samples, the first frame's pixel noise, timesteps,
noise, image dropout) comes from a generator seeded by ``(seed, global_step, rank)``, so a
resumed run draws exactly what an uninterrupted one would. ``on_fit_start`` loads the
encoders the spec needs during training (the VAE, for the per-step image condition) onto
the training device. Checkpoints hold only the trainable (LoRA) weights; loading
one checks that it holds exactly those, and each carries the run's fingerprint
(``run_id``, see :mod:`reangle.run_folder`). A non-finite loss, or weights that are no longer
finite after an optimizer step, stop training with :class:`DivergedError` before the next
checkpoint: the last checkpoint written holds the last finite weights.
"""
from __future__ import annotations

from typing import Any

import lightning as L
import torch

from reangle.errors import InputError
from reangle.models.spec import ModelSpec
from reangle.run_folder import CHECKPOINT_KEY
from reangle.training.full_params import plain_name
from reangle.training.loss import NORMALIZATIONS, masked_loss


class CheckpointMismatchError(InputError):
    """A checkpoint whose weights are not the trainable weights of this model."""


class DivergedError(InputError):
    """Training produced a non-finite loss or non-finite weights (e.g. a learning rate too high)."""


class Stage2Module(L.LightningModule):
    """Trains the spec's LoRA; ``masked=False`` gives the plain loss (ablation)."""

    def __init__(self, spec: ModelSpec, lr: float = 1e-4, weight_decay: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.95), eps: float = 1e-8, masked: bool = True,
                 loss_normalize: str = "all", seed: int = 42, run_id: str | None = None):
        super().__init__()
        if loss_normalize not in NORMALIZATIONS:
            raise InputError(f"unknown loss normalisation {loss_normalize!r}; use one of {NORMALIZATIONS}")
        self.spec = spec
        self.net = spec.load_diffusion_model()
        self.optim = dict(lr=lr, weight_decay=weight_decay, betas=tuple(betas), eps=eps)
        self.masked, self.loss_normalize, self.seed, self.run_id = masked, loss_normalize, seed, run_id
        self.strict_loading = False  # checkpoints hold the trainable weights only; checked below

    def trainable_keys(self) -> set[str]:
        """Names of the trainable weights as state dicts hold them (without FSDP's wrapper parts)."""
        return {plain_name(name) for name, p in self.named_parameters() if p.requires_grad}

    def configure_optimizers(self):
        params = [p for p in self.parameters() if p.requires_grad]
        if not params:
            raise RuntimeError("the model has no trainable parameters; check lora.targets")
        return torch.optim.AdamW(params, **self.optim)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        """Under FSDP, clip by the norm over all shards with FSDP's own ``clip_grad_norm_`` (a collective;
        Lightning's FSDP precision refuses norm clipping); otherwise Lightning's clipping."""
        from torch.distributed.fsdp import FullyShardedDataParallel

        model = self.trainer.strategy.model
        if gradient_clip_val and isinstance(model, FullyShardedDataParallel):
            model.clip_grad_norm_(gradient_clip_val)
        else:
            super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)

    def on_fit_start(self) -> None:
        self.spec.load_training_encoders(self.device)

    def step_generator(self) -> torch.Generator:
        seed = (self.seed * 1_000_003 + self.global_step * 7_919 + self.global_rank) % (2 ** 63)
        return torch.Generator(device=self.device).manual_seed(seed)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        pair = self.spec.training_pair(batch, self.step_generator())
        mask = pair.loss_mask(batch["mask"] if self.masked else None)
        loss = masked_loss(pair.prediction, pair.target, pair.weight, mask, self.loss_normalize).mean()
        if not torch.isfinite(loss):
            raise DivergedError(f"the training loss is {loss.item()} at step {self.global_step}: training stopped; "
                                f"the last checkpoint holds the last finite weights (lower train.lr or set "
                                f"train.grad_clip)")
        self.log("train/loss", loss, prog_bar=True, batch_size=pair.target.shape[0])
        self.log("train/visible_fraction", batch["mask"].float().mean(), batch_size=pair.target.shape[0])
        return loss

    def optimizer_step(self, *args, **kwargs) -> None:
        super().optimizer_step(*args, **kwargs)
        bad = [name for name, p in self.named_parameters() if p.requires_grad and not torch.isfinite(p).all()]
        if bad:
            raise DivergedError(f"{len(bad)} LoRA weight tensors (e.g. {plain_name(bad[0])}) are not finite after "
                                f"step {self.global_step + 1}: training stopped; the last checkpoint holds the last "
                                f"finite weights (lower train.lr or set train.grad_clip)")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        keep = self.trainable_keys()
        checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k in keep}
        checkpoint[CHECKPOINT_KEY] = self.run_id

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        stored, expected = set(checkpoint.get("state_dict", {})), self.trainable_keys()
        if stored != expected:
            missing, extra = sorted(expected - stored)[:3], sorted(stored - expected)[:3]
            raise CheckpointMismatchError(
                f"checkpoint does not hold this model's LoRA weights (missing e.g. {missing}, unexpected e.g. "
                f"{extra}); resume with the same model and lora settings it was trained with")
