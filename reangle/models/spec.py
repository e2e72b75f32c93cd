"""The seam between the trainer and a video backbone.

A :class:`ModelSpec` owns everything model-specific: loading its parts, turning a view of
Omega into cached tensors (latent distributions, text embeddings, latent mask), one
training forward pass (prediction, target, weight) and LoRA export. The data module and
the LightningModule only talk to this interface, so another backbone (or a test double)
plugs in without touching them.

Cached tensors are plain ``{name: tensor}`` dicts; :meth:`ModelSpec.fingerprint` names
everything they depend on, so a cache built for other weights or settings is never reused.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch


@dataclass
class DiffusionPair:
    """What one training forward gives the loss: ``[B, F, C, h, w]`` prediction and target, ``[B]``
    weight, and ``trained``: ``[B, F, h, w]`` bool, False where the network's input held a given
    condition rather than noise (no prediction to train there; ``None``: everywhere trained)."""

    prediction: torch.Tensor
    target: torch.Tensor
    weight: torch.Tensor
    trained: torch.Tensor | None = None

    def loss_mask(self, visible: torch.Tensor | None) -> torch.Tensor | None:
        """The mask the loss uses: ``visible`` (``[B, F, h, w]`` bool, or ``None``: no visibility mask)
        AND :attr:`trained`."""
        if self.trained is None:
            return visible
        return self.trained if visible is None else visible & self.trained


@dataclass(frozen=True)
class FrameGrid:
    """The video sizes a backbone takes: height and width multiples of ``spatial`` pixels,
    ``num_frames = 1 + temporal * k``, ``size`` = the one (height, width) it takes and ``frames`` the
    one frame count it takes, if fixed (learned positional embeddings)."""

    spatial: int = 1
    temporal: int = 1
    size: tuple[int, int] | None = None
    frames: int | None = None

    def problem(self, height: int, width: int, num_frames: int) -> str | None:
        """What is wrong with ``height x width`` pixels and ``num_frames`` frames, or None."""
        if self.size is not None and (height, width) != tuple(self.size):
            return f"it takes exactly {self.size[0]} x {self.size[1]} pixels (learned positional embeddings)"
        if height < self.spatial or width < self.spatial or height % self.spatial or width % self.spatial:
            return f"height and width must be positive multiples of {self.spatial} pixels"
        if num_frames < 1 or (num_frames - 1) % self.temporal:
            return f"num_frames must be 1 + {self.temporal}k (e.g. {1 + self.temporal * max(1, (num_frames - 1) // self.temporal)})"
        if self.frames is not None and num_frames != self.frames:
            return (f"it takes exactly {self.frames} frames (learned positional embeddings; another count would "
                    f"silently replace them with computed ones)")
        return None


class ModelSpec(ABC):
    """One backbone for stage II."""

    @classmethod
    def frame_grid(cls, model: Mapping[str, Any]) -> FrameGrid:
        """The video sizes the backbone of the ``model`` config section takes, known before loading
        anything (config validation asks it). Default: any size."""
        return FrameGrid()

    @abstractmethod
    def fingerprint(self, kind: str) -> str:
        """Identity of the weights and settings that cached tensors of ``kind`` ("video", "text") depend on."""

    @abstractmethod
    def load_encoders(self, device: torch.device) -> None:
        """Load the models that fill the caches (VAE, text encoder) onto ``device``."""

    @abstractmethod
    def unload_encoders(self) -> None:
        """Drop the cache-filling models to free memory."""

    def release_text_encoder(self) -> None:
        """Drop the text encoder of the cache-filling models once the prompts are encoded (the VAE stays for
        :meth:`encode_video`); default: nothing."""

    @abstractmethod
    def cached_video_tensors(self) -> tuple[str, ...]:
        """Names of the tensors :meth:`encode_video` returns (the cache entry of a view)."""

    @abstractmethod
    def encode_video(self, frames: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """``[N, 3, H, W]`` frames in [0, 1] -> cached tensors of one view."""

    @abstractmethod
    def encode_prompt(self, prompt: str) -> dict[str, torch.Tensor]:
        """One prompt -> cached tensors."""

    @abstractmethod
    def latent_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """``[N, H, W]`` bool pixel mask -> bool mask on the prediction's grid without channels."""

    @abstractmethod
    def load_diffusion_model(self, device: torch.device | None = None) -> torch.nn.Module:
        """Load (once) and return the trained network with LoRA attached; only LoRA weights require grad."""

    def load_training_encoders(self, device: torch.device) -> None:
        """Load onto the training ``device`` whatever :meth:`training_pair` encodes with (default: nothing)."""

    def unload_training_encoders(self) -> None:
        """Drop what :meth:`load_training_encoders` loaded (training is over; default: nothing)."""

    @abstractmethod
    def training_pair(self, batch: dict[str, torch.Tensor], generator: torch.Generator) -> DiffusionPair:
        """Noise a batch of cached tensors and run the network once."""

    @abstractmethod
    def lora_state(self) -> dict[str, torch.Tensor]:
        """The network's current LoRA weights (detached CPU copies), as :meth:`save_lora` takes them."""

    @abstractmethod
    def save_lora(self, folder: str | Path, state: dict[str, torch.Tensor] | None = None) -> Path:
        """Write the LoRA (``state``, or the network's current one) in the backbone's pipeline format."""


