"""The flag machinery: configuration dataclasses loaded from defaults < YAML file < command-line flags.

Every command keeps its knobs in one dataclass of :mod:`blocksft.config`
(``field(metadata={"help": ...})``, checks in ``__post_init__``). :func:`add_dataclass_arguments`
turns its fields into flags, accepting both ``--max-len`` and ``--max_len``; :func:`build_config`
layers a YAML file under the flags that were actually given. Written here rather than with
``transformers.HfArgumentParser`` because that parser cannot layer a YAML file under flags inside
argparse subcommands.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from blocksft.errors import BlocksftError

T = TypeVar("T")


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _none_or(convert):
    def parse(text: str):
        return None if text.lower() in ("none", "null") else convert(text)

    parse.__name__ = getattr(convert, "__name__", "value")
    return parse


def flag_name(field_name: str) -> str:
    """The flag of a config field: ``max_len`` -> ``--max-len``."""
    return "--" + field_name.replace("_", "-")


class OneLineParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line, as every other error (the usage is one --help away)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def add_dataclass_arguments(
    parser: argparse.ArgumentParser, cls: type, *, exclude: tuple[str, ...] = ()
) -> None:
    """Add one flag per field of dataclass ``cls`` to ``parser``.

    Flags default to ``argparse.SUPPRESS`` so that :func:`build_config` can tell a flag that was
    given from a default. Booleans get ``--flag/--no-flag``; ``Literal`` fields get choices;
    ``Optional`` fields accept ``none``; list fields take several values.
    """
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init or f.name in exclude:
            continue
        tp, optional = _unwrap_optional(hints[f.name])
        names = [flag_name(f.name)]
        if "_" in f.name:
            names.append(f"--{f.name}")
        names += list(f.metadata.get("aliases", ()))
        kwargs: dict[str, Any] = {"dest": f.name, "default": argparse.SUPPRESS}
        default = f.default if f.default is not dataclasses.MISSING else None
        help_text = f.metadata.get("help", "")
        kwargs["help"] = f"{help_text} (default: {default!r})" if help_text else f"default: {default!r}"
        if tp is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(tp) is Literal:
            choices = typing.get_args(tp)
            kwargs["choices"] = list(choices) + ([None] if optional else [])
            kwargs["type"] = _none_or(type(choices[0])) if optional else type(choices[0])
        elif typing.get_origin(tp) is list:
            (item,) = typing.get_args(tp)
            kwargs["nargs"] = "+"
            kwargs["type"] = item
        else:
            kwargs["type"] = _none_or(tp) if optional else tp
        parser.add_argument(*names, **kwargs)


def load_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping; keys may use dashes or underscores."""
    path = Path(path)
    if not path.is_file():
        raise BlocksftError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as err:
        raise BlocksftError(
            f"config file {path} is not UTF-8 text ({err.reason} at byte {err.start})"
        ) from err
    except yaml.YAMLError as err:
        where = getattr(err, "problem_mark", None)
        line = f" (line {where.line + 1})" if where is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise BlocksftError(f"config file {path} is not valid YAML{line}: {problem}") from err
    if not isinstance(data, dict):
        raise BlocksftError(f"config file {path} must hold a mapping of keys to values")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def build_config(
    cls: type[T], args: argparse.Namespace | None = None, yaml_path: str | Path | None = None
) -> T:
    """Instantiate ``cls`` from its defaults, then the YAML file, then the flags given in ``args``.

    Unknown YAML keys are an error (a typo would otherwise be ignored silently).
    """
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    if yaml_path is not None:
        data = load_yaml(yaml_path)
        unknown = sorted(set(data) - names)
        if unknown:
            raise BlocksftError(
                f"config file {yaml_path}: unknown keys {unknown}; known keys: {sorted(names)}"
            )
        where = f"config file {yaml_path}: {{name}}:"
        values.update({k: _checked_value(v, hints[k], where.format(name=k)) for k, v in data.items()})
    if args is not None:
        flags = {k: v for k, v in vars(args).items() if k in names}
        values.update({k: _checked_value(v, hints[k], flag_name(k)) for k, v in flags.items()})
    try:
        return cls(**values)
    except (TypeError, ValueError) as err:
        raise BlocksftError(f"invalid {cls.__name__}: {err}") from err


def _checked_value(value: Any, hint: Any, where: str) -> Any:
    """A setting's value, refused when it cannot be meant: a number that is not finite or not a
    number at all, text that is not UTF-8 (bytes the shell passed through). Numbers in a YAML file
    take the field's type (PyYAML reads ``1e-5`` as text)."""
    tp, _ = _unwrap_optional(hint)
    if tp in (int, float) and value is not None:
        value = _as_number(value, tp, where)
        if tp is float and not math.isfinite(value):
            raise BlocksftError(f"{where} {value} is not a finite number")
    for text in value if isinstance(value, list) else [value]:
        if isinstance(text, str):
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as err:
                raise BlocksftError(
                    f"{where} is not valid UTF-8 text (byte {err.start}); re-encode it"
                ) from err
    return value


def _as_number(value: Any, tp: type, where: str) -> int | float:
    kind = "an integer" if tp is int else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise BlocksftError(f"{where} {value!r} is not {kind}")
    try:
        number = tp(value) if tp is float or not isinstance(value, float) else None
    except ValueError:
        number = None
    if number is None:
        raise BlocksftError(f"{where} {value!r} is not {kind}")
    return number


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-friendly dict of a (possibly nested) config dataclass."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(config).items()}
