"""Read pickles without letting them run code.

``pickle.load`` imports and calls whatever global a file names (``os.system`` via ``__reduce__``
is the classic attack). The annotation pickles of EPIC-KITCHENS and the feature pickles of the
EPIC-100 UDA baseline need only a handful of numpy and pandas globals, so :func:`load` admits
exactly those and refuses everything else, naming the forbidden global and the file.

The allow-list (:data:`ALLOWED_GLOBALS`) was taken from the real files with ``pickletools`` and
a recording unpickler:

* ``epic55_mmsada_splits/D*_{train,test}.pkl`` (protocol 4): ``pandas.core.frame.DataFrame``,
  ``...internals.managers.BlockManager``, ``...indexes.base._new_Index``, ``...indexes.base.Index``,
  ``...indexes.range.RangeIndex``, ``numpy.ndarray``, ``numpy.dtype``,
  ``numpy.core.multiarray._reconstruct``;
* ``epic100/UDA_annotations/*.pkl`` (protocol 2) add ``__builtin__.slice``, ``_codecs.encode``
  (how protocol 2 stores ``bytes``), ``pandas.core.arrays.categorical.Categorical``,
  ``...dtypes.dtypes.CategoricalDtype`` and ``...indexes.category.CategoricalIndex``;
* feature pickles ``{'features': {'RGB': ndarray, ...}, 'narration_ids': [...]}`` need
  ``numpy.ndarray``, ``numpy.dtype``, ``_reconstruct`` and, for numpy scalars, ``scalar``;
  protocol 5 stores arrays with ``numpy._core.numeric._frombuffer``.

numpy 2 renamed ``numpy.core`` to ``numpy._core``, and pandas >= 2 pickles the same classes under
their public names (``pandas.DataFrame``, ``pandas.Index``...); both spellings are admitted so that
files written by old and new versions load. ``collections.OrderedDict`` is admitted for feature
dicts written with it.

pandas >= 3 stores every string column (and string column labels) as a pyarrow array, so a
DataFrame it pickles needs three ``pyarrow.lib`` functions: ``py_buffer`` (wraps bytes),
``type_for_alias`` (a type from its name) and ``_restore_array``. The last rebuilds an array from
raw buffers without checking them; avda substitutes a wrapper that runs pyarrow's full
validation (offsets within bounds, valid UTF-8) on every restored array, so a crafted buffer is
refused instead of being read out of bounds.

Memory. A pickle is a program, and a few bytes of it can ask for any amount of memory: an array
``_reconstruct``-ed with a huge shape or dtype, ``bytearray(10**12)``, a memo index of 2**31 (the
C unpickler grows its memo table to it), an object array whose state claims more elements than
its list holds (numpy reads past the list: a crash). :func:`loads` therefore runs Python's own
unpickler (``pickle._Unpickler``, whose opcodes can be checked one by one; about 0.25 s for the
3.5 MB EPIC-100 annotation pickles) and charges every array, ``bytearray``, encoded string and
``RangeIndex`` it builds against one budget of :func:`memory_budget` bytes: 64 times the size of
the pickle plus 64 MiB (a legitimate pickle of N bytes holds about N bytes of arrays; object
arrays cost 8 bytes per element of at least one byte each; a pyarrow array, 8 bytes per entry).
Going over refuses the file with :class:`PickleTooLargeError`, before anything is allocated.
``bytearray`` is admitted only from bytes data, ``_codecs.encode`` only to latin-1, and the
pandas containers (DataFrame, Series, Index, Categorical, extension arrays) only as classes
rebuilt without arguments (``__new__`` then ``__setstate__``, which is how pandas pickles them);
``numpy.ndarray`` is admitted only as the type given to ``_reconstruct``.
"""

from __future__ import annotations

import codecs
import functools
import io
import math
import operator
import pickle
import struct
from pathlib import Path

import numpy as np

from avda.errors import ManifestError


class UnsafePickleError(ManifestError, pickle.UnpicklingError):
    """A pickle names a global outside the numpy/pandas allow-list, or cannot be read."""


