"""Which W&B run a process logs to: the mode (``logger.wandb_mode``), the run id, and a
trial started by ``wandb agent``.

* ``auto`` goes online when wandb itself finds credentials (``WANDB_API_KEY``, the settings
  file or ``~/.netrc`` of ``wandb login``; asked through the lookup ``wandb.Api()`` uses,
  without its prompt and without going to the network), else offline.
* Under ``wandb agent`` (``WANDB_SWEEP_ID`` and ``WANDB_RUN_ID`` in the environment) every
  trial runs the same command line: :func:`agent_overrides` gives it its own run folder
  (``run.name`` + ``-<run id>``) and groups it by the sweep (``logger.group`` when unset).
* The run id is recorded in ``run.dir/wandb_run.json`` (:data:`RUN_RECORD`), so a later
  process (``python -m eval``) logs into the same W&B run instead of a second one.
"""
from __future__ import annotations

import json
import os
import secrets
import string
from pathlib import Path
from typing import Mapping

import yaml

from reangle.config import ConfigError
from reangle.utils import atomic_write_text

SWEEP_ID, RUN_ID = "WANDB_SWEEP_ID", "WANDB_RUN_ID"
AGENT_VARIABLES = (SWEEP_ID, RUN_ID, "WANDB_SWEEP_PARAM_PATH")
RUN_RECORD = "wandb_run.json"
LORA_ARTIFACT = ("auto", "true", "false")
TAG_LIMIT = 64  # W&B's longest tag


def agent_trial(environ: Mapping[str, str] = os.environ) -> tuple[str, str] | None:
    """``(sweep id, run id)`` when this process is a trial started by ``wandb agent``, else None."""
    sweep, run = environ.get(SWEEP_ID), environ.get(RUN_ID)
    return (sweep, run) if sweep and run else None


def agent_overrides(cfg, environ: Mapping[str, str] = os.environ) -> list[str]:
    """``key=value`` overrides that give an agent's trial (``cfg``: its config as given) its own run
    folder, the sweep as W&B group, and tags naming the sweep, the video and each swept value
    (``[]`` outside an agent)."""
    trial = agent_trial(environ)
    if trial is None:
        return []
    sweep, run = trial
    name = cfg.run.name if cfg.run.name.endswith(f"-{run}") else f"{cfg.run.name}-{run}"
    tags = [*cfg.logger.tags, f"sweep:{sweep}", f"video:{Path(str(cfg.data.video)).stem}"]
    tags += [f"{key}={json.dumps(value)}" for key, value in swept_values(environ).items()]
    tags = list(dict.fromkeys(tag[:TAG_LIMIT] for tag in tags))
    out = [f"run.name={json.dumps(name)}", f"logger.tags={json.dumps(tags)}"]
    return out + ([] if cfg.logger.group else [f"logger.group={json.dumps(f'sweep-{sweep}')}"])


def swept_values(environ: Mapping[str, str] = os.environ) -> dict:
    """The trial's swept ``{key: value}`` from the file the agent writes (``WANDB_SWEEP_PARAM_PATH``)."""
    path = environ.get("WANDB_SWEEP_PARAM_PATH")
    if not path or not Path(path).is_file():
        return {}
    data = yaml.safe_load(Path(path).read_text()) or {}
    return {k: v.get("value") for k, v in data.items() if isinstance(v, dict) and "value" in v}


def resolve_mode(mode: str) -> tuple[str, str]:
    """The W&B mode to use for ``logger.wandb_mode`` and why (for the line printed at start)."""
    if mode != "auto":
        return mode, f"logger.wandb_mode={mode}"
    if os.environ.get("WANDB_MODE") in ("offline", "disabled", "online"):
        return os.environ["WANDB_MODE"], f"auto: WANDB_MODE={os.environ['WANDB_MODE']}"
    from wandb.sdk import wandb_setup
    from wandb.sdk.lib import wbauth

    try:  # the lookup of wandb.Api(): session, WANDB_API_KEY, ~/.netrc, settings; no prompt, no network
        found = wbauth.authenticate_session(host=wandb_setup.singleton().settings.base_url, source="reangle",
                                            prompt=False, update_session=False)
    except Exception as exc:  # a key in the wrong format
        return "offline", f"auto: W&B credentials unusable ({exc}); sync later with `wandb sync`"
    if found is not None:
        return "online", "auto: W&B credentials found"
    return "offline", "auto: no W&B credentials (WANDB_API_KEY or `wandb login`); sync later with `wandb sync`"


def new_run_id() -> str:
    """A fresh W&B run id (8 lowercase letters and digits, as W&B makes them)."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def wants_lora_artifact(logger_cfg) -> bool:
    """Whether the final LoRA goes to W&B as an artifact (``logger.lora_artifact``: ``auto`` = when online)."""
    setting = str(logger_cfg.lora_artifact).lower()
    if setting not in LORA_ARTIFACT:
        raise ConfigError(f"logger.lora_artifact={logger_cfg.lora_artifact!r}: use one of {', '.join(LORA_ARTIFACT)}")
    if logger_cfg.kind != "wandb" or setting == "false":
        return False
    return setting == "true" or resolve_mode(logger_cfg.wandb_mode)[0] == "online"


def recorded_run(run_dir: str | os.PathLike) -> dict | None:
    """The W&B run recorded in ``run_dir`` (``id``, ``project``, ``group``, ``mode``), or None."""
    path = Path(run_dir) / RUN_RECORD
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except json.JSONDecodeError:
        return None


def record_run(run_dir: str | os.PathLike, run_id: str, project: str, group: str | None, mode: str) -> Path:
    """Write ``run_dir/wandb_run.json``."""
    return atomic_write_text(Path(run_dir) / RUN_RECORD, json.dumps(
        {"id": run_id, "project": project, "group": group, "mode": mode}, indent=1))


def finish_run() -> None:
    """End this process's W&B run, if one is open, so a later process of the same run folder
    (``python -m eval``) can resume it: a run left open is "in use" for the W&B service that holds it."""
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish()
