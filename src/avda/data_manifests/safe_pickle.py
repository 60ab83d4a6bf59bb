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
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

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


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: io.BufferedIOBase, source: str) -> None:
        super().__init__(file)
        self.source = source

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in ALLOWED_GLOBALS:
            raise UnsafePickleError(
                f"{self.source} refers to {module}.{name}, which is not allowed: avda reads "
                "pickles with a restricted unpickler that admits only numpy and pandas types "
                "(see avda.data_manifests.safe_pickle.ALLOWED_GLOBALS); if you trust the file, "
                "convert it to CSV, Parquet or .npy with the tool that wrote it"
            )
        if (module, name) == ("pyarrow.lib", "_restore_array"):
            return _validated_restore_array
        return super().find_class(module, name)


def loads(data: bytes, *, source: str = "<bytes>") -> object:
    """Unpickle ``data`` admitting only :data:`ALLOWED_GLOBALS`; ``source`` names it in errors."""
    try:
        return _RestrictedUnpickler(io.BytesIO(data), source).load()
    except UnsafePickleError:
        raise
    except (
        pickle.UnpicklingError,
        EOFError,
        AttributeError,
        ImportError,
        IndexError,
        KeyError,
    ) as exc:
        raise UnsafePickleError(
            f"{source} is not a readable pickle ({type(exc).__name__}: {exc}); "
            "check that the file is complete and was written with pickle"
        ) from exc
    except (TypeError, ValueError) as exc:
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
