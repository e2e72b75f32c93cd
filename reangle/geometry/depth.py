"""Per-frame depth: Depth Anything V2 (transformers), ``.npy`` files, or the synthetic scene's truth.

Every source returns depth ``[N, H, W]`` float32 along the optical axis, in the units of
the camera convention (see ``paper.md``: depth = 10000 / max(disparity, 1e-5), clipped to
[1e-4, 1e4]). Results are cached on disk keyed by the frames and every parameter.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from reangle.errors import InputError
from reangle.io.video import resize_center_crop
from reangle.utils import (atomic_save_npy, file_fingerprint, fingerprint, imagenet_normalize, natural_sorted,
                           resolve_device, seeded)

TINY = "tiny"


class DepthError(InputError):
    """Depth that cannot be produced as configured."""


def disparity_to_depth(disparity: torch.Tensor, scale: float = 1e4, eps: float = 1e-5,
                       clip: Sequence[float] = (1e-4, 1e4)) -> torch.Tensor:
    """``scale / max(disparity, eps)`` clipped to ``clip``."""
    return (scale / disparity.clamp_min(eps)).clamp(clip[0], clip[1])


DEPTH_OUTPUTS = ("disparity", "depth")


def check_output(output: str) -> str:
    if output not in DEPTH_OUTPUTS:
        raise DepthError(f"depth.output must be 'disparity' or 'depth', got {output!r}")
    return output


def prediction_to_depth(prediction: torch.Tensor, output: str, scale: float = 1e4, eps: float = 1e-5,
                        clip: Sequence[float] = (1e-4, 1e4)) -> torch.Tensor:
    """Depth from a map holding ``output`` (``disparity``: :func:`disparity_to_depth`; ``depth``: as
    is), clipped to ``clip``."""
    if check_output(output) == "disparity":
        return disparity_to_depth(prediction, scale, eps, clip)
    return prediction.clamp(clip[0], clip[1])


def tiny_depth_anything_config():
    """A random Depth Anything small enough for tests (about 0.2 M parameters)."""
    from transformers import DepthAnythingConfig, Dinov2Config
    backbone = Dinov2Config(hidden_size=32, num_hidden_layers=4, num_attention_heads=2, intermediate_size=64,
                            patch_size=14, image_size=518, reshape_hidden_states=False,
                            out_features=["stage1", "stage2", "stage3", "stage4"])
    return DepthAnythingConfig(backbone_config=backbone, reassemble_hidden_size=32, neck_hidden_sizes=[8, 16, 32, 32],
                               fusion_hidden_size=16, head_hidden_size=8, depth_estimation_type="relative")


def load_depth_anything(source: str, device: torch.device, dtype: torch.dtype):
    """Depth Anything from a hub id, a local folder, or ``"tiny"`` (random, seeded)."""
    from transformers import DepthAnythingForDepthEstimation
    if source == TINY:
        with seeded(0):
            model = DepthAnythingForDepthEstimation(tiny_depth_anything_config())
    else:
        try:
            model = DepthAnythingForDepthEstimation.from_pretrained(source, torch_dtype=dtype)
        except OSError as exc:
            raise DepthError(f"cannot load Depth Anything from {source!r}: give a hub id, a local folder "
                             f"with config.json and weights, or 'tiny' ({exc})") from exc
    return model.to(device=device, dtype=dtype).eval()


@dataclass
class DepthAnything:
    """Batched Depth Anything V2 inference; half precision on GPU.

    ``input_size``: ``None`` runs the model at the frames' own resolution, each side raised
    to a multiple of 14 (the released code); an int scales the shorter side to it first
    (518: Depth Anything's training size).
    The cache key holds the device type and dtype the model runs in.
    """

    model: str = "depth-anything/Depth-Anything-V2-Large-hf"
    output: str = "disparity"
    disparity_scale: float = 1e4
    disparity_eps: float = 1e-5
    clip: Sequence[float] = (1e-4, 1e4)
    input_size: int | None = None
    batch_size: int = 8
    device: str = "auto"
    _net: object = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        check_output(self.output)
        if self.input_size is not None and (isinstance(self.input_size, bool) or not isinstance(self.input_size, int)
                                            or self.input_size < 14):
            raise DepthError(f"depth.input_size must be null (the frames' own size) or an integer >= 14, "
                             f"got {self.input_size!r}")

    def _device_dtype(self) -> tuple[torch.device, torch.dtype]:
        device = resolve_device(self.device)
        return device, torch.float16 if device.type == "cuda" else torch.float32

    def key(self) -> dict:
        device, dtype = self._device_dtype()
        return {"source": "depth_anything", "model": self.model, "output": self.output,
                "scale": self.disparity_scale, "eps": self.disparity_eps, "clip": list(self.clip),
                "input_size": self.input_size, "device_type": device.type, "dtype": str(dtype)}

    def input_shape(self, height: int, width: int) -> tuple[int, int]:
        """Model input size, as Depth Anything V2's own lower-bound resize computes it: scale the
        frame so both sides reach the target (the frame's own size, or ``input_size`` squared),
        round each side to a multiple of 14, and round up where that fell below the target."""
        target = (height, width) if self.input_size is None else (self.input_size, self.input_size)
        scale = max(target[0] / height, target[1] / width)

        def side(length: int, bound: int) -> int:
            size = 14 * round(length * scale / 14)
            return size if size >= bound else 14 * math.ceil(length * scale / 14)

        return side(height, target[0]), side(width, target[1])

    @torch.no_grad()
    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        device, dtype = self._device_dtype()
        if self._net is None:
            self._net = load_depth_anything(self.model, device, dtype)
        n, _, h, w = frames.shape
        out = torch.empty(n, h, w)
        for start in tqdm(range(0, n, self.batch_size), desc="depth", unit="batch", leave=False):
            batch = frames[start:start + self.batch_size].to(device)
            batch = F.interpolate(batch, size=self.input_shape(h, w), mode="bicubic", align_corners=False)
            batch = imagenet_normalize(batch.clamp(0, 1)).to(dtype)
            pred = self._net(pixel_values=batch).predicted_depth.unsqueeze(1).float()
            pred = F.interpolate(pred, size=(h, w), mode="bilinear", align_corners=False).squeeze(1)
            out[start:start + len(batch)] = pred.cpu()
        return prediction_to_depth(out, self.output, self.disparity_scale, self.disparity_eps, self.clip)


@dataclass
class NpyDepth:
    """Maps from a folder of per-frame ``.npy`` files (in natural order, as frame folders).

    Each map must show what the video's frame shows, at any resolution: it gets the frames'
    resize (nearest) + centre crop to their size.

    ``output`` says what the files hold: ``disparity`` (what Depth Anything predicts, as the
    released code saves it), converted like the model's output, or ``depth``. NaN or
    infinite values, and non-positive depth, are errors naming the file. The key holds each
    file's name and content hash, so files regenerated in place are read again.
    """

    folder: str
    indices: Sequence[int] | None = None  # which files to use (the video's frame indices); None = the first N
    output: str = "disparity"
    disparity_scale: float = 1e4
    disparity_eps: float = 1e-5
    clip: Sequence[float] = (1e-4, 1e4)

    def __post_init__(self):
        check_output(self.output)

    def files(self) -> list[Path]:
        folder = Path(self.folder)
        if not folder.is_dir():
            raise DepthError(f"depth folder not found: {folder}")
        return natural_sorted(folder.glob("*.npy"), f"depth folder {folder}", DepthError)

    def key(self) -> dict:
        return {"source": "npy", "files": [(p.name, file_fingerprint(p)) for p in self.files()],
                "indices": list(self.indices) if self.indices is not None else None, "output": self.output,
                "scale": self.disparity_scale, "eps": self.disparity_eps, "clip": list(self.clip)}

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        n, _, h, w = frames.shape
        files = self.files()
        indices = list(self.indices) if self.indices is not None else list(range(n))
        if not files or max(indices) >= len(files):
            raise DepthError(f"depth folder {self.folder} has {len(files)} .npy files; {max(indices) + 1} are needed")
        maps = torch.stack([torch.from_numpy(np.load(files[i]).astype(np.float32)) for i in indices])
        if maps.dim() != 3:
            raise DepthError(f"depth files in {self.folder} must hold 2D arrays, got shape {tuple(maps.shape[1:])}")
        nonfinite = ~torch.isfinite(maps).flatten(1).all(dim=1)
        if nonfinite.any():
            raise DepthError(f"depth file {files[indices[int(nonfinite.nonzero()[0])]]} holds NaN or infinite "
                             f"values; fix or regenerate it")
        if self.output == "depth":
            nonpositive = (maps <= 0).flatten(1).any(dim=1)
            if nonpositive.any():
                raise DepthError(f"depth file {files[indices[int(nonpositive.nonzero()[0])]]} holds depth <= 0; "
                                 f"depth must be positive (if the files hold disparity, set depth.output=disparity)")
        # the frames' own resize + centre crop: a map of the video's aspect lands pixel on pixel
        maps = resize_center_crop(maps.unsqueeze(1), h, w, mode="nearest").squeeze(1)
        return prediction_to_depth(maps, self.output, self.disparity_scale, self.disparity_eps, self.clip)


def cached_depth(estimator, frames: torch.Tensor, cache_dir: str | os.PathLike | None) -> torch.Tensor:
    """Run ``estimator(frames)`` unless a cached result for the same frames and parameters exists."""
    if cache_dir is None:
        return estimator(frames)
    path = Path(cache_dir) / "depth" / f"{fingerprint(estimator.key(), frames)}.npy"
    if path.is_file():
        try:
            depth = torch.from_numpy(np.load(path))
            if depth.shape == (frames.shape[0], *frames.shape[-2:]):
                return depth
        except (ValueError, OSError):
            pass  # an unreadable cache entry is recomputed and replaced
    depth = estimator(frames)
    atomic_save_npy(path, depth.numpy())
    return depth
