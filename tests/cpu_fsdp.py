"""Lightning's FSDP strategy on CPU processes (gloo), for tests only.

Lightning refuses FSDP without a GPU; torch's FSDP runs on the CPU when given
``device_id=cpu``. This subclass wraps the LightningModule that way and lets Lightning do
the rest (nested units, activation checkpointing, sharded checkpoints) as on GPUs.
"""
import torch
from lightning.pytorch.strategies import FSDPStrategy


class CPUFSDPStrategy(FSDPStrategy):
    def _setup_model(self, model):
        from torch.distributed.fsdp import FullyShardedDataParallel

        wrapped = FullyShardedDataParallel(module=model, cpu_offload=self.cpu_offload,
                                           mixed_precision=self.mixed_precision_config,
                                           sharding_strategy=self.sharding_strategy, device_id=torch.device("cpu"),
                                           **self.kwargs)
        return super()._setup_model(wrapped)  # already wrapped: Lightning adds activation checkpointing
