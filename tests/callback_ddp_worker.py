"""Run by test_eval_callback.py and test_inpaint_stage.py as
``python tests/callback_ddp_worker.py CALLBACK DEVICES [OMEGA] key=value ...``: a one-step CPU fit of a
trivial module (gloo DDP when DEVICES > 1) whose only callback is CALLBACK, built from the tiny preset
plus the overrides: ``evaluation`` (evaluates eval.samples_dir at the end of training; rank 0 writes
eval.json to eval.out_dir) or ``inpainting`` (ConsistentInpainting on the Omega folder OMEGA; the start
frames land in run.dir/start_frames)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import lightning as L  # noqa: E402
import torch  # noqa: E402

from callbacks.consistent_inpainting import ConsistentInpainting  # noqa: E402
from callbacks.evaluation import Evaluation  # noqa: E402
from reangle.config import load_config  # noqa: E402


class OneParameter(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def training_step(self, batch, batch_idx):
        return (self.weight - batch[0]).square().mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.ones(4, 1)), batch_size=1)


if __name__ == "__main__":
    kind, devices, rest = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    omega, overrides = (rest[0], rest[1:]) if kind == "inpainting" else (None, rest)
    cfg = load_config([Path(__file__).resolve().parent.parent / "configs/presets/tiny.yaml"], overrides)
    callback = ConsistentInpainting(cfg, omega=omega) if kind == "inpainting" else Evaluation(cfg)
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto", max_steps=1,
                        logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, callbacks=[callback])
    trainer.fit(OneParameter())