_NUMPY = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy._core.numeric", "_frombuffer"),
}
_PANDAS = {
    ("pandas.core.frame", "DataFrame"),
    ("pandas.core.series", "Series"),
    ("pandas.core.internals.managers", "BlockManager"),
    ("pandas.core.internals.managers", "SingleBlockManager"),
    ("pandas.core.indexes.base", "_new_Index"),
    ("pandas.core.indexes.base", "Index"),
    ("pandas.core.indexes.range", "RangeIndex"),
    ("pandas.core.indexes.category", "CategoricalIndex"),
    ("pandas.core.indexes.multi", "MultiIndex"),
    ("pandas.core.arrays.categorical", "Categorical"),
    ("pandas.core.dtypes.dtypes", "CategoricalDtype"),
    ("pandas._libs.internals", "_unpickle_block"),
    ("pandas._libs.arrays", "__pyx_unpickle_NDArrayBacked"),
    # pandas >= 2 writes the same classes under their public names.
    ("pandas", "DataFrame"),
    ("pandas", "Series"),
    ("pandas", "Index"),
    ("pandas", "RangeIndex"),
    ("pandas", "CategoricalIndex"),
    ("pandas", "MultiIndex"),
    ("pandas", "Categorical"),
    ("pandas", "CategoricalDtype"),
    # pandas >= 3: string columns and nullable extension arrays.
    ("pandas", "NA"),
    ("pandas", "StringDtype"),
    ("pandas", "Int64Dtype"),
    ("pandas", "Float64Dtype"),
    ("pandas", "BooleanDtype"),
    ("pandas.arrays", "ArrowStringArray"),
    ("pandas.arrays", "StringArray"),
    ("pandas.arrays", "IntegerArray"),
    ("pandas.arrays", "FloatingArray"),
    ("pandas.arrays", "BooleanArray"),
    ("pandas.arrays", "DatetimeArray"),
}
_PYARROW = {
    ("pyarrow.lib", "py_buffer"),
    ("pyarrow.lib", "type_for_alias"),
    ("pyarrow.lib", "_restore_array"),  # replaced by _validated_restore_array
}
_BUILTINS = {
    ("builtins", "slice"),  # RangeIndex / BlockManager placement
    ("__builtin__", "slice"),  # the same, in protocol 2 pickles written by Python 2 names
    ("builtins", "bytearray"),
    ("__builtin__", "bytearray"),
    ("_codecs", "encode"),  # protocol 2 stores bytes as _codecs.encode(str, 'latin1')
    ("collections", "OrderedDict"),
}
ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(_NUMPY | _PANDAS | _BUILTINS | _PYARROW)


def _validated_restore_array(*args: object) -> object:
    """``pyarrow.lib._restore_array`` followed by a full validation of the rebuilt array."""
    from pyarrow import lib

    array = lib._restore_array(*args)
    array.validate(full=True)  # raises ArrowInvalid (a ValueError) on inconsistent buffers
    return array


BUDGET_FACTOR = 64
BUDGET_SLACK = 64 << 20
""":func:`memory_budget`: a pickle of N bytes may build ``64 * N + 64 MiB`` bytes of objects."""

_LATIN1 = ("latin1", "latin-1", "iso-8859-1", "iso8859-1", "l1")


def memory_budget(size: int) -> int:
    """Bytes of arrays, buffers and indexes a pickle of ``size`` bytes may build."""
    return BUDGET_FACTOR * size + BUDGET_SLACK


class PickleTooLargeError(UnsafePickleError, MemoryError):
    """A pickle asks for far more memory than its size warrants (see :func:`memory_budget`)."""


def _count(shape: object) -> int | None:
    """Elements of ``shape`` (an int or a sequence of ints), or None if it is not a shape."""
    try:
        dims = [operator.index(shape)] if not isinstance(shape, tuple | list) else shape
        dims = [operator.index(dim) for dim in dims]
    except TypeError:
        return None
    if any(dim < 0 for dim in dims):
        return None
    return math.prod(dims)


