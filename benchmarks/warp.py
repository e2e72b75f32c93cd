"""Warping throughput (million source points per second) against a NumPy baseline.

The baseline is per-frame NumPy bilinear splatting accumulated with ``np.add.at`` (the
approach of the method's released code), run in the same process on the same input.
Prints one JSON object.

    python benchmarks/warp.py [--frames 49] [--height 480] [--width 720] [--baseline-frames 3]
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import numpy as np
import torch

from reangle.geometry.camera import intrinsics
from reangle.geometry.splat import warp_video
from reangle.geometry.trajectory import motion_pose


def scene(frames: int, height: int, width: int, seed: int = 0):
    """Random colours over a smooth depth field (about 100 to 300 depth units)."""
    g = torch.Generator().manual_seed(seed)
    rgb = torch.rand(frames, 3, height, width, generator=g)
    v, u = torch.meshgrid(torch.linspace(0, 1, height), torch.linspace(0, 1, width), indexing="ij")
    depth = 200 + 60 * torch.sin(6 * u + 2 * v) * torch.cos(4 * v) + 20 * torch.rand(frames, 1, 1, generator=g)
    return rgb, depth.float()


def numpy_baseline(rgb: np.ndarray, depth: np.ndarray, K: np.ndarray, src_to_dst: np.ndarray) -> np.ndarray:
    """Per-frame bilinear forward splatting with a soft z weight, accumulated by ``np.add.at``."""
    n, _, h, w = rgb.shape
    out = np.zeros_like(rgb)
    v, u = np.mgrid[0:h, 0:w].astype(np.float32)
    for i in range(n):
        z = depth[i]
        pts = np.stack([(u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z, z], -1).reshape(-1, 3)
        pts = pts @ src_to_dst[:3, :3].T + src_to_dst[:3, 3]
        x = pts[:, 0] / pts[:, 2] * K[0, 0] + K[0, 2]
        y = pts[:, 1] / pts[:, 2] * K[1, 1] + K[1, 2]
        zw = np.exp(-pts[:, 2] / pts[:, 2].max() * 50)  # soft z-buffer: nearer points weigh more
        x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
        colors = rgb[i].reshape(3, -1).T
        acc = np.zeros((h * w, 4), np.float32)
        for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
            xi, yi = x0 + dx, y0 + dy
            wgt = (1 - np.abs(x - xi)) * (1 - np.abs(y - yi)) * zw
            ok = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h) & (pts[:, 2] > 0)
            np.add.at(acc, yi[ok] * w + xi[ok], np.concatenate([colors[ok] * wgt[ok, None], wgt[ok, None]], 1))
        out[i] = (acc[:, :3] / np.maximum(acc[:, 3:], 1e-12)).T.reshape(3, h, w)
    return out


def timed(fn, sync=lambda: None, repeats: int = 3) -> float:
    fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=49)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=720)
    parser.add_argument("--baseline-frames", type=int, default=3, help="frames the slow baseline warps")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rgb, depth = scene(args.frames, args.height, args.width)
    K = intrinsics(args.height, args.width)
    eye = torch.eye(4, dtype=torch.float64)
    target = motion_pose("orbit_left", 12.0, 200.0)
    points = args.frames * args.height * args.width
    result = {"benchmark": "warp", "shape": [args.frames, args.height, args.width], "threads": args.threads,
              "cpu": platform.processor() or platform.machine(), "torch": torch.__version__}

    for device in ["cpu"] + (["cuda"] if torch.cuda.is_available() else []):
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        rgb_d, depth_d = rgb.to(device), depth.to(device)
        for mode in ("bilinear", "nearest"):
            seconds = timed(lambda: warp_video(rgb_d, depth_d, K, eye, target, mode=mode, hole_dilation=5,
                                               chunk_frames=1 if device == "cpu" else 49), sync)
            result[f"{device}_{mode}_seconds"] = round(seconds, 4)
            result[f"{device}_{mode}_mpts_per_s"] = round(points / seconds / 1e6, 2)
        if device == "cuda":
            result["gpu"] = torch.cuda.get_device_name()

    nb = args.baseline_frames
    rgb_np, depth_np = rgb[:nb].numpy(), depth[:nb].numpy()
    rel = (target @ torch.linalg.inv(eye)).float().numpy()
    seconds = timed(lambda: numpy_baseline(rgb_np, depth_np, K.float().numpy(), rel), repeats=1)
    baseline = nb * args.height * args.width / seconds / 1e6
    result["baseline_numpy_frames"] = nb
    result["baseline_numpy_mpts_per_s"] = round(baseline, 3)
    for mode in ("bilinear", "nearest"):
        result[f"cpu_{mode}_speedup_vs_baseline"] = round(result[f"cpu_{mode}_mpts_per_s"] / baseline, 1)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
