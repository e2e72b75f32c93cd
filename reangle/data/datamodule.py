"""The LightningDataModule of stage II: Omega -> cached latents, text embeddings and masks.

``prepare_data`` (one process per node) builds or reuses Omega, then fills two caches
under ``cache_dir`` with the model spec's encoders (VAE, text encoder), skipping valid
entries and rebuilding missing or corrupt ones:

* ``latents/<key>``: one per view, key = spec fingerprint + view name + the video file's
  sha256 (so Omegas that differ only in their caption share them);
* ``text/<key>``: one per prompt, key = spec fingerprint + prompt.

The prompts are encoded first and the text encoder released before the VAE encodes the clips;
the encoders are dropped afterwards, so training holds only the diffusion model.
``setup`` (every process) loads the entries (a bad one is an error, never used) and the
latent masks; a sample is the spec's cached video tensors (e.g. ``video_mean, video_logvar,
first_frame_pm1``) plus ``prompt_embeds`` and ``mask`` (bool ``[F, h, w]``, 1 = visible;
all ones when the loss is unmasked), and batches of any size stack them.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Callable, Sequence

import lightning as L
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from reangle.data.loader import ResumableLoader
from reangle.data.omega import Omega, OmegaError
from reangle.data.tensor_cache import CacheError, TensorCache
from reangle.models.spec import ModelSpec
from reangle.utils import (atomic_write_text, cache_lock, clean_stale_staging, empty_cuda_cache, file_fingerprint,
                           fingerprint)

log = logging.getLogger(__name__)

TEXT_TENSORS = ("prompt_embeds",)


def pick_device(name: str) -> torch.device:
    """``auto`` -> first CUDA device if any, else CPU; anything else as given."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


class ViewDataset(Dataset):
    """In-memory samples, one per view."""

    def __init__(self, samples: list[dict[str, torch.Tensor]], names: list[str]):
        self.samples, self.names = samples, names

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return self.samples[index]


