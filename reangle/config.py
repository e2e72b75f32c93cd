"""Configuration: YAML files merged onto ``configs/base.yaml``, the ``experiment`` files
(``configs/experiment/``), ``key=value`` overrides, validation, ``instantiate()`` and saving
into a run directory.

``configs/base.yaml`` is the schema: it names every key. A key that a user file
or override adds is an error naming it; a key left at ``???`` is a missing-key
error naming it. The open places are a ``params:`` mapping next to a ``target:``
(the arguments of whatever ``target`` names), checked against the callable's
signature when :func:`instantiate` builds it, and a mapping that is empty (``{}``)
in the schema, whose keys the user names (e.g. ``sample.start_frames``).

Every value is checked against the type of its default in the schema (:func:`check_types`),
then against its range (:data:`RANGES`, :func:`check_ranges`; the frame size by the backbone):
an integer key takes integers, a number key integers or floats, a boolean key true/false, a
list key a list (of its default's element type), a mapping key a mapping; a string key (and
a required ``???`` key: a path or a name) takes any scalar, written as text. A ``null``
default takes anything; :data:`EXTRA_TYPES` lists the keys that take a second type.
"""
from __future__ import annotations

import importlib
import inspect
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException

from reangle.errors import InputError
from reangle.utils import atomic_write_text

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
BASE_CONFIG = CONFIG_DIR / "base.yaml"
RUN_CONFIG = "config.yaml"  # the resolved config that train.py saves into run.dir


class ConfigError(InputError):
    """A configuration that cannot be used, with the key that is wrong."""


# Keys that take a type besides their default's (see the comments in configs/base.yaml).
EXTRA_TYPES: dict[str, tuple[type, ...]] = {
    "data.fps": (float,),                     # 8, or e.g. 29.97
    "lora.alpha": (float,),
    "train.grad_clip": (type(None),),         # null: off
    "sample.grid_max_width": (type(None),),   # null: full size
    "trainer.devices": (str, list),           # 1, "auto", [0, 1]
    "trainer.strategy": (dict,),              # a name, or {target, params}
}


@dataclass(frozen=True)
class Bound:
    """A numeric key's range: finite, ``>= low`` (``> low`` when ``open``), and ``<= high`` if given."""

    low: float
    open: bool = False
    high: float | None = None

    def holds(self, value: float) -> bool:
        above = value > self.low if self.open else value >= self.low
        return math.isfinite(value) and above and (self.high is None or value <= self.high)

    def __str__(self) -> str:
        low = f"{'>' if self.open else '>='} {self.low:g}"
        return f"{low} and <= {self.high:g}" if self.high is not None else low


# The range of each numeric key (a null value, where the key takes null, is not checked); the frame
# size keys data.height, data.width, data.num_frames are the backbone's to judge (check_frame_grid).
RANGES: dict[str, Bound] = {
    "data.fps": Bound(0, open=True),
    "data.frame_start": Bound(0),
    "data.frame_stride": Bound(1),
    "camera.focal": Bound(0, open=True),
    "camera.pivot_distance": Bound(0, open=True),
    "lora.rank": Bound(1),
    "lora.alpha": Bound(0, open=True),
    "lora.dropout": Bound(0, high=1),
    "train.steps": Bound(1),
    "train.batch_size": Bound(1),
    "train.lr": Bound(0, open=True),
    "train.weight_decay": Bound(0),
    "train.eps": Bound(0, open=True),
    "train.grad_clip": Bound(0),             # a negative norm would scale gradients by a negative factor
    "train.image_dropout": Bound(0, high=1),
    "train.checkpoint_every": Bound(1),
    "sample.steps": Bound(1),
    "inpaint.steps": Bound(1),
    "inpaint.candidates": Bound(1),
}
# Keys that take one of a few values (null included where listed).
CHOICES: dict[str, tuple] = {
    "model.storage_dtype": (None, "fp8"),    # reangle.models.storage.STORAGE_DTYPES
    "inpaint.storage_dtype": (None, "fp8"),
    "inpaint.offload": (None, "group"),       # reangle.models.offload.OFFLOAD_MODES
}
_TYPE_NAMES = {bool: "true or false", int: "an integer", float: "a number", str: "a string", list: "a list",
               dict: "a mapping", type(None): "null"}
_ELEMENT_NAMES = {bool: "booleans", int: "integers", float: "numbers", str: "strings"}


