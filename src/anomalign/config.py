"""Typed command configs: dataclass defaults < YAML file (``--config``) < command-line flags.

Every command has one dataclass. Its fields carry their help text in ``metadata["help"]``; the CLI
builds its flags from the fields, so a new option is added in one place and shows up in ``--help``,
in YAML files and in the ``config.yaml`` saved beside every output.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from anomalign.errors import ConfigError


def option(default: Any = dataclasses.MISSING, help: str = "", *, positional: bool = False,
           default_factory: Any = dataclasses.MISSING, aliases: tuple[str, ...] = ()) -> Any:
    """A dataclass field with CLI help. ``positional=True`` makes it a positional argument;
    ``aliases`` are extra flag spellings (e.g. ones launchers like torchrun do not mistake for theirs)."""
    meta = {"help": help, "positional": positional, "aliases": tuple(aliases)}
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Convert ``value`` (from YAML or argparse) to type ``tp`` or raise ConfigError naming ``where``."""
    tp, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{where}: a value is required (got null)")
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            raise ConfigError(f"{where}: {value!r} is not one of {list(choices)}")
        return value
    if origin in (list, tuple):
        (item_tp, *_rest) = typing.get_args(tp) or (str,)
        if isinstance(value, (str, int, float)):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        items = [_coerce(v, item_tp, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "1", "false", "no", "0"):
            return value.lower() in ("true", "yes", "1")
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
        if not math.isfinite(number):  # 'nan' and 'inf' parse as floats and would flow silently into outputs
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return number
    if tp is Path:
        if not isinstance(value, (str, Path)):
            raise ConfigError(f"{where}: expected a path, got {value!r}")
        return Path(value)
    if tp is str:
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def build_config(cls: type, values: dict[str, Any], source: str = "config") -> Any:
    """Make a ``cls`` instance from a plain dict, checking names and types; errors name ``source``."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"{source}: unknown option(s) {unknown}; valid options: {sorted(names)}")
    values = apply_recipe(cls, values, source)
    kwargs = {k: _coerce(v, hints[k], f"{source}: option '{k}'") for k, v in values.items()}
    try:
        cfg = cls(**kwargs)
    except TypeError as e:  # a required field is missing
        raise ConfigError(f"{source}: {e}") from None
    check = getattr(cfg, "validate", None)
    if check is not None:
        check()
    return cfg


def apply_recipe(cls: type, values: dict[str, Any], source: str = "config") -> dict[str, Any]:
    """``values`` completed by the recipe it names (``cls.RECIPES[values["recipe"]]``, or the class's default
    recipe): a recipe is a set of defaults, so every option the user gave (flag or YAML) still wins."""
    recipes = getattr(cls, "RECIPES", None)
    if not recipes:
        return values
    name = values.get("recipe", next(f.default for f in dataclasses.fields(cls) if f.name == "recipe"))
    if name not in recipes:
        raise ConfigError(f"{source}: unknown recipe {name!r}; choose one of {list(recipes)}")
    return {**recipes[name], **values}


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping with ``safe_load``; errors name the file."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config file ({e.strerror or e})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML ({e})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of option: value, got {type(data).__name__}")
    return data


def load_config(cls: type, path: Path) -> Any:
    """Load a saved or hand-written YAML config as ``cls``."""
    return build_config(cls, read_yaml(path), source=str(path))


def config_to_dict(cfg: Any) -> dict[str, Any]:
    """A YAML-safe dict (paths as strings, tuples as lists)."""
    def plain(v: Any) -> Any:
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v
    return {f.name: plain(getattr(cfg, f.name)) for f in dataclasses.fields(cfg)}


def save_config(cfg: Any, path: Path) -> None:
    """Write ``cfg`` as YAML (atomically: a partial file is never left behind)."""
    from anomalign.files import write_text_atomic
    write_text_atomic(path, yaml.safe_dump(config_to_dict(cfg), sort_keys=False))


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, front: dict[str, list[str]] | None = None,
                         show_all: bool = True) -> None:
    """Add one flag per field of ``cls`` (plus ``--config``) to ``parser``.

    Flags default to ``argparse.SUPPRESS`` so that only flags the user typed override the YAML file.
    ``front``: group title -> the fields ``--help`` shows under it (the options a user changes); every other
    field is still a flag and a YAML key, listed under "more options" when ``show_all`` (``--help-all``) and
    hidden from ``--help`` otherwise.
    """
    hints = typing.get_type_hints(cls)
    parser.add_argument("--config", type=Path, default=None, metavar="YAML",
                        help="YAML file with any of the options below; flags typed here override it")
    names = {f.name for f in dataclasses.fields(cls)}
    group_of: dict[str, Any] = {}
    if front:
        parser.add_argument("--help-all", action="store_true", help="show every option, research knobs included "
                            "(they can also be set as keys of the --config YAML)")
        for title, fields_ in front.items():
            group = parser.add_argument_group(f"{title} options")
            group_of |= {name: group for name in fields_ if name in names}
        more = parser.add_argument_group("more options") if show_all else None
    for f in dataclasses.fields(cls):
        tp, _ = _unwrap_optional(hints[f.name])
        help_text = f.metadata.get("help", "")
        if f.default is not dataclasses.MISSING and f.default is not None and not f.metadata.get("positional"):
            shown = f.default
            if isinstance(shown, (list, tuple)):
                shown = " ".join(map(str, shown)) or "none"
            help_text = f"{help_text} (default: {shown})"
        kwargs: dict[str, Any] = {"help": help_text, "default": argparse.SUPPRESS}
        target = parser
        if front:
            target = group_of.get(f.name) or (more if show_all else parser)
            if not show_all and f.name not in group_of and not f.metadata.get("positional"):
                kwargs["help"] = argparse.SUPPRESS
        origin = typing.get_origin(tp)
        if origin is Literal:
            kwargs["choices"] = list(typing.get_args(tp))
        elif origin in (list, tuple):
            kwargs["nargs"] = "+"
        elif tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        if f.metadata.get("positional"):
            required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            if not required:
                kwargs["nargs"] = "?"
            target.add_argument(f.name, metavar=f.name.upper(), **kwargs)
        else:
            target.add_argument("--" + f.name.replace("_", "-"), *f.metadata.get("aliases", ()), dest=f.name, **kwargs)


def config_from_args(cls: type, ns: argparse.Namespace) -> Any:
    """Merge defaults, the YAML file named by ``--config`` and the typed flags into a ``cls``."""
    values: dict[str, Any] = {}
    source = "command line"
    if getattr(ns, "config", None):
        values.update(read_yaml(ns.config))
        source = f"{ns.config} + command line"
    for f in dataclasses.fields(cls):
        if f.name in vars(ns):
            values[f.name] = getattr(ns, f.name)
    return build_config(cls, values, source=source)
