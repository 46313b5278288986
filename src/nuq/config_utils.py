"""Strict conversion between nested dicts (YAML) and nested dataclasses.

Unknown keys are errors that name the key, its section and the allowed keys, so a typo
in a config never silently falls back to a default. Every value is checked against its
field's type annotation (:func:`check_hint`): a string where a list of patterns is meant,
``"false"`` where a bool is meant or ``abc`` where a number is meant is an error naming
the key, never a silently different run. One YAML quirk is repaired instead: YAML 1.1
reads ``5e-4`` (no dot) as a string, so a numeric string in a float field is read as the
number it spells.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _dataclass_in(tp: Any) -> type | None:
    """The dataclass inside ``tp`` (``X`` or ``X | None``), if any."""
    if _is_dataclass_type(tp):
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        for a in typing.get_args(tp):
            if _is_dataclass_type(a):
                return a
    return None


def from_dict(cls: type[T], data: dict[str, Any] | None, where: str = "config") -> T:
    """Build dataclass ``cls`` from ``data``, recursing into nested dataclass fields."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ValueError(f"{where} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"unknown key(s) {', '.join(map(repr, unknown))} in {where}; allowed: {', '.join(fields)}")
    kwargs = {}
    for key, value in data.items():
        sub = _dataclass_in(hints[key])
        if sub is not None and isinstance(value, dict):
            value = from_dict(sub, value, f"{where}.{key}")
        else:
            value = _yaml_float(value, hints[key])
            check_hint(value, hints[key], f"{where}.{key}".removeprefix("config."))
            if isinstance(value, list):
                value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


_NUMBER = (int, float)


def _yaml_float(value: Any, hint: Any) -> Any:
    """'5e-4' -> 5e-4 for a field that takes a float and no string (YAML 1.1 quirk)."""
    if isinstance(value, str) and _accepts(hint, float) and not _accepts(hint, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def _accepts(hint: Any, tp: type) -> bool:
    if hint is tp:
        return True
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return any(_accepts(a, tp) for a in typing.get_args(hint))
    return False


def _describe(hint: Any) -> str:
    if hint is type(None):
        return "null"
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint))
    origin = typing.get_origin(hint)
    if origin is tuple:
        elem = typing.get_args(hint)[0]
        return "a list of " + {str: "strings", int: "ints", float: "numbers"}.get(elem, _describe(elem))
    if origin is dict or hint is dict:
        return "a mapping"
    if _is_dataclass_type(hint):
        return f"a mapping of the {hint.__name__} keys ({', '.join(f.name for f in dataclasses.fields(hint))})"
    return {bool: "true/false", int: "an int", float: "a number", str: "a string"}.get(hint, getattr(
        hint, "__name__", str(hint)))


def _matches(value: Any, hint: Any) -> bool:
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in typing.get_args(hint))
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, _NUMBER) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin is tuple:
        args = typing.get_args(hint)
        return isinstance(value, (list, tuple)) and all(_matches(v, args[0]) for v in value)
    if origin is dict or hint is dict:
        args = typing.get_args(hint)
        return isinstance(value, dict) and (not args or all(_matches(k, args[0]) for k in value))
    if _is_dataclass_type(hint):
        return isinstance(value, hint)
    return True  # annotations this checker does not know are left to the class


def check_hint(value: Any, hint: Any, arg: str) -> None:
    """ValueError naming ``arg`` unless ``value`` fits the type annotation ``hint`` (bools
    are not ints, a string is not a list of strings)."""
    if not _matches(value, hint):
        raise ValueError(f"{arg}={value!r} ({type(value).__name__}); allowed: {_describe(hint)}")


def check_fields(obj: Any, where: str = "") -> None:
    """:func:`check_hint` on every field of a dataclass instance (for configs built in Python)."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        check_hint(getattr(obj, f.name), hints[f.name], f"{where}{f.name}")


def read_yaml(path: Any, what: str = "config") -> dict[str, Any]:
    """The mapping of a YAML file; FileNotFoundError / ValueError naming the file."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} file {p} does not exist")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{p} is not valid YAML: {' '.join(str(e).split())}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{p}: the top level of a {what} must be a mapping")
    return data


def to_dict(obj: Any) -> Any:
    """Plain-python (YAML-safe) view of a dataclass tree."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings (values parsed as YAML) to a nested dict."""
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected key=value, e.g. optim.lr=0.1")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = data
        for p in parts[:-1]:
            nxt = node.setdefault(p, {})
            if nxt is None:
                nxt = node[p] = {}
            if not isinstance(nxt, dict):
                raise ValueError(f"--set {item!r}: {p!r} is not a section")
            node = nxt
        try:
            node[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ValueError(f"--set {item!r}: the value is not valid YAML ({' '.join(str(e).split())})") from None
    return data


def check_choice(value: Any, allowed: typing.Iterable[Any], arg: str) -> None:
    allowed = list(allowed)
    if value not in allowed:
        raise ValueError(f"{arg}={value!r}; allowed: {', '.join(map(repr, allowed))}")


def check_type(value: Any, tp: type, arg: str, positive: bool = False) -> None:
    """ValueError naming ``arg`` unless ``value`` is a ``tp`` (a bool is not an int, an
    int is a float), positive when asked."""
    ok = isinstance(value, tp) and not (tp is not bool and isinstance(value, bool))
    if tp is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if ok and positive and not value > 0:
        ok = False
    if not ok:
        what = {bool: "true or false", int: "int", float: "number", str: "string"}.get(tp, tp.__name__)
        if tp is not bool:
            what = f"a positive {what}" if positive else f"an {what}" if what[0] in "aeiou" else f"a {what}"
        raise ValueError(f"{arg}={value!r}; allowed: {what}")
