"""Typed dataclasses from nested dicts and YAML: values checked against each field's type, dotted ``a.b=c``
overrides, range checks, and refusal of keys that have moved.

A dataclass validates its own fields in ``__post_init__``, naming them relative to itself (``rate must be ...``);
:func:`from_dict` prefixes the errors of a nested dataclass with where it sits (``phase2.layerskip.rate must be ...``).
A dataclass may list keys that have moved in a ``MOVED`` class attribute (old key -> new dotted key, relative to it):
:func:`from_dict` refuses an old key in one line naming the new one.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from pathlib import Path
from typing import Any, Union

import yaml

from ..errors import ConfigError


def check_range(key: str, value: float, *, lo: float | None = None, hi: float | None = None, lo_open: bool = False,
                hi_open: bool = False, unit: str = "") -> None:
    """Raise a ConfigError naming ``key`` unless ``value`` is a finite number in the range (closed by default)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    ok = ok and (lo is None or (value > lo if lo_open else value >= lo))
    ok = ok and (hi is None or (value < hi if hi_open else value <= hi))
    if ok:
        return
    if lo is not None and hi is not None:
        want = f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    elif lo is not None:
        want = f"{'>' if lo_open else '>='} {lo:g}"
    elif hi is not None:
        want = f"{'<' if hi_open else '<='} {hi:g}"
    else:
        want = "a finite number"
    raise ConfigError(f"{key} must be {want}{' ' + unit if unit else ''}, got {value!r}")



_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def _matches(value: Any, tp: Any) -> Any:
    """Return ``value`` coerced to ``tp`` or raise TypeError. Ints are accepted where floats are expected."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        for arm in typing.get_args(tp):
            try:
                return _matches(value, arm)
            except TypeError:
                continue
        raise TypeError
    if tp is type(None):
        if value is None:
            return None
        raise TypeError
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise TypeError
        return [_matches(v, item) for v in value]
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise TypeError
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise TypeError
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise TypeError
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):  # YAML 1.1 reads 1e-3 as a string
            return float(value)
        raise TypeError
    if tp is str:
        if isinstance(value, str):
            return value
        raise TypeError
    raise TypeError


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    return str(tp).replace("typing.", "").replace("<class '", "").replace("'>", "").replace("NoneType", "null")


def from_dict(cls: type, data: Any, prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a nested dict, rejecting unknown keys and wrong types by dotted name."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names, key=str)
    moved = [k for k in data if k in getattr(cls, "MOVED", {})]  # in the order given
    if moved:
        more = f" and the {len(moved) - 1} other moved keys here" if len(moved) > 1 else ""
        raise ConfigError(f"{prefix}{moved[0]} is now {prefix}{cls.MOVED[moved[0]]}; rename it{more} "
                          "(docs/training.md lists the moved keys)")
    if unknown:
        raise ConfigError(f"{prefix}{unknown[0]}: unknown key; valid keys here: {', '.join(sorted(names))}")
    kwargs = {}
    for key, value in data.items():
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = from_dict(tp, value, f"{prefix}{key}.")
            continue
        try:
            kwargs[key] = _matches(value, tp)
        except TypeError:
            raise ConfigError(f"{prefix}{key}: expected {_type_name(tp)}, got {value!r}") from None
        if not _finite(kwargs[key]):
            what = "is not a finite number" if isinstance(value, float) else "holds NaN or infinity"
            raise ConfigError(f"{prefix}{key}: {value!r} {what}; give a real number")
    try:
        return cls(**kwargs)
    except ConfigError as e:  # its own validation names keys relative to it: say where it sits
        if not prefix:
            raise
        raise ConfigError(f"{prefix}{e}") from None


def _finite(value: Any) -> bool:
    """False when a float anywhere inside ``value`` (lists and dicts included) is NaN or infinite."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, (list, tuple)):
        return all(_finite(v) for v in value)
    if isinstance(value, dict):
        return all(_finite(v) for v in value.values())
    return True


def to_dict(cfg: Any) -> dict:
    """A dataclass as nested plain dicts (what :func:`from_dict` reads back)."""
    return dataclasses.asdict(cfg)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``a.b=c`` strings to a nested dict; values are parsed as YAML (``3``, ``[1, 2]``, ``true``)."""
    out = _deepcopy(data)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. --set phase2.lr=0.1")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.split(".")
        for p in parts[:-1]:
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {key}: {p!r} is not a section")
            node = nxt
        node[parts[-1]] = value
    return out


def _deepcopy(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _deepcopy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deepcopy(v) for v in d]
    return d


def read_yaml(path: str | Path, example: str) -> dict:
    """A YAML file's top-level mapping, or a ConfigError naming the file and the problem."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {p} not found; pass a YAML file such as {example}")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p} is not valid YAML: {str(e).splitlines()[0]}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{p} is not a UTF-8 text file") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: the top level must be a mapping of keys, got {type(data).__name__}")
    return data
