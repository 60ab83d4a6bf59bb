"""A message in the caller's words: the command line's options as the Python API's keywords or
a sweep spec's keys.

The code the commands share writes its errors, warnings and failure records with the command
line's options (``--epochs``, ``--set lr=...``, ``-o``). :func:`keywords` rewrites one message
for another caller from a table of option -> name; :func:`spoken` rewrites every log record of
avda made inside it, and :func:`spelt` a message made there that is no record (a table's
notes); :func:`keyword_errors` decorates a function with both, its errors and records too
(``avda.api``'s functions, ``avda.sweep.run_sweep``; the failure records a sweep returns are
rewritten by ``avda.sweep``). The command line uses none of it: it calls the functions'
``__wrapped__``, and its messages are its own.
"""

from __future__ import annotations

import contextlib
import contextvars
import copy
import functools
import logging
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from avda.errors import AvdaError

_VALUE = r"[\w@.+-]+"
_SET_VALUE = r"(?:\[[^\]]*\]|[^\s,;)]+)"  # a --set value: a [list] or one word
# avda's commands (tests/test_api.py checks them against the CLI's): prose about avda ("whose
# workers avda does not submit, ...: run with --cluster slurm") is no command
COMMANDS = ("cache", "cluster", "demo", "evaluate", "extract", "finetune", "flow", "list",
            "manifest", "predict", "report", "sweep", "train", "weights")  # fmt: skip
# `avda extract --recipe cia`: a command, left as is
_COMMAND = rf"\bavda (?:{'|'.join(COMMANDS)})(?![\w-])[^;)`]*"
# a quoted value (a repr: a path, a manifest's cell, a name): what it holds is not an option
_QUOTED = r"""(?<![\w'"])(?:'[^'\n]*'|"[^"\n]*")(?!\w)"""
# an unquoted path (a word holding a /, not starting with an option: --domain/--split is two):
# a folder of it named --set is no option (/data/--set/c.zarr)
_PATH = r"""(?<![^\s(\[])(?=[^\s(\[`'"-])\S*/\S*"""


def keywords(
    message: str, table: Mapping[str, str], *, bare_values: bool = False, yaml: bool = False
) -> str:
    """The command-line options ``table`` names in ``message`` as the caller's names.

    ``table``: option (``"force"``, ``"o"`` for ``-o``) -> name (``"force=True"``, ``"out"``).
    With a ``"set="`` entry, ``--set a=N --set b=N`` (or ``--set a=N, b=N``) becomes one
    assignment of every field: ``NAME={'a': N, 'b': N}`` (Python), or ``a: N, b: N`` with
    ``yaml`` (a spec's keys); without it, it stays. An option followed by a quoted value
    (``--split 'x'``) becomes ``splits='x'`` (``split: 'x'`` with ``yaml``); ``bare_values``:
    by any word (``--set X`` -> ``eval_set='X'``: evaluate's messages), except after a flag
    (a name ``NAME=True``: ``--per-class with`` -> ``per_class=True with``). A command to run
    (``avda train --config RUN/config.yaml``, up to ``;``, ``)`` or a backtick), a quoted
    value and an unquoted path (a word with a ``/``: ``/data/--set/c.zarr``) stay as they
    are."""
    # a path is only taken for options where a folder of it starts with - (/data/--set/)
    pattern = _pattern(frozenset(table), bare_values, "/-" in message)

    def keyword(match: re.Match) -> str:
        if match.group("command") is not None:
            return match.group(0)
        if match.groupdict().get("assigned") is not None:
            pairs = re.findall(rf"(\w+)=({_SET_VALUE})", match.group("assigned"))
            if yaml:
                return ", ".join(f"{key}: {value}" for key, value in pairs)
            fields = ", ".join(f"{key!r}: {_literal(value)}" for key, value in pairs)
            return f"{table['set=']}={{{fields}}}"
        name, found = table[match.group("name")], match.group("value")
        if name.endswith("=True") and found is not None:  # a flag: the word is the message's
            return f"{name} {found}"
        if found is None:
            return name
        if yaml:
            return f"{name}: {found}"
        return f"{name}={found}" if found.startswith("'") else f"{name}={found!r}"

    return pattern.sub(keyword, message)


@functools.lru_cache(maxsize=64)
def _pattern(options: frozenset[str], bare_values: bool, paths: bool) -> re.Pattern[str]:
    """:func:`keywords`' pattern for a table of ``options`` (built once per table: every avda
    log record made inside an API call or a sweep run goes through it); ``paths``: one that
    leaves unquoted paths (a third slower: only for a message where one may hold a folder
    named like an option)."""
    names = sorted((n for n in options if not n.endswith("=")), key=lambda n: (-len(n), n))
    alternatives = "|".join(re.escape(n) for n in names)
    # an option of the table is no value: --per-class --metric top5 kept --metric top5
    value = rf"(?!--?(?:{alternatives})(?![\w-])){_VALUE}" if bare_values else r"'[^']*'"
    pair = rf"\w+={_SET_VALUE}"
    assign = rf"|--set (?P<assigned>{pair}(?:(?:,? --set |, ){pair})*)" if "set=" in options else ""
    return re.compile(
        rf"(?P<command>{_COMMAND}|{_QUOTED}{f'|{_PATH}' if paths else ''}){assign}"
        rf"|(?<![\w-])--?(?P<name>{alternatives})(?![\w-])"
        rf"(?! ?{_VALUE}=)(?: (?P<value>{value}))?"
    )


