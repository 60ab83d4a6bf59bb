"""Frozen, keyword-only config dataclasses that reject unknown keys.

Every backbone and head has a config like::

    @dataclass(frozen=True, kw_only=True)
    class DannConfig(HeadConfig):
        hidden_dim: int = 512

``DannConfig.from_dict({"hiden_dim": 3})`` fails with the list of valid fields, and
``DannConfig.parse_assignments(["hidden_dim=256"])`` implements ``--set key=value`` (the one
parser of ``--set``). A field's meaning (``avda train --show-config``) is its ``help`` metadata,
else the comment lines above it and its end-of-line comment (:meth:`Config.field_help`).
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import io
import numbers
import textwrap
import tokenize
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

    @classmethod
    def parse_assignments(cls, assignments: list[str] | tuple[str, ...]) -> dict[str, Any]:
        """``["lr=0.01", "modalities=rgb,audio"]`` -> ``{"lr": 0.01, "modalities": [...]}``.

        Values are YAML (``[rgb, audio]``, ``true``, ``0.5``); for a list field a bare
        comma list ``rgb,audio`` is a list too (as ``avda extract --modalities``), and an
        empty value is the empty list. Keys are checked against the fields here, in one line.
        """
        hints = typing.get_type_hints(cls)
        valid = cls.field_names()
        changes: dict[str, Any] = {}
        for item in assignments:
            if "=" not in item:
                raise ConfigError(f"--set expects key=value, got {item!r}")
            key, raw = (part.strip() for part in item.split("=", 1))
            if key not in valid:
                raise ConfigError(unknown_name_message(f"{cls.__name__} field", key, valid))
            if _is_sequence(hints[key]) and not raw.startswith(("[", "(")):
                raw = f"[{raw}]"
            changes[key] = safe_yaml.load(raw, source=f"--set {key}")
        return changes

    @classmethod
    def field_help(cls) -> dict[str, str]:
        """One line of meaning per field: ``metadata["help"]``, else the field's end-of-line
        comment in the class body, else the comment lines just above it ("" when none). A
        subclass's comment on a field it redefines follows its base class's: ``learning rate;
        stage 1 ...``."""
        comments: dict[str, str] = {}
        for klass in reversed(cls.__mro__):  # a base class's meaning, then a subclass's note
            if not dataclasses.is_dataclass(klass):
                continue
            for name, text in _source_comments(klass).items():
                base = comments.get(name, "")
                joined = f"{base.rstrip('.')}; {text}"
                comments[name] = text if not base or base in text else joined
        out = {}
        for field in dataclasses.fields(cls):
            text = field.metadata.get("help") or comments.get(field.name, "")
            out[field.name] = " ".join(str(text).split())
        return out

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}


def _is_sequence(hint: Any) -> bool:
    """Whether a type hint is a tuple/list type (or an optional one)."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_is_sequence(a) for a in typing.get_args(hint) if a is not type(None))
    return origin in (tuple, list) or hint in (tuple, list)


@functools.cache
def _source_comments(klass: type) -> dict[str, str]:
    """``{field: comment}`` from the source of ``klass``'s body (empty without source)."""
    try:
        lines, _ = inspect.getsourcelines(klass)
    except (OSError, TypeError):
        return {}
    source = textwrap.dedent("".join(lines))
    try:
        tree = ast.parse(source)
        tokens = list(tokenize.generate_tokens(io.StringIO(source).readline))
    except (SyntaxError, tokenize.TokenError):
        return {}
    comment_at: dict[int, str] = {}
    code_lines: set[int] = set()
    for tok in tokens:
        if tok.type == tokenize.COMMENT:
            comment_at[tok.start[0]] = tok.string.lstrip("#:").strip()
        elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT):
            code_lines.add(tok.start[0])
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    out: dict[str, str] = {}
    for index, node in enumerate(body):
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        above: list[str] = []
        line = node.lineno - 1
        while line in comment_at and line not in code_lines:
            above.insert(0, comment_at[line])
            line -= 1
        end = node.end_lineno or node.lineno
        # A field's own end-of-line comment wins over the lines above, which then head a group
        # of fields ("# stage 1: audio classifier").
        parts = [comment_at[end]] if end in comment_at else above
        following = body[index + 1] if index + 1 < len(body) else None
        if (
            isinstance(following, ast.Expr)
            and isinstance(following.value, ast.Constant)
            and isinstance(following.value.value, str)
        ):  # an attribute docstring
            parts.append(following.value.value)
        text = " ".join(p for p in parts if p and not p.startswith(("fmt:", "noqa", "type:")))
        if text:
            out[node.target.id] = text
    return out


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
        return args[list(args).index(value)]  # the option itself: np.str_('sgd') -> 'sgd'
    if origin is tuple:
        inner = args[0] if args else Any
        if isinstance(value, str):  # "rgb,audio" is a list, as --set and --modalities take it
            pieces = [v.strip() for v in value.split(",") if v.strip()]
            typed = "," in value and inner is not str  # "10,20" for a list of numbers
            value = [safe_yaml.load(v, source=where) if typed else v for v in pieces]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(owner, key, v, inner) for v in value)
    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if hint is int:  # np.int64 (a notebook's np.arange) is an integer too
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(value)
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)  # np.str_ (a loop over np.array(["rgb", ...])) is written as str
    return value
