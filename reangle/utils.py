"""Small shared helpers: cache keys, atomic writes, device choice."""
from __future__ import annotations

import hashlib
import json
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import torch


def fingerprint(params: Any, *tensors: torch.Tensor, length: int | None = 16) -> str:
    """A hex digest (``length`` characters; ``None``: all 64) of JSON-able ``params`` and the
    bytes of ``tensors`` (cache keys)."""
    digest = hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode())
    for tensor in tensors:
        array = tensor.detach().cpu().contiguous().numpy()
        digest.update(str((array.shape, array.dtype.str)).encode())
        digest.update(array.tobytes())
    return digest.hexdigest()[:length]


def file_fingerprint(path: str | os.PathLike) -> str:
    """sha256 of a file's bytes, or of every file below a folder (names and bytes)."""
    path = Path(path)
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        digest.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:16]


def temporary_path(path: str | os.PathLike) -> Path:
    """A hidden sibling of ``path`` (same suffix) to write before renaming it into place."""
    path = Path(path)
    return path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")


def natural_key(name: str) -> tuple:
    """Sort key of a file name with its numbers read as numbers (``frame2`` before ``frame10``),
    case-insensitive."""
    return tuple(int(part) if i % 2 else part.casefold() for i, part in enumerate(re.split(r"(\d+)", name)))


def natural_sorted(paths: Iterable[Path], what: str, error: type[Exception] = ValueError) -> list[Path]:
    """``paths`` in natural order of their stems (:func:`natural_key`); ``error`` when two stems
    read the same (``frame1.png`` and ``frame01.png``, ``a.png`` and ``a.jpg``): the order is ambiguous."""
    keyed = sorted(((natural_key(p.stem), p.name, p) for p in paths), key=lambda item: item[:2])
    for (key, name, _), (next_key, next_name, _) in zip(keyed, keyed[1:]):
        if key == next_key:
            raise error(f"{what} holds {name} and {next_name}, whose order is ambiguous; rename the files so "
                        f"their numbers differ (e.g. frame0.png, frame1.png, ..., frame10.png)")
    return [p for _, _, p in keyed]


def current_umask() -> int:
    """The process's file-mode creation mask (from /proc where it exists: reading it never changes it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def umask_safetensors(path: str | os.PathLike) -> Path:
    """Give the ``.safetensors`` file ``path`` (or every one below the folder ``path``) the mode any new file
    gets (0666 less the umask): the safetensors library creates them 0600 whatever the umask."""
    path = Path(path)
    mode = 0o666 & ~current_umask()
    for file in sorted(path.rglob("*.safetensors")) if path.is_dir() else [path]:
        file.chmod(mode)
    return path
_STAGING = re.compile(r"^\.(?P<stem>.+)\.tmp(?P<pid>\d+)(?P<suffix>\.[^.]*)?$")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def clean_stale_staging(folder: str | os.PathLike) -> list[Path]:
    """Delete the staging files and folders (:func:`temporary_path` names, ``.<stem>.tmp<PID><suffix>``) in
    ``folder`` whose process is no longer alive on this machine; returns what was deleted."""
    import shutil

    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for entry in folder.iterdir():
        match = _STAGING.match(entry.name)
        if match is None or int(match["pid"]) == os.getpid() or _alive(int(match["pid"])):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def cache_lock(path: str | os.PathLike, timeout: float = -1):
    """An exclusive inter-process lock (``filelock``) for building and publishing the cache entry ``path``:
    the lock file is ``.<name>.lock`` beside it (kept; removing it would let two processes hold two locks)."""
    from filelock import FileLock

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(path.with_name(f".{path.name}.lock")), timeout=timeout)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    tmp.write_text(text)
    os.replace(tmp, path)
    return path


def read_yaml_mapping(path: str | os.PathLike, what: str, error: type[Exception] = ValueError) -> dict:
    """The mapping a YAML file holds; ``error`` saying which ``what`` (e.g. "sweep file") is missing,
    unparsable or not a mapping."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise error(f"{what} not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise error(f"cannot parse {what} {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise error(f"{what} {path} must hold a mapping")
    return data


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Save ``array`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_path(path)
    np.save(tmp, array)
    os.replace(tmp, path)
    return path


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def imagenet_normalize(images01: torch.Tensor) -> torch.Tensor:
    """``[B, 3, H, W]`` in [0, 1] -> normalised by the ImageNet mean and std (per channel)."""
    mean = images01.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = images01.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (images01 - mean) / std


def empty_cuda_cache() -> None:
    """Return the CUDA caching allocator's unused blocks to the device (after dropping models); no-op without CUDA."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def resolve_device(name: str = "auto") -> torch.device:
    """``auto``: the first CUDA device when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} asked for, but no CUDA device is available; use cpu or auto")
    return device


def build_with_weights(build, state: dict[str, torch.Tensor], what: str) -> torch.nn.Module:
    """``build()`` on the meta device, then ``state`` assigned strictly (no memory is spent on random
    init). ``what`` names the checkpoint in the error raised when the keys do not match."""
    with torch.device("meta"):
        module = build()
    missing, unexpected = module.load_state_dict(state, strict=False, assign=True)
    if missing or unexpected:
        raise ValueError(f"{what} does not match the architecture: missing keys {sorted(missing)[:5]}, "
                         f"unexpected keys {sorted(unexpected)[:5]}")
    return module


@contextmanager
def seeded(seed: int = 0) -> Iterator[None]:
    """Random draws inside the block (e.g. a tiny random model's initial weights) follow ``seed``, the
    same on every rank and in every run; the global RNG state is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
