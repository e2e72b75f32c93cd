"""W&B sweep files (``configs/sweeps/*.yaml``): reading them and drawing their trials offline.

The same file serves ``wandb sweep FILE`` + ``wandb agent`` and the offline runner
(``python -m reangle.sweep FILE``). What the runner reads:

* ``name`` (default: the file name), ``method``: ``grid`` (the cartesian product of every
  parameter's ``values``, in file order, the last parameter varying fastest) or ``random``
  (seeded draws; ``run_cap`` or the runner's ``--count`` says how many);
* ``parameters``: dotted config keys, each ``value``, ``values`` (+ ``probabilities``), or a
  ``distribution`` (``uniform``, ``int_uniform``, ``log_uniform_values``, ``log_uniform``,
  ``q_uniform``, ``normal``, ``log_normal``) with ``min``/``max`` (``mu``/``sigma``, ``q``);
* ``program`` and ``command``, which must pass the parameters as ``${args_no_hyphens}``
  (``key=value``, what ``train.py`` reads); ``${env}``, ``${interpreter}`` and ``${program}``
  are the other macros understood.
"""
from __future__ import annotations

import itertools
import math
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reangle.errors import InputError
from reangle.utils import read_yaml_mapping

METHODS = ("grid", "random")
ARGS = "${args_no_hyphens}"
MACROS = ("${env}", "${interpreter}", "${program}", ARGS)
DISTRIBUTIONS = ("constant", "categorical", "uniform", "int_uniform", "log_uniform_values", "log_uniform",
                 "q_uniform", "normal", "log_normal")


class SweepError(InputError):
    """A sweep file that cannot be run, with what is wrong."""


@dataclass(frozen=True)
class SweepSpec:
    name: str
    path: Path
    method: str
    parameters: dict[str, dict[str, Any]]
    program: str
    command: list[str]
    run_cap: int | None

    def program_args(self, overrides: list[str]) -> list[str]:
        """The arguments after the program: the command's own, with ``overrides`` in place of the macro."""
        tail = self.command[self.command.index("${program}") + 1:]
        out: list[str] = []
        for token in tail:
            out += list(overrides) if token == ARGS else [token]
        return out

    def argv(self, overrides: list[str]) -> list[str]:
        """The whole command line of one trial (``${env}`` dropped, ``${interpreter}`` = this Python)."""
        head = self.command[: self.command.index("${program}")]
        head = [sys.executable if t == "${interpreter}" else t for t in head if t != "${env}"]
        return head + [self.program] + self.program_args(overrides)


def load_sweep(path: str | os.PathLike) -> SweepSpec:
    """Read and check a W&B sweep file; raises :class:`SweepError` naming what is wrong."""
    path = Path(path)
    data = read_yaml_mapping(path, "sweep file", SweepError)
    method = data.get("method")
    if method not in METHODS:
        raise SweepError(f"sweep file {path}: method {method!r} cannot run offline; use one of {METHODS}")
    parameters = data.get("parameters")
    if not isinstance(parameters, dict) or not parameters:
        raise SweepError(f"sweep file {path} needs a non-empty 'parameters' mapping of config keys")
    for key, param in parameters.items():
        _check_parameter(path, method, key, param)
    command = data.get("command")
    if not isinstance(command, list) or command.count(ARGS) != 1 or "${program}" not in command:
        raise SweepError(f"sweep file {path}: 'command' must be a list holding ${{program}} and {ARGS} once "
                         f"(train.py reads key=value), e.g. [${{env}}, ${{interpreter}}, ${{program}}, --config, "
                         f"configs/static.yaml, {ARGS}]")
    unknown = sorted({t for t in map(str, command) if t.startswith("${") and t not in MACROS})
    if unknown:
        raise SweepError(f"sweep file {path}: command macro(s) {unknown} are not supported; use {', '.join(MACROS)}")
    program = data.get("program")
    if not isinstance(program, str) or not program:
        raise SweepError(f"sweep file {path} needs 'program' (the script the command runs, e.g. train.py)")
    run_cap = data.get("run_cap")
    if run_cap is not None and (not isinstance(run_cap, int) or run_cap < 1):
        raise SweepError(f"sweep file {path}: run_cap must be a positive integer, got {run_cap!r}")
    return SweepSpec(name=str(data.get("name") or path.stem), path=path, method=method, parameters=parameters,
                     program=program, command=[str(t) for t in command], run_cap=run_cap)


