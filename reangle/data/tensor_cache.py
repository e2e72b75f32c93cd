"""A folder of safetensors files keyed by a hash of their inputs.

Each entry ``<root>/<key>.safetensors`` holds named tensors plus the key in its metadata.
Writes go to a temporary name and are renamed into place, so a half-written file is
never seen. :meth:`TensorCache.load` checks the key, the expected names and that every
value is finite; anything else is a :class:`CacheError`, never silently used.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

import torch

from reangle.errors import InputError
from reangle.utils import temporary_path, umask_safetensors


class CacheError(InputError):
    """A cache entry that is missing, unreadable or not what its key promises."""


class TensorCache:
    """Entries under ``root`` (created on first write)."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / f"{key}.safetensors"

    def save(self, key: str, tensors: dict[str, torch.Tensor]) -> Path:
        from safetensors.torch import save_file

        self.root.mkdir(parents=True, exist_ok=True)
        final = self.path(key)
        tmp = temporary_path(final)
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata={"key": key})
        os.replace(umask_safetensors(tmp), final)
        return final

    def load(self, key: str, names: Iterable[str]) -> dict[str, torch.Tensor]:
        from safetensors import safe_open

        path = self.path(key)
        if not path.is_file():
            raise CacheError(f"cache entry {path} is missing")
        try:
            with safe_open(str(path), framework="pt") as fh:
                stored = (fh.metadata() or {}).get("key")
                tensors = {k: fh.get_tensor(k) for k in fh.keys()}
        except Exception as exc:
            raise CacheError(f"cache entry {path} is unreadable ({exc}); delete it to rebuild it") from exc
        if stored != key:
            raise CacheError(f"cache entry {path} was written for key {stored!r}; delete it to rebuild it")
        missing = sorted(set(names) - set(tensors))
        if missing:
            raise CacheError(f"cache entry {path} lacks {missing}; delete it to rebuild it")
        bad = sorted(k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all())
        if bad:
            raise CacheError(f"cache entry {path} holds non-finite values in {bad}; delete it to rebuild it")
        return tensors

    def is_valid(self, key: str, names: Iterable[str]) -> bool:
        try:
            self.load(key, names)
        except CacheError:
            return False
        return True