def _short(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters (a crafted value quoted in an error)."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _is_container(cls: type) -> bool:
    """numpy arrays and the pandas classes that hold data (built only by ``__setstate__``)."""
    if issubclass(cls, np.ndarray):
        return True
    if not cls.__module__.startswith("pandas"):
        return False
    import pandas as pd
    from pandas.api.extensions import ExtensionArray

    return issubclass(cls, pd.DataFrame | pd.Series | pd.Index | ExtensionArray)


class _RestrictedUnpickler(pickle._Unpickler):  # type: ignore[name-defined]
    """Python's unpickler (its opcodes can be overridden, unlike the C one's), admitting only
    :data:`ALLOWED_GLOBALS` and charging what it builds against :func:`memory_budget`."""

    dispatch = dict(pickle._Unpickler.dispatch)  # type: ignore[attr-defined]

    def __init__(self, data: bytes, source: str) -> None:
        super().__init__(io.BytesIO(data))
        self.source = source
        self.size = len(data)
        self.budget = memory_budget(len(data))
        self.spent = 0

    # ------------------------------------------------------------------ refusals and budget
    def refuse(self, message: str) -> UnsafePickleError:
        return UnsafePickleError(
            f"{self.source}: {message}; avda refuses it (the file is crafted or corrupt)"
        )

    def charge(self, nbytes: int, what: str) -> None:
        if self.spent + nbytes > self.budget:
            raise PickleTooLargeError(
                f"{self.source} asks for {nbytes:,} bytes ({what}), more than a pickle of "
                f"{self.size:,} bytes may build ({self.budget:,} bytes in all: "
                f"{BUDGET_FACTOR} x its size + {BUDGET_SLACK >> 20} MiB); avda refuses it "
                "without allocating (the file is crafted or corrupt)"
            )
        self.spent += nbytes

    def charge_array(self, shape: object, dtype: object, what: str) -> None:
        count = _count(shape)
        if count is None:
            raise self.refuse(f"{what} has an invalid shape {_short(shape)}")
        try:
            itemsize = np.dtype(dtype).itemsize  # type: ignore[call-overload]
        except (TypeError, ValueError) as exc:
            raise self.refuse(f"{what} has an invalid dtype {_short(dtype)} ({exc})") from None
        self.charge(count * max(itemsize, 1), f"{what} of shape {_short(shape)}")

    # ------------------------------------------------------------------ globals
    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in ALLOWED_GLOBALS:
            raise UnsafePickleError(
                f"{self.source} refers to {module}.{name}, which is not allowed: avda reads "
                "pickles with a restricted unpickler that admits only numpy and pandas types "
                "(see avda.data_manifests.safe_pickle.ALLOWED_GLOBALS); if you trust the file, "
                "convert it to CSV, Parquet or .npy with the tool that wrote it"
            )
        if (module, name) == ("pyarrow.lib", "_restore_array"):
            return self.restore_array
        found = super().find_class(module, name)
        if name == "bytearray":
            return self.bytearray
        if (module, name) == ("_codecs", "encode"):
            return self.encode
        if name == "_reconstruct":
            return functools.partial(self.reconstruct, found)
        if name == "scalar":
            return functools.partial(self.scalar, found)
        if name == "_new_Index":
            return functools.partial(self.new_index, found)
        return found

    def bytearray(self, *args: object) -> bytearray:
        if args and not isinstance(args[0], bytes | bytearray | str):
            raise self.refuse(
                f"bytearray({type(args[0]).__name__}) is not allowed (only bytearray(bytes))"
            )
        if args:
            self.charge(len(args[0]), "a bytearray")  # type: ignore[arg-type]
        return bytearray(*args)  # type: ignore[call-overload]

    def encode(self, text: object, encoding: object = "utf-8", *rest: object) -> bytes:
        if not isinstance(text, str) or str(encoding).lower() not in _LATIN1:
            raise self.refuse(
                f"_codecs.encode is admitted only for str to latin1 (got {_short(encoding)})"
            )
        self.charge(len(text), "an encoded string")
        return codecs.encode(text, "latin1", *rest)  # type: ignore[arg-type]

    def restore_array(self, *args: object) -> object:
        """A validated pyarrow array, charged 8 bytes per entry: an array of nulls has no
        buffers, so its length costs nothing until pandas turns it into numpy."""
        array = _validated_restore_array(*args)
        self.charge(8 * len(array), f"a pyarrow array of {len(array):,} entries")  # type: ignore[arg-type]
        return array

    def reconstruct(self, real: object, subtype: object, shape: object, dtype: object) -> object:
        if not (isinstance(subtype, type) and issubclass(subtype, np.ndarray)):
            raise self.refuse(f"_reconstruct of {subtype!r}, not a numpy array type")
        self.charge_array(shape, dtype, "an array")
        return real(subtype, shape, dtype)  # type: ignore[operator]

    def scalar(self, real: object, dtype: object, *args: object) -> object:
        self.charge_array((), dtype, "a numpy scalar")
        return real(dtype, *args)  # type: ignore[operator]

    def new_index(self, real: object, cls: object, data: object = None) -> object:
        import pandas as pd

        if not (isinstance(cls, type) and issubclass(cls, pd.Index)):
            raise self.refuse(f"_new_Index of {cls!r}, not a pandas index type")
        if issubclass(cls, pd.RangeIndex) and isinstance(data, dict):
            try:
                length = len(range(data.get("start", 0), data["stop"], data.get("step", 1)))
            except (KeyError, TypeError, ValueError):
                length = 0  # not a plain range: pandas validates it
            self.charge(8 * length, f"a RangeIndex of {length:,} entries")
        return real(cls, data)  # type: ignore[operator]

    # ------------------------------------------------------------------ opcodes that call
    def load_reduce(self) -> None:
        func = self.stack[-2]
        if isinstance(func, type) and _is_container(func):
            raise self.refuse(
                f"{func.__module__}.{func.__qualname__}(...) is called with arguments, which "
                "pickles written by numpy or pandas never do"
            )
        pickle._Unpickler.load_reduce(self)  # type: ignore[attr-defined]

    def load_newobj(self) -> None:
        self.check_new(self.stack[-2], self.stack[-1], {})
        pickle._Unpickler.load_newobj(self)  # type: ignore[attr-defined]

    def load_newobj_ex(self) -> None:
        self.check_new(self.stack[-3], self.stack[-2], self.stack[-1])
        pickle._Unpickler.load_newobj_ex(self)  # type: ignore[attr-defined]

    def check_new(self, cls: object, args: object, kwargs: object) -> None:
        if isinstance(cls, type) and _is_container(cls) and (args or kwargs):
            raise self.refuse(
                f"{cls.__module__}.{cls.__qualname__}.__new__ is given arguments, which "
                "pickles written by numpy or pandas never do"
            )

    def load_build(self) -> None:
        state = self.stack[-1]
        inst = self.stack[-2]
        if isinstance(inst, np.ndarray) and isinstance(state, tuple) and len(state) in (4, 5):
            shape, dtype, rawdata = state[-4], state[-3], state[-1]
            self.charge_array(shape, dtype, "an array")
            if isinstance(dtype, np.dtype) and dtype.hasobject:
                count = _count(shape)
                if not isinstance(rawdata, list) or len(rawdata) != count:
                    held = len(rawdata) if isinstance(rawdata, list) else type(rawdata).__name__
                    raise self.refuse(
                        f"an object array of {count:,} elements is given {held} items"
                    )
        pickle._Unpickler.load_build(self)  # type: ignore[attr-defined]

    dispatch[pickle.REDUCE[0]] = load_reduce
    dispatch[pickle.NEWOBJ[0]] = load_newobj
    dispatch[pickle.NEWOBJ_EX[0]] = load_newobj_ex
    dispatch[pickle.BUILD[0]] = load_build


def loads(data: bytes, *, source: str = "<bytes>") -> object:
    """Unpickle ``data`` admitting only :data:`ALLOWED_GLOBALS` and building at most
    :func:`memory_budget` bytes; ``source`` names it in errors."""
    try:
        return _RestrictedUnpickler(data, source).load()
    except UnsafePickleError:
        raise
    except MemoryError as exc:
        raise PickleTooLargeError(
            f"{source} asks for more memory than this machine has ({type(exc).__name__}); "
            "avda refuses it (the file is crafted or corrupt)"
        ) from exc
    except (
        pickle.UnpicklingError,
        EOFError,
        AttributeError,
        ImportError,
        IndexError,
        KeyError,
        struct.error,
    ) as exc:
        raise UnsafePickleError(
            f"{source} is not a readable pickle ({type(exc).__name__}: {exc}); "
            "check that the file is complete and was written with pickle"
        ) from exc
    except (TypeError, ValueError, OverflowError) as exc:
        raise UnsafePickleError(
            f"{source} could not be rebuilt from its pickle ({type(exc).__name__}: {exc}); "
            "the file is corrupt or was written by an incompatible numpy/pandas version"
        ) from exc


def load(path: str | Path) -> object:
    """Unpickle the file at ``path`` admitting only numpy and pandas globals.

    Raises :class:`UnsafePickleError` naming the file and the first forbidden global.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise UnsafePickleError(f"pickle file {path} does not exist; check the path") from exc
    except OSError as exc:
        raise UnsafePickleError(f"pickle file {path} cannot be read: {exc}") from exc
    return loads(data, source=str(path))