class PipelineSpec(ModelSpec):
    """What the specs over a diffusers pipeline folder share: component configs read from the folder
    or hub id ``self.source``, the encoder slot, and the LoRA (attached with :func:`add_lora`,
    exported for ``LORA_PIPELINE``'s ``load_lora_weights``). Subclasses set ``source``,
    ``revision``, ``pretrained``, ``weights_dtype``, ``lora`` (add_lora's keywords) and
    ``gradient_checkpointing``, and call :meth:`_reset_models`. ``storage_dtype`` (``model.storage_dtype``,
    set before :meth:`load_diffusion_model`): ``"fp8"`` stores the frozen transformer's layers in float8
    (:func:`reangle.models.storage.store_weights`, after the LoRA is attached)."""

    SPEC_ID: str = ""
    storage_dtype: str | None = None

    def _reset_models(self) -> None:
        self.encoders = None
        self.transformer = None
        self.scheduler = None
        self.lora_config = None
        self._config_cache: dict[str, dict] = {}

    def _read_config(self, part: str, **kwargs) -> dict:
        """The raw ``config.json`` of ``part`` (``kwargs``: subfolder and revision for ``from_pretrained``)."""
        raise NotImplementedError

    def component_config(self, part: str) -> dict:
        """``config.json`` of one component (only the config file is fetched for hub ids)."""
        if part not in self._config_cache:
            kwargs = {"subfolder": part, **({"revision": self.revision} if self.revision else {})}
            config = self._read_config(part, **kwargs)
            self._config_cache[part] = {k: v for k, v in config.items() if not k.startswith("_")
                                        and k not in ("transformers_version", "torch_dtype", "dtype")}
        return self._config_cache[part]

    def _fingerprint(self, kind: str, parts: list[str], extra: dict | None = None) -> str:
        from reangle import utils

        source = Path(self.source).name if self.pretrained == "tiny" else self.source
        payload = {"spec": self.SPEC_ID, "kind": kind, "source": source, "revision": self.revision,
                   "configs": [self.component_config(p) for p in parts], "dtype": str(self.weights_dtype),
                   **(extra or {})}
        return utils.fingerprint(payload, length=None)

    def unload_encoders(self) -> None:
        self.encoders = None

    def release_text_encoder(self) -> None:
        if self.encoders is not None:
            self.encoders.text_encoder = None

    def _require_encoders(self):
        if self.encoders is None:
            raise RuntimeError("encoders are not loaded; call load_encoders(device) first")
        return self.encoders

    def _attach_lora(self, model: torch.nn.Module | None = None) -> None:
        """Freeze a loaded transformer (default: ``self.transformer``), attach the LoRA, store the frozen
        layers in ``storage_dtype``, set gradient checkpointing and train mode."""
        from reangle.models.lora import add_lora
        from reangle.models.storage import store_weights

        model = self.transformer if model is None else model
        self.lora_config = add_lora(model, **self.lora)
        store_weights(model, self.storage_dtype, self.weights_dtype)
        if self.gradient_checkpointing:
            model.enable_gradient_checkpointing()
        model.train()

    def _lora_pipeline(self) -> type:
        """The pipeline class whose ``save_lora_weights`` writes the export."""
        raise NotImplementedError

    def _require_lora(self) -> None:
        if self.lora_config is None:
            raise RuntimeError("no LoRA attached yet; call load_diffusion_model() first")

    def lora_state(self) -> dict[str, torch.Tensor]:
        from reangle.models.lora import lora_state_dict

        self._require_lora()
        return lora_state_dict(self.transformer)

    def save_lora(self, folder: str | Path, state: dict[str, torch.Tensor] | None = None) -> Path:
        from reangle.models.lora import save_lora

        self._require_lora()
        return save_lora(folder, self.lora_state() if state is None else state, self.lora_config,
                         pipeline=self._lora_pipeline())