def _expected(types: set[type], names: dict[type, str]) -> str:
    return " or ".join(names[k] for k in sorted(types, key=list(_TYPE_NAMES).index))


def _given(value: Any) -> str:
    return "a float" if isinstance(value, float) else _TYPE_NAMES[_kind(value)]


def _kind(value: Any) -> type:
    """The schema type of a plain value (bool before int: True is an int in Python)."""
    for kind in (bool, int, float, str, list, dict):
        if isinstance(value, kind):
            return kind
    return type(None)


def _accepts(expected: set[type], value: Any, text: bool) -> bool:
    """Whether ``value`` fits ``expected``; ``text``: any scalar fits (written as a string)."""
    kind = _kind(value)
    return kind in expected or (kind is int and float in expected) or (text and kind in (bool, int, float))


def check_types(cfg: DictConfig, schema: dict, prefix: str = "") -> None:
    """Check the resolved ``cfg`` against the resolved ``schema`` (plain containers of the base
    config) in place: scalars given for string keys become strings; a value of another type is
    a :class:`ConfigError` naming the key, the value and the type expected."""
    for key, default in schema.items():
        if key not in cfg or key == "params" or default is None:
            continue
        path, value = f"{prefix}{key}", cfg[key]
        plain = OmegaConf.to_container(value) if isinstance(value, (DictConfig, ListConfig)) else value
        expected, text = {_kind(default), *EXTRA_TYPES.get(path, ())}, isinstance(default, str)
        if not _accepts(expected, plain, text):
            raise ConfigError(f"config key {path}={plain!r}: expected {_expected(expected, _TYPE_NAMES)}, "
                              f"got {_given(plain)}")
        if text and _kind(plain) in (bool, int, float):
            cfg[key] = str(plain)
        elif isinstance(value, DictConfig) and isinstance(default, dict):
            check_types(value, default, path + ".")
        elif isinstance(plain, list) and isinstance(default, list) and default \
                and not isinstance(default[0], (list, dict)):
            element = {_kind(x) for x in default}
            bad = [x for x in plain if not _accepts(element, x, element == {str})]
            if bad:
                raise ConfigError(f"config key {path}={plain!r}: expected a list of "
                                  f"{_expected(element, _ELEMENT_NAMES)}, got {bad[0]!r} ({_given(bad[0])})")


def check_ranges(cfg: DictConfig) -> None:
    """Every key of :data:`RANGES` within its range, every key of :data:`CHOICES` one of its values, and
    the frame size one the backbone takes (:func:`check_frame_grid`); a :class:`ConfigError` naming the
    key, the value and what it may be."""
    for path, bound in RANGES.items():
        value = OmegaConf.select(cfg, path)
        if value is not None and not bound.holds(float(value)):
            raise ConfigError(f"config key {path}={value!r}: must be {bound}")
    for path, choices in CHOICES.items():
        value = OmegaConf.select(cfg, path)
        if value not in choices:
            names = ", ".join("null" if c is None else str(c) for c in choices)
            raise ConfigError(f"config key {path}={value!r}: must be one of {names}")
    check_frame_grid(cfg)


def check_frame_grid(cfg: DictConfig) -> None:
    """``data.height``, ``data.width`` and ``data.num_frames`` as the backbone of ``cfg.model`` takes them
    (its spec's ``frame_grid``)."""
    from reangle.models import spec_class

    model = OmegaConf.to_container(cfg.model, resolve=True)
    d = cfg.data
    problem = spec_class(model).frame_grid(model).problem(d.height, d.width, d.num_frames)
    if problem:
        raise ConfigError(f"data.height x data.width = {d.height} x {d.width} with data.num_frames={d.num_frames} "
                          f"does not fit model.pretrained={model['pretrained']}: {problem}")


def _open_params(node: Any) -> None:
    """Let ``params`` and empty mappings (and user-defined lists) take any key; the rest stays strict."""
    if isinstance(node, DictConfig):
        for key in node.keys():
            child = node._get_node(key)
            if isinstance(child, DictConfig) and (key == "params" or (not child._is_none() and len(child) == 0)):
                OmegaConf.set_struct(child, False)
            _open_params(child)
    elif isinstance(node, ListConfig):
        for child in node:
            if isinstance(child, DictConfig):
                OmegaConf.set_struct(child, False)