def _literal(value: str) -> str:
    """A ``--set`` value as Python: ``true`` -> ``True``, ``[rgb,audio]`` -> ``['rgb', 'audio']``,
    ``off`` -> ``'off'``; numbers and placeholders (``N``, ``...``) as they are."""
    if value.startswith("[") and value.endswith("]"):
        return "[" + ", ".join(_literal(v) for v in value[1:-1].split(",") if v) + "]"
    if value in ("true", "false"):
        return value.title()
    if value == "..." or value.isupper() or re.fullmatch(r"[-+]?[\d.]+(e[-+]?\d+)?", value):
        return value
    return repr(value)


_SPELLING: contextvars.ContextVar[Callable[[str], str] | None] = contextvars.ContextVar(
    "avda_spelling", default=None
)
_INSTALL = threading.Lock()  # guards _active and the factory's installing and removal
_active = 0  # the spoken() blocks running, in every thread


def spelt(message: str) -> str:
    """``message`` in the words of the :func:`spoken` block it is made in, as a log record
    made there is (a table's notes, which the caller keeps beside the warnings); as it is
    outside one (the command line)."""
    spell = _SPELLING.get()
    return message if spell is None else spell(message)


def _spelling_factory(base: Callable[..., logging.LogRecord]) -> Callable[..., logging.LogRecord]:
    """``base`` (the log record factory in place), whose records of avda's loggers made under
    :func:`spoken` carry their message rewritten."""

    def make(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = base(*args, **kwargs)
        if _SPELLING.get() is None or record.name.split(".")[0] != "avda":
            return record
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a bad format: logging reports it when it emits
            return record
        record.msg, record.args = spelt(message), ()
        return record

    make.avda_spelling = True  # type: ignore[attr-defined]
    make.avda_base = base  # type: ignore[attr-defined]
    return make


@contextlib.contextmanager
def spoken(spell: Callable[[str], str]) -> Iterator[None]:
    """Inside it (this thread or task), every record avda logs (warnings, notes) has its
    message passed through ``spell`` when it is made, whatever handler shows or keeps it: the
    user's, pytest's, a sweep worker's collector. Records of other libraries, and of threads
    outside a block, are left.

    The log record factory that does it is in place while a block runs in any thread: the
    first to enter installs it over the factory in place, the last to leave puts that one
    back (unless another was set over it since: it is left, and ours, under it, then passes
    every record on as made), so that the process's logging is as it was between calls."""
    global _active
    with _INSTALL:  # on each entry: a factory set since (without ours) is wrapped in turn
        factory = logging.getLogRecordFactory()
        if not getattr(factory, "avda_spelling", False):
            logging.setLogRecordFactory(_spelling_factory(factory))
        _active += 1
    token = _SPELLING.set(spell)
    try:
        yield
    finally:
        _SPELLING.reset(token)
        with _INSTALL:
            _active -= 1
            factory = logging.getLogRecordFactory()
            if not _active and getattr(factory, "avda_spelling", False):
                logging.setLogRecordFactory(factory.avda_base)


# How a summary of warnings has each printed: on the command line ``avda -v``, which sets the
# root logger to DEBUG (the summaries check avda's logger, which inherits it); from Python,
# avda's logger so set.
VERBOSE = "avda -v"
_PYTHON_VERBOSE = "logging.getLogger('avda').setLevel(logging.DEBUG)"


def keyword_errors(
    spell: Callable[[str], str], records: Callable[[Any], Any] | None = None
) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorate a function a Python caller shares with the CLI (the Python API's,
    ``run_sweep``): its :class:`AvdaError` messages and the records it logs (warnings, notes:
    :func:`spoken`) pass through ``spell``, and name what a Python caller does for
    :data:`VERBOSE` (the CLI calls ``function.__wrapped__``, whose messages are its own);
    ``records(result)``: its result with the failure records it returns so worded."""

    def in_python(message: str) -> str:
        return spell(message.replace(VERBOSE, _PYTHON_VERBOSE))

    def decorate(function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                with spoken(in_python):
                    result = function(*args, **kwargs)
                return result if records is None else records(result)
            except AvdaError as exc:
                message = in_python(str(exc))
                if message == str(exc):
                    raise
                raise reworded(exc, message) from exc.__cause__

        return call

    return decorate


def reworded(exc: AvdaError, message: str) -> AvdaError:
    """``exc`` saying ``message``: one error, as raised (its frames, cause and attributes), not
    a second one beside it; a copy, not ``type(exc)(message)``: a constructor may take more
    than the message (``ManifestProblems(path, problems)``)."""
    error = copy.copy(exc)
    error.args = (message,)
    if isinstance(error, ImportError):  # its str() is its msg, not its args
        error.msg = message
    return error.with_traceback(exc.__traceback__)


__all__ = ["VERBOSE", "keyword_errors", "keywords", "reworded", "spelt", "spoken"]
