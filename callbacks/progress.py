"""Training progress as optimizer steps out of ``train.steps`` (one bar for the whole fit).

Lightning's default bars count batches per epoch and label them ``Epoch i/max_epochs - 1``,
which reads ``Epoch 0/-2`` for a run bounded by steps (``max_epochs=-1``).
"""
from __future__ import annotations

import sys

from lightning.pytorch.callbacks import TQDMProgressBar
from lightning.pytorch.callbacks.progress.tqdm_progress import Tqdm, convert_inf


class StepProgressBar(TQDMProgressBar):
    """``training: <global step>/<max_steps>`` with the logged metrics; a resumed run starts at its step."""

    def on_train_start(self, trainer, pl_module) -> None:
        # built with its total and name, so no "Training: 0/?" bar is printed before it
        self.train_progress_bar = Tqdm(desc="training", total=convert_inf(trainer.max_steps if trainer.max_steps > 0
                                                                          else None),
                                       initial=trainer.global_step, position=2 * self.process_position,
                                       disable=self.is_disabled, leave=True, dynamic_ncols=True, file=sys.stdout,
                                       smoothing=0, bar_format=self.BAR_FORMAT)

    def on_train_epoch_start(self, trainer, *_) -> None:
        pass  # one bar across epochs

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        bar = self.train_progress_bar
        if bar is not None and not bar.disable and self._should_update(trainer.global_step, bar.total):
            bar.n = trainer.global_step
            bar.set_postfix(self.get_metrics(trainer, pl_module))  # refreshes the bar

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        pass  # the bar stays open until training ends
