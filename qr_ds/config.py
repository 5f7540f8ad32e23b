"""Typed configs: dataclasses validated at load, with errors that name the bad key.

A config class is a dataclass whose fields carry optional constraints in metadata:
``field(default=..., metadata=rule(min=0, max=1, choices=(...), help="..."))``.
``load_config(Cls, "run.yaml")`` or ``from_dict(Cls, mapping)`` refuses unknown keys,
wrong types and out-of-range values, naming the dotted key, the value and what is allowed.
Floats must be finite: NaN passes every ``<``/``>`` range check, and infinity rarely means what
was meant, so both are refused unless a field opts in with ``rule(allow_inf=True)`` ("no limit").
"""
from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config value that cannot be accepted; the message names key, value and what is allowed."""


def rule(*, min=None, max=None, choices=None, allow_inf: bool = False, help: str = "") -> dict:
    """Field metadata: bounds (inclusive), allowed values, whether +-inf is a meaningful
    "no limit" for this float field (NaN never is), and a one-line description."""
    return {"min": min, "max": max, "choices": choices, "allow_inf": allow_inf, "help": help}


def _type_name(tp) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    if origin in (list, tuple):
        return f"list[{_type_name(get_args(tp)[0])}]"
    if origin is dict:
        k, v = get_args(tp)
        return f"dict[{_type_name(k)}, {_type_name(v)}]"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return f"mapping ({tp.__name__})"
    return getattr(tp, "__name__", str(tp))


def _fail(key: str, value: Any, allowed: str) -> ConfigError:
    return ConfigError(f"config key '{key or '<root>'}': got {value!r}; allowed: {allowed}")


def _convert(tp, value: Any, key: str, allow_inf: bool = False):
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(a, value, key, allow_inf)
            except ConfigError as e:
                errors.append(e)
        if len(errors) == 1:  # an optional value: the one real type's reason ("a finite number") says more
            raise errors[0]
        raise _fail(key, value, _type_name(tp))
    if origin is Literal:
        if value in get_args(tp):
            return value
        raise _fail(key, value, _type_name(tp))
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _fail(key, value, _type_name(tp))
        (item_tp, *_) = get_args(tp) or (Any,)
        out = [_convert(item_tp, v, f"{key}[{i}]", allow_inf) for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict:
        if not isinstance(value, dict):
            raise _fail(key, value, _type_name(tp))
        kt, vt = get_args(tp) or (Any, Any)
        return {_convert(kt, k, key): _convert(vt, v, f"{key}.{k}", allow_inf) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return from_dict(tp, value, key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _fail(key, value, "true | false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _fail(key, value, "an integer")
    if tp is float:
        return _finite(_number(value, key), key, allow_inf)
    if tp is str:
        if isinstance(value, str):
            return value
        raise _fail(key, value, "a string")
    if tp is Path:
        if isinstance(value, (str, os.PathLike)):
            return Path(value)
        raise _fail(key, value, "a path string")
    raise _fail(key, value, _type_name(tp))


def _number(value: Any, key: str) -> float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):  # YAML reads 5e-6 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    raise _fail(key, value, "a number")


def _finite(value: float, key: str, allow_inf: bool) -> float:
    if math.isfinite(value) or (allow_inf and math.isinf(value)):
        return value
    raise _fail(key, value, "a finite number")


def _check_rule(meta: dict, value: Any, key: str) -> None:
    if value is None:
        return
    lo, hi, choices = meta.get("min"), meta.get("max"), meta.get("choices")
    if choices is not None and value not in choices:
        raise _fail(key, value, "one of " + ", ".join(map(repr, choices)))
    if lo is not None and value < lo:
        raise _fail(key, value, f">= {lo}" + (f" and <= {hi}" if hi is not None else ""))
    if hi is not None and value > hi:
        raise _fail(key, value, f"<= {hi}" + (f" and >= {lo}" if lo is not None else ""))


def from_dict(cls: type[T], data: Any, key: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, validating every field recursively."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise _fail(key, data, f"a mapping for {cls.__name__}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        where = f"{key}." if key else ""
        raise ConfigError(
            f"unknown config key '{where}{unknown[0]}'; allowed keys here: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, f in fields.items():
        sub = f"{key}.{name}" if key else name
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"config key '{sub}' is required ({_type_name(hints[name])})")
            continue
        value = _convert(hints[name], data[name], sub, f.metadata.get("allow_inf", False))
        _check_rule(f.metadata, value, sub)
        kwargs[name] = value
    obj = cls(**kwargs)
    check = getattr(obj, "validate", None)
    if callable(check):
        check(key)
    return obj


def to_dict(obj: Any) -> Any:
    """Plain-data form of a config (paths as strings), suitable for YAML or JSON."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start})") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data or {}


def load_config(cls: type[T], path: str | Path, overrides: dict | None = None) -> T:
    """Load YAML at ``path`` into ``cls``; ``overrides`` (dotted keys) are applied first."""
    data = load_yaml(path)
    for dotted, value in (overrides or {}).items():
        apply_override(data, dotted, value)
    try:
        return from_dict(cls, data)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


def apply_override(data: dict, dotted: str, value: Any) -> None:
    """Set ``a.b.c=value`` in nested dicts; list items by index (``students.1.lr``)."""
    *parents, last = dotted.split(".")
    node: Any = data
    for part in parents:
        node = _override_step(node, part, dotted)
    if isinstance(node, list):
        node[_list_index(node, last, dotted)] = value
    elif isinstance(node, dict):
        node[last] = value
    else:
        raise _not_a_container(node, last, dotted)


def _override_step(node: Any, part: str, dotted: str) -> Any:
    if isinstance(node, list):
        return node[_list_index(node, part, dotted)]
    if isinstance(node, dict):
        return node.setdefault(part, {})
    raise _not_a_container(node, part, dotted)


def _not_a_container(node: Any, part: str, dotted: str) -> ConfigError:
    return ConfigError(f"override '{dotted}': '{part}' is under a {type(node).__name__}, not a mapping or list")


def _list_index(items: list, part: str, dotted: str) -> int:
    if not (part.isdigit() and int(part) < len(items)):
        raise ConfigError(f"override '{dotted}': '{part}' is not an index of a list of {len(items)}")
    return int(part)


def parse_override(text: str) -> tuple[str, Any]:
    """``key.path=value`` with the value read as YAML (so numbers, bools and lists work)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key.path=value")
    k, v = text.split("=", 1)
    return k.strip(), yaml.safe_load(v)


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, type, default, help) rows for every field, nested: feeds the config reference doc."""
    rows = []
    hints = get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}{f.name}"
        tp = hints[f.name]
        if f.default is not dataclasses.MISSING:
            default = repr(to_dict(f.default))
        elif f.default_factory is not dataclasses.MISSING:
            default = repr(to_dict(f.default_factory()))
        else:
            default = "(required)"
        meta = f.metadata or {}
        bounds = []
        if meta.get("choices") is not None:
            bounds.append("one of " + ", ".join(map(repr, meta["choices"])))
        if meta.get("min") is not None:
            bounds.append(f">= {meta['min']}")
        if meta.get("max") is not None:
            bounds.append(f"<= {meta['max']}")
        help_ = "; ".join(filter(None, [meta.get("help", ""), ", ".join(bounds)]))
        rows.append((key, _type_name(tp), default, help_))
        inner = tp
        if get_origin(inner) in (list, tuple):
            inner = get_args(inner)[0]
            key += "[]"
        if dataclasses.is_dataclass(inner) and isinstance(inner, type):
            rows.extend(describe(inner, key + "."))
    return rows
