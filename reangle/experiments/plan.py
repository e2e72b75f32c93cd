"""The units of work of a sweep: every trial (parameter set) on every benchmark video.

A unit's id is ``<trial index>-<video>-<hash>`` (the hash covers the parameters, the video's
entry and the command), so it is the same on every machine and every re-run, and an edited
sweep never mistakes an old result for a new unit. Sharding takes every n-th unit.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from reangle.experiments.manifest import BenchmarkVideo, Manifest, format_override
from reangle.experiments.sweep_spec import SweepError, SweepSpec, draw_trials
from reangle.training.wandb_run import TAG_LIMIT
from reangle.utils import fingerprint

SHARD_PATTERN = re.compile(r"^(\d+)/(\d+)$")


@dataclass(frozen=True)
class Unit:
    """One trial on one video (``video`` None: the command's own input)."""

    id: str
    trial: int
    params: dict[str, Any]
    video: BenchmarkVideo | None

    def overrides(self, sweep: str, trials_dir: str, wandb_mode: str, extra: list[str] = ()) -> list[str]:
        """The ``key=value`` list of this unit, in the order the config loader applies them: W&B
        settings (group = the sweep, tags = the sweep, the video and each swept value), the video's
        overrides, ``extra`` (the runner's own), the swept parameters, then where the run goes."""
        out = [format_override("logger.group", sweep), format_override("logger.wandb_mode", wandb_mode),
               format_override("logger.tags", self.tags(sweep))]
        if self.video is not None:
            out += self.video.config_overrides()
        out += list(extra) + [format_override(key, value) for key, value in self.params.items()]
        return out + [format_override("run.root", trials_dir), format_override("run.name", self.id)]

    def tags(self, sweep: str) -> list[str]:
        """W&B tags of the unit's run (each at most 64 characters, W&B's limit)."""
        tags = [f"sweep:{sweep}"] + ([f"video:{self.video.name}"] if self.video else [])
        tags += [f"{key}={json.dumps(value)}" for key, value in self.params.items()]
        return [tag[:TAG_LIMIT] for tag in tags]


def plan_units(spec: SweepSpec, manifest: Manifest | None, count: int | None = None, seed: int = 0) -> list[Unit]:
    """Every trial of ``spec`` on every video of ``manifest``, trial-major."""
    videos: list[BenchmarkVideo | None] = list(manifest.videos) if manifest is not None else [None]
    units = []
    for index, params in enumerate(draw_trials(spec, count, seed)):
        for video in videos:
            key = fingerprint([params, video.to_dict() if video else None, spec.command, spec.program], length=8)
            name = f"{index:03d}-{video.name}-{key}" if video else f"{index:03d}-{key}"
            units.append(Unit(id=name, trial=index, params=params, video=video))
    return units


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` (0 <= i < n) -> ``(i, n)``."""
    match = SHARD_PATTERN.match(text or "")
    if not match or not int(match[1]) < int(match[2]):
        raise SweepError(f"--shard {text!r} must be i/n with 0 <= i < n, e.g. 0/4 ... 3/4")
    return int(match[1]), int(match[2])


def shard(units: list[Unit], index: int, count: int) -> list[Unit]:
    """Units ``index``, ``index + count``, ... (every unit in exactly one of the ``count`` shards)."""
    return units[index::count]
