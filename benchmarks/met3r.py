"""MEt3R throughput and peak memory at 256 x 256; prints one JSON object.

CPU: tiny random-weight DUSt3R / DINO / FeatUp configs (the full-size models with
``--full-cpu``). GPU (when CUDA is available): the full-size architectures (DUSt3R
ViT-L/512 DPT, DINO ViT-S/16 + FeatUp JBU) with random weights.

Each setting runs in a fresh subprocess, scoring ``--pairs`` pairs in chunks of
``max_pairs_per_chunk``; chunk 1 (one pair at a time) is the baseline. Reported:
pairs scored per second (after one warm-up call) and the peak memory the scoring
adds on top of the loaded models (CPU: peak RSS growth; GPU: peak allocated).

    python benchmarks/met3r.py [--pairs 8] [--chunks 1 4 8] [--full-cpu]
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time

from peak_memory import PeakMemory

TINY_DUST3R = dict(
    enc_embed_dim=64, enc_depth=2, enc_num_heads=2, dec_embed_dim=64, dec_depth=2, dec_num_heads=2,
    head_type="linear", img_size=(256, 256),
)
TINY_FEATUP = {"dino": {"embed_dim": 64, "depth": 2, "num_heads": 1}, "key_dim": 8}


def run_one(device: str, full: bool, pairs: int, chunk: int) -> dict:
    """Score ``pairs`` random pairs with one setting (runs in its own process)."""
    import torch

    from reangle.consistency import load_met3r
    from reangle.nets.dust3r import PRESETS

    torch.manual_seed(0)
    point = dict(PRESETS["DUSt3R_ViTLarge_BaseDecoder_512_dpt"]) if full else TINY_DUST3R
    featup = {"dino": {"arch": "vit_small"}} if full else TINY_FEATUP
    metric = load_met3r(point_source=point, featup_source=featup, device=device, max_pairs_per_chunk=chunk)
    images = torch.rand(pairs, 2, 3, 256, 256, device=device) * 2 - 1
    with torch.no_grad():
        metric(images[:1])  # warm-up
        memory = PeakMemory(device)
        memory.start()
        start = time.perf_counter()
        scores = metric(images)
        peak_mb = memory.extra_mb()
        seconds = time.perf_counter() - start
    return {
        "device": device, "models": "full-size" if full else "tiny", "pairs": pairs,
        "max_pairs_per_chunk": chunk, "seconds": round(seconds, 3),
        "pairs_per_s": round(pairs / seconds, 3), "peak_extra_mb": round(peak_mb, 1),
        "score_mean": round(float(scores.mean()), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--chunks", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--full-cpu", action="store_true", help="also time the full-size models on the CPU")
    parser.add_argument("--one", nargs=4, metavar=("DEVICE", "FULL", "PAIRS", "CHUNK"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        device, full, pairs, chunk = args.one
        print(json.dumps(run_one(device, full == "1", int(pairs), int(chunk))))
        return

    import torch

    settings = [("cpu", False)]
    if args.full_cpu:
        settings.append(("cpu", True))
    if torch.cuda.is_available():
        settings.append(("cuda", True))
    results = []
    for device, full in settings:
        for chunk in args.chunks:
            cmd = [sys.executable, __file__, "--one", device, str(int(full)), str(args.pairs), str(chunk)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
            results.append(json.loads(out.strip().splitlines()[-1]))
    machine = {
        "cpu": platform.processor() or platform.machine(), "cpu_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None, "torch": torch.__version__,
    }
    print(json.dumps({"benchmark": "met3r", "image_size": 256, "machine": machine, "results": results}, indent=2))


if __name__ == "__main__":
    main()
