"""Run by test_ddp.py as ``python tests/ddp_worker.py OUT.json key=value ...``: a two-process CPU
(gloo) DDP fit of the tiny model; after each step every rank's LoRA is gathered and rank 0
writes the largest difference between ranks to OUT.json."""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import lightning as L  # noqa: E402
import torch  # noqa: E402

from reangle.config import load_config  # noqa: E402
import train  # noqa: E402
from reangle.training import build  # noqa: E402


class CompareRanks(L.Callback):
    def __init__(self, out):
        self.out, self.diffs, self.visited = out, [], []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        flat = torch.cat([p.detach().flatten() for p in pl_module.parameters() if p.requires_grad])
        gathered = trainer.strategy.all_gather(flat)  # [world, n]
        self.diffs.append((gathered - gathered[0]).abs().max().item())
        self.visited.append(trainer.strategy.all_gather(batch["video_mean"].flatten()[:4]).tolist())

    def on_train_end(self, trainer, pl_module):
        if trainer.is_global_zero:
            Path(self.out).write_text(json.dumps({"world_size": trainer.world_size, "diffs": self.diffs,
                                                  "visited": self.visited, "steps": trainer.global_step}))


if __name__ == "__main__":
    out, overrides = sys.argv[1], sys.argv[2:]
    cfg = load_config([Path(__file__).resolve().parent.parent / "configs/presets/tiny.yaml"], overrides)
    L.seed_everything(cfg.run.seed)
    spec = build.build_spec(cfg)
    trainer = build.build_trainer(cfg, [*train.training_callbacks(cfg), CompareRanks(out)])
    trainer.fit(build.build_module(cfg, spec), datamodule=build.build_datamodule(cfg, spec))
