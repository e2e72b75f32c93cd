"""The training bar counts optimizer steps out of max_steps across epochs (not 'Epoch 0/-2')."""
import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from callbacks.progress import StepProgressBar


class _Regression(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        loss = self.layer(batch[0]).pow(2).mean()
        self.log("train/loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def test_bar_shows_steps_out_of_max_steps_across_epochs(capsys):
    bar = StepProgressBar()
    trainer = L.Trainer(accelerator="cpu", max_steps=5, max_epochs=-1, callbacks=[bar], logger=False,
                        enable_checkpointing=False, enable_model_summary=False)
    data = DataLoader(TensorDataset(torch.rand(4, 2)), batch_size=2)  # two batches per epoch: three epochs
    trainer.fit(_Regression(), data)
    out = capsys.readouterr().out
    assert trainer.progress_bar_callback is bar and trainer.current_epoch >= 2
    assert bar.train_progress_bar.total == 5 and bar.train_progress_bar.n == 5
    assert "training: 100%" in out and "5/5" in out and "train/loss" in out
    assert "Epoch" not in out and "/-2" not in out
    assert "0/?" not in out and "Training" not in out  # no bar of unknown length before the real one
