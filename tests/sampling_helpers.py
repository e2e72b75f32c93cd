"""A small Omega on disk for the sampling tests (9 frames of 64x96, the input and two views)."""
from pathlib import Path

import torch

from reangle.data.omega import INPUT_VIEW, Omega, publish, staging_dir, write_view

VIEWS = (INPUT_VIEW, "orbit_left_0", "orbit_right_0")


def make_omega(root: Path, mode: str = "static", num_frames: int = 9, height: int = 64, width: int = 96) -> Omega:
    g = torch.Generator().manual_seed(0)
    staging = staging_dir(root)
    K = torch.tensor([[60.0, 0, width / 2], [0, 60.0, height / 2], [0, 0, 1]])
    records = []
    for i, name in enumerate(VIEWS):
        frames = torch.rand(num_frames, 3, height, width, generator=g) * 0.2 + 0.25 * i
        mask = torch.ones(num_frames, height, width, dtype=torch.bool)
        motion = None if name == INPUT_VIEW else name.rsplit("_", 1)[0]
        prompt = "a red ball" if mode == "static" or motion is None else f"Camera movement {motion}, a red ball"
        records.append(write_view(staging, name, frames, mask, K, torch.eye(4).repeat(num_frames, 1, 1), prompt,
                                  motion, 0.0 if motion is None else 10.0 + i, fps=8))
    omega = Omega(root=staging, key="test", mode=mode, num_frames=num_frames, height=height, width=width, fps=8,
                  caption="a red ball", views=records)
    return publish(staging, root, omega)
