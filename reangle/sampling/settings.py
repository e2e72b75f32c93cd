"""The ``sample:`` config section as sampling settings and options."""
from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import DictConfig, OmegaConf

from reangle.config import ConfigError
from reangle.sampling.sampler import SCHEDULERS, SamplingSettings


@dataclass
class SampleOptions:
    """Everything ``sample:`` sets besides the denoising settings (see configs/base.yaml)."""

    settings: SamplingSettings
    views: list[str] | None
    scheduler: str
    seed: int
    start_frames: dict[str, str] = field(default_factory=dict)
    out_dir: str = "samples"
    grid_max_width: int | None = None
    device: str = "auto"
    vae_tiling: bool = False
    cpu_offload: bool = False
    every_n_steps: int = 0
    at_train_end: bool = True

    @classmethod
    def from_config(cls, cfg: DictConfig) -> "SampleOptions":
        """From a full resolved config (uses ``cfg.sample``)."""
        s = OmegaConf.to_container(cfg.sample, resolve=True)
        if s["every_n_steps"] < 0:
            raise ConfigError(f"sample.every_n_steps must be >= 0 (0: off), got {s['every_n_steps']}")
        if s["scheduler"] not in ("model", *SCHEDULERS):
            raise ConfigError(f"unknown sample.scheduler {s['scheduler']!r}; use one of {['model', *SCHEDULERS]}")
        guidance_2 = s.pop("guidance_2")
        if guidance_2 is not None and (isinstance(guidance_2, bool) or not isinstance(guidance_2, (int, float))):
            raise ConfigError(f"sample.guidance_2={guidance_2!r}: expected a number or null")
        if guidance_2 is not None and cfg.model.family != "wan":
            raise ConfigError(f"sample.guidance_2={guidance_2} is the low-noise expert's guidance of a two-expert "
                              f"Wan2.2-A14B; model.family={cfg.model.family} has one transformer: set it to null")
        settings = SamplingSettings(steps=int(s.pop("steps")), guidance=float(s.pop("guidance")),
                                    guidance_2=None if guidance_2 is None else float(guidance_2),
                                    dynamic_guidance=bool(s.pop("dynamic_guidance")),
                                    lora_scale=float(s.pop("lora_scale")), negative_prompt=str(s.pop("negative_prompt")))
        views = s.pop("views")
        if isinstance(views, str):
            views = [v for v in views.split(",") if v]
        return cls(settings=settings, views=views, start_frames=dict(s.pop("start_frames") or {}), **s)

