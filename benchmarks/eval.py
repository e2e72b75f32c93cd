"""Evaluation throughput: frames per second of each metric; prints one JSON object.

Synthetic videos (``--videos`` x ``--frames`` frames of ``--height`` x ``--width``) are scored
with the tiny random metric networks (the tiny preset's ``eval`` section) on the CPU and, when
a GPU is present, with the full-size architectures on CUDA (``--full`` forces them on the CPU
too): DINO ViT-B/16, CLIP ViT-B/32 and ViT-L/14 + head, MUSIQ with random weights written
once as checkpoint files and read through the real loaders; RAFT-large and AMT-S are full
size even in the tiny preset. FID, FVD and MEt3R keep their tiny networks (``benchmarks/met3r.py``
times the full-size MEt3R). Each item metric runs two ways with its network loaded once:
*batched* (frames of all videos in ``eval.batch_size`` batches, what ``python -m eval`` does)
and the *per-video* baseline (one video at a time). FID and FVD run batched only. Model
loading is timed separately and not included in frames/s.

    python benchmarks/eval.py [--videos 6] [--frames 9] [--height 96] [--width 144] [--metrics a,b] [--full]
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from eval.models import load_model, release_memory  # noqa: E402
from eval.registry import METRICS, TABLE_1, EvalInputs  # noqa: E402
from reangle.config import CONFIG_DIR, load_config  # noqa: E402


def _videos(count: int, frames: int, height: int, width: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    out = {}
    for i in range(count):
        base = torch.rand(1, 3, height // 8, width // 8, generator=g)
        shift = torch.linspace(0, 0.3, frames).view(-1, 1, 1, 1)
        out[f"view_{i}"] = torch.nn.functional.interpolate((base + shift) % 1, size=(height, width), mode="bilinear")
    return out


def full_size_checkpoints(folder: Path) -> list[str]:
    """Random full-size checkpoints in the released files' layouts; ``eval.models.*`` overrides for them."""
    from reangle.models import vbench
    from reangle.nets.dino import build_dino

    folder.mkdir(parents=True, exist_ok=True)
    files = {"subject": ("dino_b16.pth", lambda: build_dino("vit_base").state_dict()),
             "background": ("clip_b32.pth", lambda: {f"visual.{k}": v for k, v in
                                                     vbench.build_clip_visual(vbench.BACKGROUND_CLIP).state_dict().items()}),
             "aesthetic_clip": ("clip_l14.pth", lambda: {f"visual.{k}": v for k, v in
                                                         vbench.build_clip_visual(vbench.AESTHETIC_CLIP).state_dict().items()}),
             "aesthetic_head": ("head.pth", lambda: {"weight": torch.randn(1, 768) * 0.01, "bias": torch.zeros(1)}),
             "imaging": ("musiq.pth", lambda: vbench.build_musiq().state_dict())}
    overrides = []
    for key, (name, make) in files.items():
        path = folder / name
        if not path.is_file():
            torch.save(make(), path)
        overrides.append(f"eval.models.{key}={path}")
    return overrides


def _timed(fn) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def bench_metric(name: str, inputs: EvalInputs, device: torch.device, cache_dir: str) -> dict:
    metric = METRICS[name]
    frames = sum(v.shape[0] for v in inputs.videos.values())
    load_s = 0.0
    model = None
    if metric.model:
        start = time.perf_counter()
        model = load_model(metric.model, inputs.settings, device, cache_dir)
        load_s = time.perf_counter() - start
    row = {"load_s": round(load_s, 3)}
    if metric.update is not None:
        def run():
            model.reset()
            metric.update(model, list(inputs.videos.values()), inputs.reference, inputs, False)
            model.compute()
        run()  # warm-up
        seconds = _timed(run)
        row["batched_frames_per_s"] = round(frames / seconds, 2)
    else:
        items = metric.items(inputs)
        metric.score(model, items[:1], inputs, False)  # warm-up
        batched = _timed(lambda: metric.score(model, items, inputs, False))
        per_video = _timed(lambda: [metric.score(model, [item], inputs, False) for item in items])
        row.update(batched_frames_per_s=round(frames / batched, 2), per_video_frames_per_s=round(frames / per_video, 2),
                   speedup=round(per_video / batched, 2), items=len(items))
    model = None
    release_memory()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=6)
    parser.add_argument("--frames", type=int, default=9)
    parser.add_argument("--height", type=int, default=96)
    parser.add_argument("--width", type=int, default=144)
    parser.add_argument("--metrics", default=",".join(TABLE_1),
                        help="metrics to time (those of the paper's Tab. 1; SED, camera accuracy and warp "
                             "fidelity need a run's cameras and Omega)")
    parser.add_argument("--cache-dir", default=".cache/reangle")
    parser.add_argument("--full", action="store_true", help="full-size architectures on the CPU too")
    args = parser.parse_args()
    preset = CONFIG_DIR / "presets" / "tiny.yaml"
    settings = tiny = load_config([preset]).eval
    runs = [("cpu", "tiny", tiny)]
    if args.full or torch.cuda.is_available():  # writes ~2 GB of random checkpoints once
        full = load_config([preset], full_size_checkpoints(Path(args.cache_dir) / "eval" / "random_full_size")).eval
        runs += [("cpu", "full", full)] if args.full else []
        runs += [("cuda", "tiny", tiny), ("cuda", "full", full)] if torch.cuda.is_available() else []
    videos = _videos(args.videos, args.frames, args.height, args.width)
    inputs = EvalInputs(videos=videos, fps=8.0, mode="static", settings=settings,
                        reference=list(_videos(2, args.frames, args.height, args.width).values()))
    result = {"machine": {"platform": platform.platform(), "cpu_threads": torch.get_num_threads(),
                          "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None},
              "videos": args.videos, "frames": args.frames, "size": [args.height, args.width],
              "batch_size": settings.batch_size, "results": {}}
    for device, size, eval_settings in runs:
        torch.manual_seed(0)
        inputs.settings = eval_settings
        result["results"][f"{device}_{size}"] = {name: bench_metric(name, inputs, torch.device(device), args.cache_dir)
                                                 for name in args.metrics.split(",")}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
