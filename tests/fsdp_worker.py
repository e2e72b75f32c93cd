"""Run by test_fsdp.py as ``python tests/fsdp_worker.py OUT.json key=value ...``: a two-process CPU
(gloo) FSDP fit of the tiny model with the fsdp preset (each transformer block its own unit,
activation checkpointing), the LoRA export and sampling at the end. Rank 0 writes to OUT.json
the largest difference between the exported LoRA and torch's own full state dict of the
sharded model, and the shapes it exported."""
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import lightning as L  # noqa: E402
from safetensors.torch import load_file  # noqa: E402
from torch.distributed.checkpoint import FileSystemReader  # noqa: E402

import train  # noqa: E402
from callbacks.video_sampling import VideoSampling  # noqa: E402
from reangle.config import load_config, save_config  # noqa: E402
from reangle.training import build  # noqa: E402


class FullStateDict(L.Callback):
    """torch's FULL_STATE_DICT of the sharded model after training (every rank; the reference)."""

    def __init__(self):
        self.state = None

    def on_train_end(self, trainer, pl_module):
        from torch.distributed.fsdp import FullStateDictConfig, FullyShardedDataParallel, StateDictType

        config = FullStateDictConfig(offload_to_cpu=True, rank0_only=False)
        with FullyShardedDataParallel.state_dict_type(trainer.strategy.model, StateDictType.FULL_STATE_DICT, config):
            self.state = {k: v.clone() for k, v in trainer.strategy.model.state_dict().items() if "lora_" in k}


if __name__ == "__main__":
    out, overrides = sys.argv[1], sys.argv[2:]
    cfg = load_config([ROOT / "configs/presets/tiny.yaml", ROOT / "configs/strategy/fsdp.yaml"],
                      ["trainer.strategy.target=cpu_fsdp.CPUFSDPStrategy", *overrides])
    L.seed_everything(cfg.run.seed)
    if int(os.environ.get("LOCAL_RANK", 0)) == 0:
        save_config(cfg, cfg.run.dir)  # for sample.py --run
    spec = build.build_spec(cfg)
    reference = FullStateDict()
    trainer = build.build_trainer(cfg, [reference, *train.training_callbacks(cfg), VideoSampling.from_config(cfg)])
    trainer.fit(build.build_module(cfg, spec), datamodule=build.build_datamodule(cfg, spec))
    if trainer.is_global_zero:
        exported = load_file(str(Path(cfg.run.dir) / "lora" / "final" / "pytorch_lora_weights.safetensors"))
        # torch's names: net.<module>.lora_A.default.weight; the export's: transformer.<module>.lora_A.weight
        expected = {"transformer." + k.removeprefix("net.").replace(".default.", "."): v
                    for k, v in reference.state.items()}
        Path(out).write_text(json.dumps({
            "world_size": trainer.world_size, "steps": trainer.global_step,
            "same_keys": sorted(exported) == sorted(expected),
            "max_diff": max((exported[k] - expected[k]).abs().max().item() for k in expected),
            "trained": any(v.abs().sum().item() > 0 for k, v in exported.items() if "lora_B" in k),
            "shapes": {k: list(v.shape) for k, v in exported.items()},
            "checkpoint_keys": sorted(FileSystemReader(Path(cfg.run.dir) / "checkpoints" / "last.ckpt")
                                      .read_metadata().state_dict_metadata),
            "trainable_keys": sorted(trainer.lightning_module.trainable_keys())}))