class OmegaDataModule(L.LightningDataModule):
    """Stage II data over one Omega.

    ``omega``: an Omega folder, or a callable returning the Omega (building it when missing;
    called on the preparing process first and then on every process, where it must reuse it).
    ``views``: names to train on (``None``: all). ``exclude_motions``: camera motions whose views
    are left out of training (unseen views; sampling still uses every view of Omega).
    ``masked``: use the visibility masks.
    ``omega_pointer``: a JSON file that ``setup`` writes with the Omega folder and key.
    """

    def __init__(self, spec: ModelSpec, omega: str | os.PathLike | Callable[[], Omega], cache_dir: str | os.PathLike,
                 batch_size: int = 1, seed: int = 42, views: Sequence[str] | None = None,
                 exclude_motions: Sequence[str] = (), masked: bool = True,
                 encode_device: str = "auto", omega_pointer: str | os.PathLike | None = None):
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch size must be at least 1, got {batch_size}")
        self.spec, self.batch_size, self.seed = spec, batch_size, seed
        self._omega_source = omega
        self.views = list(views) if views is not None else None
        self.exclude_motions = set(exclude_motions)
        self.masked = masked
        self.encode_device = encode_device
        self.omega_pointer = Path(omega_pointer) if omega_pointer else None
        self.latent_cache = TensorCache(Path(cache_dir) / "latents")
        self.text_cache = TensorCache(Path(cache_dir) / "text")
        self.dataset: ViewDataset | None = None
        self._loader: ResumableLoader | None = None

    # --- Omega and keys ---------------------------------------------------------------------------
    def omega(self) -> Omega:
        source = self._omega_source
        return source() if callable(source) else Omega.load(source)

    def _selected(self, omega: Omega):
        views = list(omega.views) if self.views is None else [omega.view(name) for name in self.views]
        return [view for view in views if view.motion not in self.exclude_motions]

    def _video_key(self, omega: Omega, view) -> str:
        return fingerprint([self.spec.fingerprint("video"), view.name, file_fingerprint(omega.root / view.video)],
                           length=32)

    def _text_key(self, prompt: str) -> str:
        return fingerprint([self.spec.fingerprint("text"), prompt], length=32)

    # --- Lightning hooks -----------------------------------------------------------------------------
    def prepare_data(self) -> None:
        """Fill the latent and text caches under the cache lock (a second process waits, then finds the
        entries the first wrote); staging files of dead processes are deleted first."""
        omega = self.omega()
        with cache_lock(self.latent_cache.root):
            for cache in (self.latent_cache, self.text_cache):
                clean_stale_staging(cache.root)
            self._fill_caches(omega)

    def _fill_caches(self, omega: Omega) -> None:
        views = self._selected(omega)
        names = self.spec.cached_video_tensors()
        todo_video = [(v, k) for v in views if not self.latent_cache.is_valid(k := self._video_key(omega, v), names)]
        prompts = sorted({v.prompt for v in views})
        todo_text = [(p, k) for p in prompts if not self.text_cache.is_valid(k := self._text_key(p), TEXT_TENSORS)]
        if not todo_video and not todo_text:
            return
        for _, key in todo_video:
            if self.latent_cache.path(key).exists():
                log.warning("rebuilding corrupt latent cache entry %s", self.latent_cache.path(key))
        self.spec.load_encoders(pick_device(self.encode_device))
        try:  # the prompts first: the text encoder (T5-XXL) is released before the VAE encodes the clips
            for prompt, key in tqdm(todo_text, desc="encoding prompts", disable=not todo_text):
                self.text_cache.save(key, self.spec.encode_prompt(prompt))
            self.spec.release_text_encoder()
            empty_cuda_cache()
            for view, key in tqdm(todo_video, desc="encoding videos", disable=not todo_video):
                frames = omega.read_frames(view)
                generator = torch.Generator().manual_seed(int(key[:8], 16))
                self.latent_cache.save(key, self.spec.encode_video(frames, generator))
        finally:
            self.spec.unload_encoders()
            empty_cuda_cache()

    def setup(self, stage: str | None = None) -> None:
        if self.dataset is not None:
            return
        omega = self.omega()
        samples, names, tensors = [], [], self.spec.cached_video_tensors()
        for view in self._selected(omega):
            try:
                video = self.latent_cache.load(self._video_key(omega, view), tensors)
                text = self.text_cache.load(self._text_key(view.prompt), TEXT_TENSORS)
            except CacheError as exc:
                raise CacheError(f"{exc} (view {view.name!r}; prepare_data rebuilds it)") from exc
            frames = video["video_mean"].shape[0]
            if self.masked:
                mask = self.spec.latent_mask(omega.read_mask(view))
            else:
                mask = torch.ones(frames, *video["video_mean"].shape[-2:], dtype=torch.bool)
            if mask.shape != (frames, *video["video_mean"].shape[-2:]):
                raise OmegaError(f"view {view.name!r}: latent mask {tuple(mask.shape)} does not match latents "
                                 f"{tuple(video['video_mean'].shape)}; rebuild Omega")
            samples.append({**{k: video[k] for k in tensors}, "prompt_embeds": text["prompt_embeds"],
                            "mask": mask})
            names.append(view.name)
        if not samples:
            raise OmegaError(f"Omega at {omega.root} has no views to train on")
        self.dataset = ViewDataset(samples, names)
        if self.omega_pointer is not None and (self.trainer is None or self.trainer.is_global_zero):
            atomic_write_text(self.omega_pointer, json.dumps({"path": str(Path(omega.root).resolve()),
                                                              "key": omega.key, "views": names}, indent=1))

    def train_dataloader(self) -> ResumableLoader:
        if self.dataset is None:
            raise RuntimeError("call setup() before train_dataloader()")
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer is not None else (0, 1)
        self._loader = ResumableLoader(self.dataset, self.batch_size, self.seed, rank, world)
        return self._loader

    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        if self._loader is not None and self.trainer is not None and self.trainer.training:
            self._loader.mark_consumed()
        return batch
