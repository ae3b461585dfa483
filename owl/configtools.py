"""Dataclass configs from nested dicts/YAML, with dotted command-line overrides.

One mechanism for every config (model, training): unknown keys are errors
that suggest the closest valid key, nested dataclasses are built recursively,
and ``section.key=value`` overrides are parsed as YAML scalars so
``optim.lr=3e-4`` or ``trainable.llm=lora`` need no quoting.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from owl.errors import ConfigError, ConfigNotFound

__all__ = ["ConfigError", "deep_merge", "dump_yaml", "from_dict", "parse_overrides", "read_yaml", "reject_unknown"]

T = TypeVar("T")


def _dataclass_type(hint: Any) -> type | None:
    """The dataclass inside ``X``, ``X | None`` or ``Optional[X]`` hints, else None."""
    if dataclasses.is_dataclass(hint):
        return hint
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        for arg in typing.get_args(hint):
            if dataclasses.is_dataclass(arg):
                return arg
    return None


def _type_error(key: str, value: Any, what: str) -> ConfigError:
    return ConfigError(f"{key}={value!r} must be {what}, not {type(value).__name__}")


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Make ``value`` match a type hint where YAML was ambiguous ("1e-4" is a string in YAML 1.1), and refuse a
    value of the wrong kind here, naming the key, rather than letting ``true`` pass as a learning rate of 1.0 or a
    list fail later as a TypeError deep inside a comparison."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if value is None:
        return None
    if origin in (typing.Union, types.UnionType):
        scalars = [a for a in args if a is not type(None)]
        return _coerce(value, scalars[0], key) if len(scalars) == 1 else value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise _type_error(key, value, "a number")
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{key}={value!r} must be a number") from None
    if hint is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise _type_error(key, value, "an integer")
        try:
            return int(value)
        except ValueError:
            raise ConfigError(f"{key}={value!r} must be an integer") from None
    if hint is bool and not isinstance(value, bool):
        raise _type_error(key, value, "true or false")
    if hint is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # `stage: 2` means the label "2"
        if not isinstance(value, str):
            raise _type_error(key, value, "a string")
    if origin in (list, tuple) and args:
        if not isinstance(value, (list, tuple)):
            raise _type_error(key, value, "a list")
        if origin is tuple and len(args) > 1 and args[1] is not Ellipsis:
            if len(value) != len(args):
                raise ConfigError(f"{key}={list(value)!r} must be a list of {len(args)} values")
            return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        inner = args[0]
        return type(value)(_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise _type_error(key, value, "a mapping")
        if len(args) == 2:
            return {k: _coerce(v, args[1], f"{key}.{k}") for k, v in value.items()}
    return value


def reject_unknown(d: dict[str, Any], valid: list[str], prefix: str) -> None:
    for key in d:
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1)
            hint = f"; did you mean {prefix}{close[0]}?" if close else f"; valid keys: {', '.join(valid)}"
            raise ConfigError(f"unknown config key {prefix}{key}{hint}")


def from_dict(cls: type[T], d: dict[str, Any] | None, prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``d``; nested dataclass fields recurse; unknown keys raise."""
    d = d or {}
    if not isinstance(d, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {type(d).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    reject_unknown(d, list(fields), prefix)
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in d.items():
        sub = _dataclass_type(hints[name])
        if sub is not None and isinstance(value, dict):
            value = from_dict(sub, value, f"{prefix}{name}.")
        elif sub is not None and value is not None and not isinstance(value, sub):
            raise ConfigError(f"{prefix}{name} must be a mapping, got {type(value).__name__}")
        else:
            value = _coerce(value, hints[name], f"{prefix}{name}")
        kwargs[name] = value
    try:
        return cls(**kwargs)
    except TypeError as e:  # e.g. a list where a mapping was expected
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {e}") from e


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["optim.lr=3e-4", "output_dir=runs/a"]`` -> nested dict, values parsed as YAML."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        key, value = item.split("=", 1)
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with another override of {p}")
        try:
            node[parts[-1]] = yaml.safe_load(value) if value != "" else ""
        except yaml.YAMLError as e:
            problem = getattr(e, "problem", None) or type(e).__name__
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({problem}); quote it") from None
    return out


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """``over`` wins; nested mappings merge key by key."""
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def dump_yaml(obj: Any) -> str:
    """YAML for a dataclass, tuples written as lists."""

    def plain(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        return x

    return yaml.safe_dump(plain(dataclasses.asdict(obj)), sort_keys=False)


def read_yaml(path: Path) -> dict[str, Any]:
    """A YAML mapping from ``path``; a syntax error is one line naming the file, line and column."""
    if not path.is_file():
        raise ConfigNotFound(f"config file not found: {path}")
    try:
        d = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}); is it a YAML file?") from None
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: YAML syntax error: {e.problem or e.context}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: YAML error: {e}") from None
    d = d or {}
    if not isinstance(d, dict):
        raise ConfigError(f"{path} must hold a mapping of config sections, got {type(d).__name__}")
    return d
