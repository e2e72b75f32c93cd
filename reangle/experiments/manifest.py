"""Benchmark sets: a YAML manifest naming many input videos, each with its prompt and mode.

Format (``configs/benchmark/README.md``)::

    name: my-benchmark            # optional; default: the file name
    videos:
      - name: rhino               # unique; letters, digits, '-', '_', '.'
        video: clips/rhino.mp4    # a file or frame folder (relative to this manifest), or "synthetic"
        prompt: "a rhino walks"   # optional caption (data.prompt)
        mode: static              # optional: static | dynamic (also resets views.per_motion to the mode's default)
        views: [...]              # optional custom views (views.custom)
        overrides: {key: value}   # optional config overrides for this video

A video becomes ``key=value`` overrides (values written as JSON, which the config loader
reads back unchanged). Missing video files are not an error here: the trial that uses one
fails fast and is recorded, so the rest of a benchmark still runs.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reangle.errors import InputError
from reangle.utils import read_yaml_mapping

SYNTHETIC = "synthetic"
MODES = ("static", "dynamic")
FIELDS = ("name", "video", "prompt", "mode", "views", "overrides")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class ManifestError(InputError):
    """A benchmark manifest that cannot be used, with the entry that is wrong."""


@dataclass(frozen=True)
class BenchmarkVideo:
    """One manifest entry; ``video`` is resolved (absolute path, or ``synthetic``)."""

    name: str
    video: str
    prompt: str | None = None
    mode: str | None = None
    views: list | None = None
    overrides: dict[str, Any] = field(default_factory=dict)

    def config_overrides(self) -> list[str]:
        """``key=value`` strings for the config loader, in a fixed order."""
        items: list[tuple[str, Any]] = [("data.video", self.video)]
        if self.prompt is not None:
            items.append(("data.prompt", self.prompt))
        if self.mode is not None:
            items += [("mode", self.mode), ("views.per_motion", None)]
        if self.views is not None:
            items.append(("views.custom", self.views))
        items += list(self.overrides.items())
        return [format_override(key, value) for key, value in items]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "video": self.video, "prompt": self.prompt, "mode": self.mode,
                "views": self.views, "overrides": dict(self.overrides)}


@dataclass(frozen=True)
class Manifest:
    name: str
    path: Path
    videos: list[BenchmarkVideo]


def format_override(key: str, value: Any) -> str:
    """``key=value`` with the value as JSON (strings quoted), so any prompt or list survives."""
    return f"{key}={json.dumps(value)}"


def load_manifest(path: str | os.PathLike) -> Manifest:
    """Read and check a manifest; raises :class:`ManifestError` naming the bad entry."""
    path = Path(path)
    data = read_yaml_mapping(path, "benchmark manifest", ManifestError)
    if not isinstance(data.get("videos"), list) or not data["videos"]:
        raise ManifestError(f"benchmark manifest {path} must hold a non-empty 'videos' list")
    stray = sorted(set(data) - {"name", "videos"})
    if stray:
        raise ManifestError(f"benchmark manifest {path}: unknown top-level key(s) {stray}; use name, videos")
    videos = [_entry(path, i, item) for i, item in enumerate(data["videos"])]
    names = [v.name for v in videos]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ManifestError(f"benchmark manifest {path}: video name(s) {duplicates} appear more than once; "
                            f"names must be unique")
    return Manifest(name=str(data.get("name") or path.stem), path=path, videos=videos)


def _entry(path: Path, index: int, item: Any) -> BenchmarkVideo:
    where = f"benchmark manifest {path}, video #{index + 1}"
    if not isinstance(item, dict):
        raise ManifestError(f"{where}: each video must be a mapping with at least 'name' and 'video'")
    stray = sorted(set(item) - set(FIELDS))
    if stray:
        raise ManifestError(f"{where}: unknown field(s) {stray}; use {', '.join(FIELDS)}")
    name, video = item.get("name"), item.get("video")
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ManifestError(f"{where}: 'name' must be a string of letters, digits, '-', '_' or '.', got {name!r}")
    if not isinstance(video, str) or not video:
        raise ManifestError(f"{where} ({name}): 'video' must be a file or folder path, or {SYNTHETIC!r}")
    mode = item.get("mode")
    if mode is not None and mode not in MODES:
        raise ManifestError(f"{where} ({name}): unknown mode {mode!r}; use one of {MODES}")
    views = item.get("views")
    if views is not None and not isinstance(views, list):
        raise ManifestError(f"{where} ({name}): 'views' must be a list of custom views (see views.custom)")
    overrides = item.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise ManifestError(f"{where} ({name}): 'overrides' must be a mapping of config keys to values")
    prompt = item.get("prompt")
    if video != SYNTHETIC and not Path(video).is_absolute():
        video = str((path.parent / video).resolve())
    return BenchmarkVideo(name=name, video=video, prompt=None if prompt is None else str(prompt), mode=mode,
                          views=views, overrides={str(k): v for k, v in overrides.items()})
