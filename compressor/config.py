"""The base of every workflow config (torchao's shape, open_lth's flags).

A config is a dataclass deriving from `Config`: `validate()` runs in `__post_init__` and raises a
one-line CompressorError naming the field; `to_dict()` / `from_dict()` round-trip through JSON and
TOML (unknown keys are errors, naming the closest known key); `add_flags()` / `from_args()` turn
the fields into command-line flags, so one idea has one flag name in every command.

Field metadata understood by the flag generator: help (text), choices (allowed values),
flag (False to keep a field off the command line).
"""

import argparse
import dataclasses
import difflib
import functools
import math
import operator
import types
import typing
from dataclasses import dataclass

from compressor.errors import CompressorError


def _strip_optional(tp):
    """(inner type, whether None is allowed) of `X | None` / Optional[X]."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return (rest[0] if len(rest) == 1 else functools.reduce(operator.or_, rest)), True
    return tp, False


def _convert(value, tp, name: str):
    """value coerced to annotation tp (from JSON/TOML or a flag string), or a clear error."""
    tp, optional = _strip_optional(tp)
    if value is None or (optional and isinstance(value, str) and value.lower() == "none"):
        if optional:
            return None
        raise CompressorError(f"{name} must not be empty")
    origin = typing.get_origin(tp)
    if origin is tuple:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, (list, tuple)):
            raise CompressorError(f"{name} must be a list, got {value!r}")
        args = typing.get_args(tp)
        item_type = args[0] if args else str
        return tuple(_convert(v.strip() if isinstance(v, str) else v, item_type, name)
                     for v in items if not (isinstance(v, str) and not v.strip()))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise CompressorError(f"{name} must be a table of key = value, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("1", "true", "yes", "on", "0", "false",
                                                        "no", "off"):
            return value.lower() in ("1", "true", "yes", "on")
        raise CompressorError(f"{name} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
            raise CompressorError(f"{name} must be an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise CompressorError(f"{name} must be an integer, got {value!r}") from None
    if tp is float:
        try:
            out = float(value)
        except (TypeError, ValueError):
            raise CompressorError(f"{name} must be a number, got {value!r}") from None
        if not math.isfinite(out):
            raise CompressorError(f"{name} must be a finite number, got {value!r}")
        return out
    if tp is str:
        if not isinstance(value, str):
            raise CompressorError(f"{name} must be a string, got {value!r}")
        return value
    return value


@dataclass
class Config:
    """Base of the workflow configs; subclasses add fields and override `validate`."""

    def __post_init__(self):
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            setattr(self, f.name, _convert(value, hints[f.name], self._field_label(f.name)))
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices is not None and value is not None:
                bad = [v for v in (value if isinstance(value, tuple) else (value,))
                       if v not in choices]
                if bad:
                    raise CompressorError(f"{self._field_label(f.name)} must be one of "
                                          f"{list(choices)}, got {bad[0]!r}")
        self.validate()

    def _field_label(self, name: str) -> str:
        return f"{type(self).__name__}.{name}"

    def validate(self) -> None:
        """Raise CompressorError (naming the field) when a value is out of range."""

    def require(self, ok: bool, name: str, message: str) -> None:
        if not ok:
            raise CompressorError(f"{self._field_label(name)} {message}, got "
                                  f"{getattr(self, name)!r}")

    def to_dict(self) -> dict:
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, data: dict, where: str | None = None):
        """Build from a dict (JSON, a TOML table); an unknown key is an error naming it."""
        where = where or cls.__name__
        if not isinstance(data, dict):
            raise CompressorError(f"{where} must be a table of settings, got {type(data).__name__}")
        known = cls.field_names()
        for key in data:
            if key not in known:
                close = difflib.get_close_matches(key, known, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else f" (known: {known})"
                raise CompressorError(f"unknown setting {key!r} in {where}{hint}")
        return cls(**data)

    def replace(self, **changes):
        return dataclasses.replace(self, **changes)


def flag_name(field_name: str) -> str:
    return "--" + field_name.replace("_", "-")


def add_flags(parser: argparse.ArgumentParser, cls: type[Config], only=None, exclude=(),
              group: str | None = None, defaults: dict | None = None) -> None:
    """One flag per field of `cls` (default None: unset flags leave the config's default).
    `defaults`: what the help shows as the default where the command's differs from the
    config's."""
    target = parser.add_argument_group(group) if group else parser
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if (only is not None and f.name not in only) or f.name in exclude:
            continue
        if f.metadata.get("flag", True) is False:
            continue
        flag = flag_name(f.name)
        if any(flag in a.option_strings for a in parser._actions):
            continue  # another config of the same command already defines it: one flag, one idea
        tp, _ = _strip_optional(hints[f.name])
        default = (f.default if f.default is not dataclasses.MISSING
                   else f.default_factory() if f.default_factory is not dataclasses.MISSING
                   else None)
        if defaults and f.name in defaults:
            default = defaults[f.name]
        shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
        inner = f"default: {shown}"
        if f.metadata.get("choices") is not None:
            # listed in the help, checked by the config (not by argparse): one flag can serve two
            # configs whose choices differ (--criterion for unstructured and structured pruning)
            inner = f"one of {', '.join(map(str, f.metadata['choices']))}; {inner}"
        help_text = f.metadata.get("help", "")
        help_text = f"{help_text} ({inner})" if help_text else inner
        kwargs = dict(dest=f.name, default=None, help=help_text)
        if tp is bool:
            target.add_argument(flag, action=argparse.BooleanOptionalAction, **kwargs)
            continue
        metavar = {int: "N", float: "X"}.get(tp, f.name.upper())
        target.add_argument(flag, metavar=metavar, **kwargs)


def from_args(cls: type[Config], args: argparse.Namespace, base: dict | None = None,
              only=None):
    """cls from `base` (e.g. a config file's table) overridden by the flags the user gave
    (`only`: the fields this command exposes as flags for cls)."""
    values = dict(base or {})
    for name in cls.field_names() if only is None else only:
        given = getattr(args, name, None)
        if given is not None:
            values[name] = given
    return cls.from_dict(values, where=f"{cls.__name__} settings")
