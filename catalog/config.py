"""Typed configuration: dataclasses loaded from YAML with strict checking.

Every section of a run config is a plain ``@dataclass`` whose fields carry a type hint and a
default. :func:`from_dict` builds one from a mapping and refuses, before any work starts:

- a key that is not a field (naming the key, the section and the fields that exist), or a key
  the section renamed (its ``RENAMED`` class attribute: old key -> new dotted path; the error names both),
- a value of the wrong type (naming the key, the value and the type that is allowed),
- a value outside a ``Literal[...]`` (naming the choices),

and then runs the dataclass's own ``__post_init__`` checks, which raise :class:`ConfigError`
through :func:`check`. Supported field types: bool, int, float, str, Literal, Optional, list,
tuple, dict[str, X] and nested dataclasses. No class-path strings, no registries.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence, TypeVar, Union

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config key or value is not allowed. The message names the key, value and what is allowed."""


def check(ok: bool, key: str, value: Any, allowed: str) -> None:
    """Raise ConfigError naming ``key``, ``value`` and ``allowed`` unless ``ok``.

    Use in ``__post_init__``: ``check(self.p >= 0, "degrade.noise_prob", self.p, "a number in [0, 1]")``.
    """
    if not ok:
        raise ConfigError(f"{key} = {value!r} is not allowed: expected {allowed}")


def check_prob(value: float, key: str) -> None:
    check(isinstance(value, (int, float)) and 0.0 <= value <= 1.0, key, value, "a probability in [0, 1]")


def check_range(value: Sequence[float], key: str, lo: float | None = None, hi: float | None = None) -> None:
    """A [low, high] pair with low <= high, optionally inside [lo, hi]."""
    ok = len(value) == 2 and value[0] <= value[1]
    if ok and lo is not None:
        ok = value[0] >= lo
    if ok and hi is not None:
        ok = value[1] <= hi
    bounds = f" within [{lo}, {hi}]" if lo is not None or hi is not None else ""
    check(ok, key, list(value), f"a pair [low, high] with low <= high{bounds}")


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return f"a mapping ({tp.__name__})"
    if origin is not None:
        return str(tp).replace("typing.", "")
    return getattr(tp, "__name__", str(tp))


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """Return ``value`` converted to ``tp`` or raise ConfigError naming ``key``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{key} = {value!r} is not allowed: expected {_type_name(tp)}")
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, key)
            except ConfigError as e:
                errors.append(e)
        raise ConfigError(f"{key} = {value!r} is not allowed: expected {_type_name(tp)}")
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} = {value!r} is not allowed: expected {_type_name(tp)}")
        return from_dict(tp, value, prefix=key)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} = {value!r} is not allowed: expected true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key} = {value!r} is not allowed: expected an integer")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key} = {value!r} is not allowed: expected a number")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key} = {value!r} is not allowed: expected a string")
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} = {value!r} is not allowed: expected a list ({_type_name(tp)})")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{key} = {value!r} is not allowed: expected {len(args)} items ({_type_name(tp)})")
            return tuple(_coerce(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        out = [_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple or tp is tuple else out
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} = {value!r} is not allowed: expected a mapping")
        vt = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(vt, v, f"{key}.{k}") for k, v in value.items()}
    raise ConfigError(f"{key}: unsupported field type {tp!r}")  # a bug in a config class


def from_dict(cls: type[T], data: Mapping[str, Any] | None, prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and bad values raise ConfigError."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    renamed = getattr(cls, "RENAMED", {})  # old key -> its new dotted path in this section
    for old in unknown:
        if old in renamed:
            name = ".".join(filter(None, [prefix, old]))
            new = ".".join(filter(None, [prefix, renamed[old]]))
            raise ConfigError(f"{name!r} was renamed: set {new!r} instead (README \"Configuration\" lists every key)")
    if unknown:
        where = prefix or cls.__name__
        raise ConfigError(
            f"unknown key {'.'.join(filter(None, [prefix, unknown[0]]))!r} in {where}: "
            f"allowed keys are {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(hints[name], _over_default(fields[name], value), key)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{prefix or cls.__name__}: {e}") from e


def _over_default(f: dataclasses.Field, value: Any) -> Any:
    """A mapping given for a nested section whose default is built with other values than its class's
    (``resources: Resources = field(default_factory=lambda: Resources(gpus_per_worker=1.0))``): the
    keys it sets over that default, so ``restore.resources.workers=8`` keeps restore's GPU per worker."""
    if not isinstance(value, Mapping) or f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
        return value
    base = f.default_factory()  # type: ignore[misc]
    if not dataclasses.is_dataclass(base):
        return value
    plain = type(base)()
    # only what the factory sets differently: a field a class resolves in __post_init__ (a sampler
    # preset's None values) must stay unset so that the given keys resolve it
    custom = {g.name: getattr(base, g.name) for g in dataclasses.fields(base)
              if g.init and getattr(base, g.name) != getattr(plain, g.name)}
    return custom | dict(value)


def to_dict(obj: Any) -> Any:
    """A dataclass as plain JSON-able data (tuples become lists)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    if isinstance(obj, Path):
        return str(obj)
    return obj


def digest(obj: Any) -> str:
    """Stable sha256 of a config section (or any JSON-able value)."""
    return hashlib.sha256(json.dumps(to_dict(obj), sort_keys=True, default=str).encode()).hexdigest()


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; used for MLflow params."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping) and v:
            out.update(flatten(v, key))
        else:
            out[key] = v
    return out


class _Loader(yaml.SafeLoader):
    """YAML 1.1's safe loader, but ``2e-4`` and ``1E5`` are floats (YAML 1.2, and what a user of
    ``train.encoder.lr=2e-4`` means) instead of strings."""


def _mapping_without_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    """A YAML mapping; a key given twice is an error (YAML would silently keep the last one)."""
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            raise ConfigError(f"key {key!r} appears twice in one mapping (line {seen[key].start_mark.line + 1} "
                              f"and line {key_node.start_mark.line + 1}); the second would silently replace the first")
        seen[key] = key_node
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_Loader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                    |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                    |[-+]?\.(?:inf|Inf|INF)
                    |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def safe_load(text: Any) -> Any:
    """yaml.safe_load with floats in exponent notation read as floats."""
    return yaml.load(text, Loader=_Loader)


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"degrade.first.jpeg_range=[30, 95]"`` -> (["degrade", "first", "jpeg_range"], [30, 95]); the value is YAML."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not allowed: expected key.path=value")
    key, raw = text.split("=", 1)
    return key.strip().split("."), safe_load(raw)


def apply_overrides(data: dict[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Set dotted keys in a nested mapping (validation happens later in from_dict)."""
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {text!r}: {part!r} is not a section")
        node[path[-1]] = value
    return data


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML config file as a mapping; a missing file, bad YAML or a duplicated key is a ConfigError."""
    try:
        with open(path) as f:
            data = safe_load(f) or {}
    except OSError as e:
        raise ConfigError(f"config file {str(path)!r} cannot be read: {e.strerror or e}") from None
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data