def _distribution(param: dict[str, Any]) -> str:
    if "distribution" in param:
        return param["distribution"]
    if "value" in param:
        return "constant"
    if "values" in param:
        return "categorical"
    if isinstance(param.get("min"), int) and isinstance(param.get("max"), int):
        return "int_uniform"
    return "uniform"


def _check_parameter(path: Path, method: str, key: str, param: Any) -> None:
    where = f"sweep file {path}, parameter {key!r}"
    if not isinstance(param, dict):
        raise SweepError(f"{where}: must be a mapping with 'value', 'values' or a 'distribution'")
    if "parameters" in param:
        raise SweepError(f"{where}: nested parameters are not supported; name the dotted config key instead "
                         f"(e.g. lora.rank)")
    kind = _distribution(param)
    if kind not in DISTRIBUTIONS:
        raise SweepError(f"{where}: distribution {kind!r} is not supported offline; use one of {DISTRIBUTIONS}")
    if method == "grid" and kind not in ("constant", "categorical"):
        raise SweepError(f"{where}: a grid sweep needs 'value' or 'values', not a {kind} distribution")
    needs = {"constant": ("value",), "categorical": ("values",), "normal": (), "log_normal": ()}.get(kind, ("min", "max"))
    missing = [k for k in needs if k not in param]
    if missing:
        raise SweepError(f"{where}: {kind} needs {', '.join(missing)}")
    if kind == "categorical" and (not isinstance(param["values"], list) or not param["values"]):
        raise SweepError(f"{where}: 'values' must be a non-empty list")
    if kind == "log_uniform_values" and param["min"] <= 0:
        raise SweepError(f"{where}: log_uniform_values needs min > 0")


def _draw(param: dict[str, Any], rng: random.Random) -> Any:
    kind = _distribution(param)
    lo, hi = param.get("min"), param.get("max")
    if kind == "constant":
        return param["value"]
    if kind == "categorical":
        return rng.choices(param["values"], weights=param.get("probabilities"))[0]
    if kind == "int_uniform":
        return rng.randint(int(lo), int(hi))
    if kind == "uniform":
        return rng.uniform(lo, hi)
    if kind == "log_uniform_values":
        return math.exp(rng.uniform(math.log(lo), math.log(hi)))
    if kind == "log_uniform":
        return math.exp(rng.uniform(lo, hi))
    if kind == "q_uniform":
        q = param.get("q", 1.0)
        return round(rng.uniform(lo, hi) / q) * q
    value = rng.gauss(param.get("mu", 0.0), param.get("sigma", 1.0))
    return math.exp(value) if kind == "log_normal" else value


def draw_trials(spec: SweepSpec, count: int | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """The parameter sets of the sweep: the grid (cut at ``count`` or ``run_cap``), or ``count``
    (else ``run_cap``) seeded random draws."""
    count = count if count is not None else spec.run_cap
    if spec.method == "grid":
        keys = list(spec.parameters)
        choices = [[p["value"]] if _distribution(p) == "constant" else list(p["values"])
                   for p in spec.parameters.values()]
        trials = [dict(zip(keys, combo)) for combo in itertools.product(*choices)]
        return trials[:count] if count is not None else trials
    if count is None:
        raise SweepError(f"random sweep {spec.path} never ends by itself: set run_cap in the file or pass --count N")
    rng = random.Random(seed)
    return [{key: _draw(param, rng) for key, param in spec.parameters.items()} for _ in range(count)]
