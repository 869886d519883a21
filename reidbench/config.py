"""Typed configuration: dataclasses filled from YAML files and ``key=value`` overrides.

A misspelt key is an error naming the closest valid key; a value of the wrong type
names the key and the type expected. YAML is read with ``yaml.safe_load`` only, and
override values are parsed the same way (``lr=5e-5``, ``parts=[head,legs]``), never
evaluated. A YAML file may start with ``_base_: other.yaml`` (relative to itself) to
inherit from another file, fast-reid style; a cycle of ``_base_`` files is an error naming
the chain. Broken YAML and tags safe loading refuses (``!!python/object``) are a
:class:`ConfigError` naming the file and line, never a parser traceback. Values that are
paths or names given as command-line flags travel as ``values`` (already typed), never
through the YAML parser: ``--root "/data/a #1"`` stays that folder.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration key or value is invalid; the message names the key."""


def load_config(cls: type[T], files: typing.Iterable[str | Path] = (), overrides: typing.Iterable[str] = (),
                base: dict | None = None, values: dict | None = None) -> T:
    """Build ``cls`` from ``base``, then each YAML file in order, then ``values`` (typed values
    by dotted key, e.g. command-line flags: never parsed as YAML), then ``key=value`` overrides."""
    data: dict = dict(base or {})
    for f in files:
        data = merge(data, read_yaml(f))
    data = merge(data, nest(values or {}))
    data = merge(data, parse_overrides(overrides))
    return from_dict(cls, data)


def nest(values: dict[str, Any]) -> dict:
    """``{"a.b": 1}`` -> ``{"a": {"b": 1}}`` (values kept as they are)."""
    out: dict = {}
    for key, value in values.items():
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def read_yaml(path: str | Path, _chain: tuple[Path, ...] = ()) -> dict:
    path = Path(path)
    if not path.is_file():
        via = f" (the _base_ of {_chain[-1]})" if _chain else ""
        raise ConfigError(f"config file {path}{via} does not exist")
    real = path.resolve()
    if real in _chain:
        cycle = " -> ".join(str(p) for p in (*_chain[_chain.index(real):], real))
        raise ConfigError(f"config file {path}: _base_ files form a cycle ({cycle}); expected a chain that ends "
                          "in a file without _base_")
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except yaml.constructor.ConstructorError as exc:
        mark = f", line {exc.problem_mark.line + 1}" if exc.problem_mark else ""
        raise ConfigError(f"config file {path}{mark}: {exc.problem} (only plain YAML is read: mappings, lists, "
                          "strings, numbers, booleans, null; tags such as !!python/object are refused, never "
                          "executed)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f", line {mark.line + 1} column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"config file {path}{where}: not valid YAML ({problem})") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} cannot be read ({type(exc).__name__}: {exc})") from None
    data = data or {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path}: expected a mapping at the top level, got {type(data).__name__}")
    base = data.pop("_base_", None)
    if base is not None:
        if not isinstance(base, str) or not base.strip():
            raise ConfigError(f"config file {path}: _base_ must be a file name (relative to {path.parent}), "
                              f"got {base!r}")
        data = merge(read_yaml(path.parent / base, (*_chain, real)), data)
    return data


def parse_overrides(overrides: typing.Iterable[str]) -> dict:
    """``["a.b=1", "c=[x, y]"]`` -> ``{"a": {"b": 1}, "c": ["x", "y"]}`` (values via safe YAML)."""
    out: dict = {}
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected key=value")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.constructor.ConstructorError as exc:
            raise ConfigError(f"override {item!r}: {exc.problem} (YAML tags such as !!python/object are refused, "
                              "never executed)") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: value is not valid YAML "
                              f"({getattr(exc, 'problem', None) or exc}); quote it, e.g. key='a: b'") from None
        node = out
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is set to a value and used as a section")
        node[parts[-1]] = value
    return out


def merge(a: dict, b: dict) -> dict:
    """Recursive merge: ``b`` wins; nested mappings merge key by key."""
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def from_dict(cls: type[T], data: dict, prefix: str = "") -> T:
    """Instantiate dataclass ``cls`` from a plain mapping, checking every key and type."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(unknown_key_message(prefix + str(key), list(fields), prefix))
        kwargs[key] = coerce(value, hints[key], prefix + key)
    try:
        obj = cls(**kwargs)
    except TypeError as exc:  # a required field is missing
        raise ConfigError(f"{prefix.rstrip('.') or cls.__name__}: {exc}") from None
    return obj


def unknown_key_message(key: str, valid: list[str], prefix: str = "") -> str:
    leaf = key[len(prefix):]
    close = difflib.get_close_matches(leaf, valid, n=1, cutoff=0.5)
    hint = f"; did you mean {prefix + close[0]!r}?" if close else ""
    return f"unknown config key {key!r}{hint} Valid keys here: {', '.join(prefix + v for v in sorted(valid))}"


def type_name(tp: Any) -> str:
    if tp is type(None):
        return "None"
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against annotation ``tp`` (converting int->float, list->tuple)."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"config key {key!r}: expected {type_name(tp)}, got {value!r}")
    if origin is Literal:
        choices = get_args(tp)
        if value not in choices:
            close = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise ConfigError(f"config key {key!r}: expected one of {list(choices)}, got {value!r}{hint}")
        return value
    if dataclasses.is_dataclass(tp):
        if dataclasses.is_dataclass(value):
            return value
        return from_dict(tp, value, key + ".")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key!r}: expected {type_name(tp)} (a YAML list), got {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"config key {key!r}: expected {len(args)} items ({type_name(tp)}), got {value!r}")
            items = [coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args))]
        else:
            elem = args[0] if args else Any
            items = [coerce(v, elem, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key {key!r}: expected {type_name(tp)} (a YAML mapping), got {value!r}")
        kt, vt = get_args(tp) or (Any, Any)
        return {coerce(k, kt, key): coerce(v, vt, f"{key}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads "5e-5" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key {key!r}: expected float, got {value!r} ({type(value).__name__})")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key {key!r}: expected int, got {value!r} ({type(value).__name__})")
        return value
    if tp in (bool, str):
        if not isinstance(value, tp):
            raise ConfigError(f"config key {key!r}: expected {tp.__name__}, got {value!r} ({type(value).__name__})")
        return value
    if tp is type(None):
        if value is not None:
            raise ConfigError(f"config key {key!r}: expected null, got {value!r}")
        return None
    raise ConfigError(f"config key {key!r}: unsupported annotation {type_name(tp)}")


def to_dict(obj: Any) -> dict:
    """Dataclass -> plain nested dict (tuples become lists so YAML/JSON round-trip)."""

    def plain(v: Any) -> Any:
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(dataclasses.asdict(obj))


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (MLflow params, resume diffs)."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def diff_keys(a: dict, b: dict) -> list[str]:
    """Flattened keys whose values differ between two config dicts."""
    fa, fb = flatten(a), flatten(b)
    return sorted(k for k in set(fa) | set(fb) if fa.get(k, "<unset>") != fb.get(k, "<unset>"))
