"""Frozen, keyword-only config dataclasses that reject unknown keys.

Every backbone and head has a config like::

    @dataclass(frozen=True, kw_only=True)
    class DannConfig(HeadConfig):
        hidden_dim: int = 512

``DannConfig.from_dict({"hiden_dim": 3})`` fails with the list of valid fields, and
``config.replace_from_strings(["hidden_dim=256"])`` implements ``--set key=value``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Self

from avda import safe_yaml
from avda.errors import ConfigError
from avda.registry import unknown_name_message


@dataclasses.dataclass(frozen=True, kw_only=True)
class Config:
    """Base class: construction from dicts and ``key=value`` strings with validation."""

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None = None) -> Self:
        values = dict(values or {})
        valid = cls.field_names()
        unknown = [k for k in values if k not in valid]
        if unknown:
            raise ConfigError(
                "; ".join(unknown_name_message(f"{cls.__name__} field", k, valid) for k in unknown)
            )
        hints = typing.get_type_hints(cls)
        coerced = {k: _coerce(cls.__name__, k, v, hints[k]) for k, v in values.items()}
        return cls(**coerced)

    def replace(self, **changes: Any) -> Self:
        merged = {**self.to_dict(), **changes}
        return type(self).from_dict(merged)

    def replace_from_strings(self, assignments: list[str]) -> Self:
        """Apply ``["lr=0.01", "modalities=[rgb,audio]"]`` (values parsed as YAML)."""
        changes: dict[str, Any] = {}
        for item in assignments:
            if "=" not in item:
                raise ConfigError(f"--set expects key=value, got {item!r}")
            key, raw = item.split("=", 1)
            changes[key.strip()] = safe_yaml.load(raw, source=f"--set {key.strip()}")
        return self.replace(**changes)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


def _coerce(owner: str, key: str, value: Any, hint: Any) -> Any:
    """Check ``value`` against the type hint; lists become tuples and ints become floats."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    where = f"{owner}.{key}"
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(owner, key, value, arg)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: expected one of {list(args)}, got {value!r}")
        return value
    if origin is tuple:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        inner = args[0] if args else Any
        return tuple(_coerce(owner, key, v, inner) for v in value)
    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    return value