def _read_yaml(path: str | os.PathLike) -> DictConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        cfg = OmegaConf.load(path)
    except Exception as exc:  # yaml errors come in several types
        raise ConfigError(f"cannot parse config file {path}: {exc}") from exc
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return cfg


def _dotted_key(exc: OmegaConfBaseException) -> str:
    full_key = getattr(exc, "full_key", None)
    return full_key or str(exc).splitlines()[0]


def load_config(files: Sequence[str | os.PathLike] = (), overrides: Iterable[str] = (),
                base: str | os.PathLike = BASE_CONFIG) -> DictConfig:
    """Merge ``base`` + ``files`` (in order) + the ``experiment`` files + ``key=value`` ``overrides``;
    validate; resolve; check the types (:func:`check_types`).

    The ``experiment`` key (a list of names of ``configs/experiment/*.yaml`` or of YAML paths),
    set in a file or an override, adds those files after ``files`` and before the overrides.
    Raises :class:`ConfigError` naming the unknown or missing key, or the mistyped value.
    """
    schema = OmegaConf.to_container(_read_yaml(base), resolve=True, throw_on_missing=False)
    layers = [(str(f), _read_yaml(f)) for f in files]
    overrides = list(overrides)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
    command_line = [("command line", OmegaConf.from_dotlist(overrides))] if overrides else []
    cfg = _merge(base, layers + command_line)
    if not isinstance(cfg.experiment, ListConfig):
        raise ConfigError(f"config key experiment={cfg.experiment!r}: expected a list of names, "
                          f"e.g. experiment=[unmasked]")
    experiments = [(str(path), _read_yaml(path)) for path in experiment_files(cfg.experiment)]
    for source, layer in experiments:
        if "experiment" in layer:
            raise ConfigError(f"experiment file {source} sets 'experiment'; an experiment cannot name others")
    if experiments:
        cfg = _merge(base, layers + experiments + command_line)
    missing = sorted(_missing_keys(cfg))
    if missing:
        raise ConfigError(f"missing config key(s) {', '.join(missing)}: give a value in a config "
                          f"file or as key=value on the command line")
    try:
        OmegaConf.resolve(cfg)
    except OmegaConfBaseException as exc:
        raise ConfigError(f"cannot resolve config key {_dotted_key(exc)!r}: "
                          f"{str(exc).splitlines()[0]}") from exc
    check_types(cfg, schema)
    check_ranges(cfg)
    return cfg


def _merge(base: str | os.PathLike, layers: list[tuple[str, DictConfig]]) -> DictConfig:
    """``base`` (strict: only its keys) with ``(source, layer)`` merged in order."""
    cfg = _read_yaml(base)
    OmegaConf.set_struct(cfg, True)
    _open_params(cfg)
    for source, layer in layers:
        try:
            cfg = OmegaConf.merge(cfg, layer)
        except ConfigKeyError as exc:
            raise ConfigError(f"unknown config key {_dotted_key(exc)!r} (from {source}); "
                              f"see configs/base.yaml for the keys that exist") from exc
        except OmegaConfBaseException as exc:
            raise ConfigError(f"bad value for config key {_dotted_key(exc)!r} (from {source}): "
                              f"{str(exc).splitlines()[0]}") from exc
        _open_params(cfg)
    return cfg


def experiment_files(names: Iterable[str]) -> list[Path]:
    """The files of ``experiment`` names: ``configs/experiment/<name>.yaml``, or a path ending in .yaml."""
    out = []
    for name in names or ():
        name = str(name)
        path = Path(name) if name.endswith((".yaml", ".yml")) else CONFIG_DIR / "experiment" / f"{name}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
            raise ConfigError(f"experiment {name!r} not found ({path}); use one of {', '.join(known)} "
                              f"or a YAML file path")
        out.append(path)
    return out


def _missing_keys(node: Any, prefix: str = "") -> list[str]:
    out: list[str] = []
    if isinstance(node, DictConfig):
        for key in node.keys():
            path = f"{prefix}{key}"
            if OmegaConf.is_missing(node, key):
                out.append(path)
            else:
                out += _missing_keys(node._get_node(key), path + ".")
    return out


