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
import difflib
import filecmp
import math
import os
import re
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
        (item_tp, *_) = get_args(tp) or (Any,)
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            try:  # "report_to: tensorboard" means the one-element list
                item = _convert(item_tp, value, f"{key}[0]", allow_inf)
            except ConfigError:
                raise _fail(key, value, _type_name(tp)) from None
            return (item,) if origin is tuple else [item]
        if not isinstance(value, (list, tuple)):
            raise _fail(key, value, _type_name(tp))
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
            f"unknown config key '{where}{unknown[0]}'{_did_you_mean(str(unknown[0]), fields, where)}; "
            f"allowed keys here: {', '.join(sorted(fields))}"
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


# Names other trainers use, and where the same setting lives here; the first whose top key exists at
# the level of the unknown key is suggested (so "learning_rate" is "lr" in a student, "students[].lr" at the top).
KEY_ALIASES: dict[str, tuple[str, ...]] = {
    "learning_rate": ("lr", "students[].lr"),
    "lr": ("students[].lr",),
    "weight_decay": ("students[].weight_decay",),
    "model": ("students[].model",),
    "model_name_or_path": ("model", "students[].model"),
    "batch_size": ("micro_batch_paths", "batch_size"),
    "train_batch_size": ("micro_batch_paths",),
    "per_device_train_batch_size": ("micro_batch_paths",),
    "num_train_epochs": ("epochs",),
    "num_epochs": ("epochs",),
    "gradient_accumulation_steps": ("grad_accum",),
    "max_grad_norm": ("grad_clip",),
    "lr_scheduler_type": ("lr_schedule",),
    "warmup": ("warmup_steps",),
    "save_steps": ("save_every",),
    "logging_steps": ("log_every",),
    "save_total_limit": ("keep_last",),
    "output": ("output_dir", "out"),
    "out_dir": ("output_dir", "out"),
    "output_path": ("output_dir", "out"),
    "seed": ("sampling.seed", "seed"),
}


def _did_you_mean(name: str, known: Any, where: str) -> str:
    """" (did you mean 'lambda1'?)" by spelling, else by a common alias; "" when nothing is close."""
    known = list(known)
    close = difflib.get_close_matches(name, known, n=1, cutoff=0.75)
    if close:
        return f" (did you mean '{where}{close[0]}'?)"
    for target in KEY_ALIASES.get(name.lower(), ()):
        if target.split(".")[0].split("[")[0] in known:
            return f" (did you mean '{where}{target}'?)"
    return ""


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


def flatten(value, prefix: str = "", whole: bool = False) -> dict[str, object]:
    """Nested config -> {"router.hidden": 64, "students[0].lr": 0.003, ...}. ``whole``: an empty mapping
    or list, and a list of plain values, stay one value ({"router.withhold": {}, "report_to": [...]})."""
    if whole and (value == {} or isinstance(value, list) and not any(isinstance(v, (dict, list)) for v in value)):
        return {prefix: value}
    if isinstance(value, dict):
        return {k: v for key, sub in value.items()
                for k, v in flatten(sub, f"{prefix}.{key}" if prefix else key, whole).items()}
    if isinstance(value, list):
        return {k: v for i, sub in enumerate(value) for k, v in flatten(sub, f"{prefix}[{i}]", whole).items()}
    return {prefix: value}


def same_value(a: object, b: object) -> bool:
    """Equal, two spellings of one existing path (relative and absolute), or two paths of files with the
    same bytes: a DeepSpeed config or pool that moved with its checkout (a demo resumed from another
    folder) is the same input."""
    if a == b:
        return True
    if not (isinstance(a, str) and isinstance(b, str)):
        return False
    pa, pb = Path(a), Path(b)
    if pa.exists() and pb.exists() and pa.resolve() == pb.resolve():
        return True
    return pa.is_file() and pb.is_file() and filecmp.cmp(pa, pb, shallow=False)


# An alias bomb is harmless while it stays a graph, but every walk over the loaded value (validation,
# an error's repr, to_dict) expands it: the 600-byte file made a 312 MB message and 1.46 GB RSS
# (tests/fixtures/bad_inputs' 451-byte one: 351 MB and 912 MB). Configs are small trees.
MAX_YAML_NODES = 100_000


class _Refused(Exception):
    """A YAML document the loader refuses; ``line`` is 1-based (0: no line)."""

    def __init__(self, line: int, message: str):
        super().__init__(message)
        self.line = line


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys and documents whose aliases expand past MAX_YAML_NODES."""

    def compose_document(self):
        node = super().compose_document()
        _count_expanded(node)
        return node

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            seen: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue  # keys from a "<<:" merge may be overridden; that is what merging is for
                key = self.construct_object(key_node)
                line = key_node.start_mark.line + 1
                if key in seen:
                    raise _Refused(line, f"duplicate key {key!r} (first at line {seen[key]}); "
                                         "YAML would silently keep the last value")
                seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _count_expanded(root) -> None:
    """Nodes of the document with every alias expanded, counted over the graph once per node."""
    size: dict[int, int] = {}
    stack: list[tuple[Any, bool]] = [(root, False)]
    on_path: set[int] = set()
    while stack:
        node, done = stack.pop()
        if done:
            on_path.discard(id(node))
            children = _children(node)
            size[id(node)] = 1 + sum(size[id(c)] for c in children)
            if size[id(node)] > MAX_YAML_NODES:
                raise _Refused(node.start_mark.line + 1, f"aliases expand to more than {MAX_YAML_NODES:,} values "
                                                         "(an alias bomb?); write the values out")
            continue
        if id(node) in size:
            continue
        if id(node) in on_path:
            raise _Refused(node.start_mark.line + 1, "an alias refers to a node that contains it (a loop)")
        on_path.add(id(node))
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in size)


def _children(node) -> list:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder, not a config file")
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        # utf-8-sig: a BOM that an editor wrote is not content
        data = yaml.load(path.read_bytes().decode("utf-8-sig"), Loader=_StrictLoader)  # noqa: S506 (safe subclass)
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start})") from None
    except _Refused as e:
        raise ConfigError(f"{path}:{e.line}: {e}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a config") from None
    except yaml.YAMLError as e:  # one line, at the line the parser stopped (its own message spans seven)
        mark, context = getattr(e, "problem_mark", None), getattr(e, "context", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        what = getattr(e, "problem", None) or str(e).splitlines()[0]
        if context:
            opened = getattr(e, "context_mark", None)
            what += f" ({context}" + (f" opened at line {opened.line + 1})" if opened is not None else ")")
        raise ConfigError(f"{path}{where}: not valid YAML: {what}") from None
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
    """Set ``a.b.c=value`` in nested dicts; list items by index (``students.1.lr`` or ``students[1].lr``,
    the spelling of the keys in error messages)."""
    *parents, last = re.sub(r"\[(\d+)\]", r".\1", dotted).split(".")
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
