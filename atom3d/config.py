"""Typed configuration: dataclass signatures are the schema, YAML only overrides them.

``load_config(Cls, path_or_dict)`` builds a nested dataclass from YAML, rejecting unknown
keys, wrong types and reversed ranges with one clear line (:class:`ConfigError`).
A *range* is a field annotated ``Range`` (a ``[low, high]`` pair with low ≤ high).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from atom3d.errors import ConfigError

Range = tuple[float, float]


def _is_range(tp) -> bool:
    return tp == Range or (typing.get_origin(tp) is tuple and typing.get_args(tp) == (float, float))


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{where}' must be a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if _is_range(tp):
        if isinstance(value, int | float) and not isinstance(value, bool):
            value = [value, value]
        if not (isinstance(value, list | tuple) and len(value) == 2
                and all(isinstance(v, int | float) and not isinstance(v, bool) for v in value)):
            raise ConfigError(f"config key '{where}' must be a [low, high] pair of numbers, got {value!r}")
        lo, hi = float(value[0]), float(value[1])
        if lo > hi:
            raise ConfigError(f"config key '{where}' is a reversed range [{lo}, {hi}]: low must be <= high")
        return (lo, hi)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _convert(value, args[0], where)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{where}' must be a mapping, got {value!r}")
        _, vt = typing.get_args(tp)
        return {str(k): _convert(v, vt, f"{where}.{k}") for k, v in value.items()}
    if origin in (tuple, list):
        args = typing.get_args(tp)
        if not isinstance(value, list | tuple):
            raise ConfigError(f"config key '{where}' must be a list, got {value!r}")
        et = args[0] if args else Any
        return tuple(_convert(v, et, f"{where}[{i}]") for i, v in enumerate(value))
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"config key '{where}' must be a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{where}' must be an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{where}' must be true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{where}' must be a string, got {value!r}")
        return value
    if typing.get_origin(tp) is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"config key '{where}' must be one of {list(typing.get_args(tp))}, got {value!r}")
        return value
    return value


def from_dict(cls, data: dict, where: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``; unknown keys and bad values raise ConfigError."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - names)
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise ConfigError(f"unknown config key '{key}' (allowed here: {', '.join(sorted(names))})")
    kwargs = {k: _convert(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid config{' section ' + repr(where) if where else ''}: {exc}") from None
    return obj


def to_dict(obj) -> dict:
    """Plain (YAML/JSON-serialisable) dict of a config dataclass."""
    def conv(v):
        if dataclasses.is_dataclass(v):
            return {f.name: conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple | list):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v
    return conv(obj)


def load_config(cls, source: str | Path | dict) -> Any:
    """Load ``cls`` from a YAML file path or a dict (missing keys keep their defaults)."""
    if isinstance(source, dict):
        data = source
    else:
        path = Path(source)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            at = f" (line {mark.line + 1})" if mark else ""
            raise ConfigError(f"config file {path} is not valid YAML{at}") from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {path} must hold a mapping of keys to values")
    return from_dict(cls, data)