def save_config(cfg: DictConfig, run_dir: str | os.PathLike, name: str = "config.yaml") -> Path:
    """Write the resolved ``cfg`` to ``run_dir/name`` atomically; returns the path.

    The experiment files are merged into ``cfg`` already, so the file names them in a header
    comment and holds ``experiment: []``: loading it again gives ``cfg`` back.
    """
    data = OmegaConf.to_container(cfg, resolve=True)
    merged = data.get("experiment") or []
    data["experiment"] = []
    header = f"# merged experiments: {', '.join(map(str, merged))}\n" if merged else ""
    return atomic_write_text(Path(run_dir) / name, header + OmegaConf.to_yaml(OmegaConf.create(data)))


def _string_leaves(node: Any, prefix: str = "") -> Iterable[tuple[str, str]]:
    for key, value in node.items():
        if isinstance(value, dict):
            yield from _string_leaves(value, f"{prefix}{key}.")
        elif isinstance(value, str):
            yield f"{prefix}{key}", value


def load_run_config(run_dir: str | os.PathLike, files: Sequence[str | os.PathLike] = (),
                    overrides: Iterable[str] = ()) -> DictConfig:
    """A run's saved ``run_dir/config.yaml`` with ``files`` and ``overrides`` on top, re-rooted at ``run_dir``.

    The saved config is resolved, so its paths under the run directory (``sample.out_dir``,
    ``eval.out_dir``, ...) name the folder the run was trained in; every such path is moved
    under ``run_dir`` so that a moved or copied run, or one addressed from another working
    directory, reads and writes its own files.
    """
    run_dir = Path(run_dir)
    saved = OmegaConf.to_container(_read_yaml(run_dir / RUN_CONFIG))
    old = str(saved["run"]["dir"]).rstrip("/")
    rebased = [f"{key}={json.dumps(str(run_dir) + value[len(old):])}" for key, value in _string_leaves(saved)
               if value == old or value.startswith(old + "/")]
    return load_config([run_dir / RUN_CONFIG, *files], [*rebased, *overrides])


def import_target(dotted: str) -> Any:
    """Import ``package.module.attr`` and return ``attr``."""
    module_name, _, attr = dotted.rpartition(".")
    if not module_name:
        raise ConfigError(f"target {dotted!r} is not a dotted path like 'package.module.Name'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import module {module_name!r} for target {dotted!r}: {exc}") from exc
    try:
        return getattr(module, attr)
    except AttributeError as exc:
        raise ConfigError(f"module {module_name!r} has no {attr!r} (target {dotted!r})") from exc


def instantiate(node: Any, **extra: Any) -> Any:
    """Build ``target(**params, **extra)`` from a ``{target, params}`` mapping.

    Unknown parameter names are an error naming them (unless the callable takes ``**kwargs``).
    """
    if isinstance(node, DictConfig):
        node = OmegaConf.to_container(node, resolve=True)
    if not isinstance(node, dict) or "target" not in node:
        raise ConfigError(f"cannot instantiate {node!r}: it needs a 'target' key")
    target = import_target(node["target"])
    params = dict(node.get("params") or {})
    params.update(extra)
    try:
        signature = inspect.signature(target)
    except ValueError:  # some builtins have no signature: let the call itself complain
        return target(**params)
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())
    if not takes_any:
        unknown = sorted(set(params) - set(signature.parameters))
        if unknown:
            raise ConfigError(f"{node['target']} has no parameter(s) {', '.join(unknown)}; "
                              f"it takes {', '.join(signature.parameters)}")
    return target(**params)


def add_config_arguments(parser) -> None:
    """Add ``--config FILE [FILE ...]`` (repeatable: ``--config a.yaml --config b.yaml`` merges both,
    in order) and ``key=value`` overrides to an argparse parser."""
    parser.add_argument("--config", nargs="+", action="extend", default=[], metavar="FILE",
                        help="YAML files merged in order onto configs/base.yaml (the flag may be repeated)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="overrides, e.g. data.video=clip.mp4")


def split_config_tokens(tokens: Sequence[str], overrides: Iterable[str] = ()) -> tuple[list[str], list[str]]:
    """Config files and ``key=value`` overrides from ``--config`` tokens (an override may follow ``--config``)."""
    files = [t for t in tokens if "=" not in t]
    return files, [t for t in tokens if "=" in t] + list(overrides)


def config_from_args(args) -> DictConfig:
    """The config of parsed :func:`add_config_arguments` arguments."""
    return load_config(*split_config_tokens(args.config, args.overrides))
