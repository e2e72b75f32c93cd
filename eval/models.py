"""The networks of the metrics: each loaded once per evaluation from its ``eval.models`` key
(a local checkpoint, a hub id where the loader takes one, or ``"tiny"``) and freed after.

The VBench networks come from ``reangle.models.vbench``; FID's Inception and FVD's I3D
from :mod:`eval.fid` / :mod:`eval.fvd`; MEt3R from :func:`reangle.consistency.load_met3r`.
"""
from __future__ import annotations

import gc
from pathlib import Path
from typing import Any

import torch

from reangle.consistency import TINY_DUST3R, TINY_SEED
from reangle.errors import InputError, MissingPackageError
from reangle.utils import empty_cuda_cache, seeded

TINY = "tiny"
WEIGHT_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".safetensors", ".pkl")


class EvalConfigError(InputError):
    """An evaluation setting that cannot be used, naming its config key."""


def checked_source(eval_cfg, key: str, allow_hub: bool = False) -> str:
    """``eval.models.<key>``: ``"tiny"`` or an existing path (or a hub id when ``allow_hub``);
    anything else is an error naming the key."""
    source = eval_cfg.models.get(key)
    if source is None:
        raise EvalConfigError(f"eval.models.{key} is not set: give the checkpoint's local path (see "
                              f"configs/base.yaml and configs/eval/vbench.yaml) or 'tiny'")
    source = str(source)
    if source == TINY or Path(source).exists():
        return source
    looks_like_hub_id = source.count("/") == 1 and not source.startswith((".", "/")) and \
        not source.endswith(WEIGHT_SUFFIXES)
    if allow_hub and looks_like_hub_id:
        return source
    raise EvalConfigError(f"checkpoint not found for eval.models.{key}: {source}; download it there or "
                          f"point eval.models.{key} at it")


def _vbench():
    try:
        from reangle.models import vbench
    except ImportError as exc:
        raise MissingPackageError(f"the VBench networks (reangle.models.vbench) are not available: {exc}") from exc
    return vbench


def _met3r(eval_cfg, device):
    from reangle.consistency import load_met3r

    opts = eval_cfg.met3r
    for name in ("point_source", "featup_source"):
        value = opts[name]
        if isinstance(value, str) and value.endswith(WEIGHT_SUFFIXES) and not Path(value).exists():
            raise EvalConfigError(f"checkpoint not found for eval.met3r.{name}: {value}")
    return load_met3r(opts.backbone, point_source=opts.point_source, featup_source=opts.featup_source, device=device,
                      img_size=int(opts.img_size), radius=float(opts.radius),
                      max_pairs_per_chunk=int(eval_cfg.batch_size))


def check_model_config(eval_cfg, model: str) -> None:
    """Check the config keys ``model`` needs before anything loads."""
    for key in MODEL_KEYS[model]:
        if eval_cfg.models.get(key) not in SPECIAL_SOURCES.get(key, ()):
            checked_source(eval_cfg, key, allow_hub=key in HUB_KEYS)


def load_model(model: str, eval_cfg, device: torch.device, cache_dir: str) -> Any:
    """Load one metric network (see ``MODEL_KEYS``) on ``device`` in eval mode."""
    if model == "met3r":
        return _met3r(eval_cfg, device).eval()
    if model == "inception":
        from eval.fid import build_fid
        return build_fid(checked_source(eval_cfg, "inception")).to(device)
    if model == "dust3r":
        from reangle.nets.dust3r import load_dust3r
        source = checked_source(eval_cfg, "dust3r", allow_hub=True)
        size = int(eval_cfg.camera.size)
        with seeded(TINY_SEED):
            return load_dust3r({**TINY_DUST3R, "img_size": (size, size)} if source == TINY else source, device=device)
    if model == "lpips":
        from eval.warp_fidelity import load_lpips
        source = eval_cfg.models.lpips
        source = source if source in SPECIAL_SOURCES["lpips"] else checked_source(eval_cfg, "lpips")
        with seeded(TINY_SEED):
            return load_lpips(source, device=device)
    if model == "i3d":
        from eval.fvd import build_fvd, load_i3d, materialize_tiny_i3d
        source = checked_source(eval_cfg, "i3d")
        path = materialize_tiny_i3d(cache_dir) if source == TINY else source
        return build_fvd(load_i3d(path, device), eval_cfg.fvd.protocol).to(device)
    loader = getattr(_vbench(), LOADERS[model])
    return loader(*(checked_source(eval_cfg, key) for key in MODEL_KEYS[model])).to(device).eval()


def release_memory() -> None:
    """Return the memory of dropped models (call after dropping the last reference)."""
    gc.collect()
    empty_cuda_cache()


# model -> the eval.models keys it is loaded from
MODEL_KEYS = {"subject": ("subject",), "background": ("background",), "aesthetic": ("aesthetic_clip", "aesthetic_head"),
              "imaging": ("imaging",), "flow": ("flow",), "interpolation": ("interpolation",),
              "inception": ("inception",), "i3d": ("i3d",), "met3r": (), "dust3r": ("dust3r",), "lpips": ("lpips",)}
HUB_KEYS = {"dust3r"}                        # keys that also take a hub id
SPECIAL_SOURCES = {"lpips": ("torchvision",)}  # sources that are neither files nor hub ids
LOADERS = {"subject": "load_subject_model", "background": "load_background_model",
           "aesthetic": "load_aesthetic_model", "imaging": "load_imaging_model", "flow": "load_flow_model",
           "interpolation": "load_interpolation_model"}
