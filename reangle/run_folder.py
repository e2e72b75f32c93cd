"""The run folder's lifecycle: one ``run.dir`` belongs to one resolved config.

``train.py`` claims ``run.dir`` before any work (:func:`claim`): it writes ``run.json``
(``{"fingerprint": ..., "config": ...}``, the config that fingerprint is taken of) and the
resolved ``config.yaml``. Then:

- a new or empty folder is claimed;
- a folder claimed by another config is refused with one sentence naming the keys that
  differ (pick another ``run.name``, or delete the folder);
- a folder claimed by the same config and holding checkpoints is refused without
  ``train.resume`` (a second run would mix with the first), and continued with it;
- a folder without ``run.json`` that holds run outputs (:data:`RUN_ENTRIES`, e.g. a run of an older
  version) is refused; other files (e.g. a sweep's ``trial.log``) are left alone.

The fingerprint (:func:`run_fingerprint`) is the resolved config without the keys that do not
change any result: ``logger.*`` and ``trainer.log_every_n_steps`` (logging), ``train.resume``
(how the run is continued), ``eval.*`` (how the run is scored: ``python -m eval`` scores it again
under any settings, and ``eval.json`` records the ones it used), ``run.root``, ``run.name``, ``run.dir`` and ``run.cache_dir``
(where things live; paths under ``run.dir`` are compared relative to it, so a moved run keeps
its fingerprint), and the device keys (``depth.device``, ``warp.device``,
``train.encode_device``, ``sample.device``, ``inpaint.device``).

Every stage's outputs carry the run's identity: checkpoints the fingerprint
(:data:`CHECKPOINT_KEY`), ``omega.json`` the Omega key, stage III's ``scores.json`` the Omega
key and settings, each sampled ``<view>.json`` the fingerprint (``run``); nothing of another
run is used.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from reangle.config import save_config
from reangle.errors import InputError
from reangle.utils import atomic_write_text, clean_stale_staging, fingerprint

RUN_RECORD = "run.json"
CHECKPOINT_KEY = "reangle_run"  # the fingerprint inside every checkpoint the run writes
IGNORED_KEYS = ("logger", "trainer.log_every_n_steps", "train.resume", "eval", "run.root", "run.name", "run.dir",
                "run.cache_dir", "depth.device", "warp.device", "train.encode_device", "sample.device",
                "inpaint.device")
RUN_DIR_TOKEN = "<run.dir>"
RUN_ENTRIES = ("config.yaml", "omega.json", "checkpoints", "lora", "start_frames", "samples", "logs", "eval.json")


class RunFolderError(InputError):
    """A run folder that holds another run, or a checkpoint of another config."""


def _flat(node: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for key, value in node.items():
            out.update(_flat(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: node}


def fingerprinted_config(cfg: DictConfig) -> dict[str, Any]:
    """The flat ``{dotted key: value}`` the fingerprint is taken of (see the module docstring)."""
    flat = _flat(OmegaConf.to_container(cfg, resolve=True))
    run_dir = str(cfg.run.dir).rstrip("/")
    out = {}
    for key, value in flat.items():
        if any(key == k or key.startswith(k + ".") for k in IGNORED_KEYS):
            continue
        if isinstance(value, str) and (value == run_dir or value.startswith(run_dir + "/")):
            value = RUN_DIR_TOKEN + value[len(run_dir):]
        out[key] = value
    return out


def run_fingerprint(cfg: DictConfig) -> str:
    """The identity of the run ``cfg`` describes (32 hex characters)."""
    return fingerprint(fingerprinted_config(cfg), length=32)


def recorded_fingerprint(run_dir: str | os.PathLike) -> str | None:
    """The fingerprint in ``run_dir/run.json``, or ``None`` when there is none."""
    record = Path(run_dir) / RUN_RECORD
    if not record.is_file():
        return None
    return json.loads(record.read_text())["fingerprint"]


def _differing(old: dict[str, Any], new: dict[str, Any], shown: int = 4) -> str:
    keys = sorted(k for k in set(old) | set(new) if old.get(k, "<absent>") != new.get(k, "<absent>"))
    text = ", ".join(f"{k}: {old.get(k, '<absent>')!r} -> {new.get(k, '<absent>')!r}" for k in keys[:shown])
    return text + (f" and {len(keys) - shown} more" if len(keys) > shown else "")


def has_checkpoints(run_dir: str | os.PathLike) -> bool:
    folder = Path(run_dir) / "checkpoints"
    return folder.is_dir() and any(folder.glob("*.ckpt"))


def claim(cfg: DictConfig) -> str:
    """Claim ``run.dir`` for ``cfg`` (rules in the module docstring): write ``run.json`` and
    ``config.yaml``, and clean staging files of dead processes. Returns the fingerprint."""
    folder = Path(cfg.run.dir)
    current = fingerprinted_config(cfg)
    fp = run_fingerprint(cfg)
    record = folder / RUN_RECORD
    if record.is_file():
        stored = json.loads(record.read_text())
        if stored["fingerprint"] != fp:
            raise RunFolderError(f"run folder {folder} holds a run of another config ({_differing(stored['config'], current)}); "
                                 f"choose another run.name, or delete the folder to start over")
        if not cfg.train.resume and has_checkpoints(folder):
            raise RunFolderError(f"run folder {folder} already holds this config's run (checkpoints/ is not empty); "
                                 f"continue it with train.resume=last, or choose another run.name")
    elif folder.is_dir() and any((folder / name).exists() for name in RUN_ENTRIES):
        raise RunFolderError(f"run folder {folder} holds run outputs but no {RUN_RECORD} (a run of an older "
                             f"version), so they cannot be told apart from this run's; choose another run.name, or "
                             f"delete the folder")
    folder.mkdir(parents=True, exist_ok=True)
    clean_stale_staging(folder)
    atomic_write_text(record, json.dumps({"fingerprint": fp, "config": current}, indent=1))
    save_config(cfg, folder)
    return fp


def check_checkpoint(cfg: DictConfig, path: str | os.PathLike) -> None:
    """Refuse (one sentence) a checkpoint that another config wrote (``train.resume`` needs the same config)."""
    import torch

    try:
        stored = torch.load(path, map_location="cpu", weights_only=False, mmap=True).get(CHECKPOINT_KEY)
    except Exception as exc:
        raise RunFolderError(f"train.resume: cannot read checkpoint {path}: {exc}") from exc
    if stored != run_fingerprint(cfg):
        raise RunFolderError(f"train.resume: checkpoint {path} was written by a run of another config (run "
                             f"fingerprint {stored} != {run_fingerprint(cfg)}); resume with the config it was "
                             f"trained with (its run folder's config.yaml)")


def missing_outputs(cfg: DictConfig, omega) -> list[str]:
    """What the run of ``cfg`` should have written and has not (empty when complete): the final LoRA,
    stage III's start frames (static mode, ``inpaint.enabled``) and the sampled views
    (``sample.at_train_end``), each counted only when its completion record names this run / Omega."""
    from reangle.data.omega import INPUT_VIEW
    from reangle.sampling.plan import inpainted_views

    run_dir, fp = Path(cfg.run.dir), run_fingerprint(cfg)
    missing = [] if (run_dir / "lora" / "final").is_dir() else ["LoRA (lora/final)"]
    every = [v.name for v in omega.views if v.name != INPUT_VIEW]
    if cfg.mode == "static" and cfg.inpaint.enabled:
        todo = [v for v in (list(cfg.inpaint.views) if cfg.inpaint.views else every)
                if v not in inpainted_views(run_dir, omega)]
        missing += [f"start frame {v} (stage III)" for v in todo]
    if cfg.sample.at_train_end:
        out = Path(cfg.sample.out_dir)
        for view in list(cfg.sample.views) if cfg.sample.views else every:
            try:
                done = json.loads((out / f"{view}.json").read_text()).get("run") == fp and (out / f"{view}.mp4").is_file()
            except (OSError, json.JSONDecodeError):
                done = False
            if not done:
                missing.append(f"sampled view {view}")
    return missing
