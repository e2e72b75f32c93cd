#!/usr/bin/env bash
# Launch train.py with torchrun: one process per GPU, on one node or several.
#
#   one node, 4 GPUs:   bash configs/launch/torchrun.sh 4 data.video=clip.mp4 data.prompt="..."
#   two nodes, 8 GPUs each (run on every node, NODE_RANK 0 and 1, MASTER_ADDR = node 0's address):
#     NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 bash configs/launch/torchrun.sh 8 data.video=clip.mp4 ...
#
# CONFIG (default configs/static.yaml) names the config files; trainer.devices and
# trainer.num_nodes are set to match the launch, so Lightning joins torchrun's process group.
set -euo pipefail
GPUS="${1:?usage: torchrun.sh GPUS_PER_NODE [key=value ...]}"
shift
NNODES="${NNODES:-1}"
cd "$(dirname "$0")/../.."
exec "${PYTHON:-python}" -m torch.distributed.run \
    --nnodes="${NNODES}" --node-rank="${NODE_RANK:-0}" --nproc-per-node="${GPUS}" \
    --master-addr="${MASTER_ADDR:-127.0.0.1}" --master-port="${MASTER_PORT:-29500}" \
    train.py --config ${CONFIG:-configs/static.yaml} \
    trainer.devices="${GPUS}" trainer.num_nodes="${NNODES}" "$@"
