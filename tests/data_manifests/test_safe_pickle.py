"""The restricted unpickler: real annotation pickles load, code-running pickles are refused."""

from __future__ import annotations

import collections
import os
import pickle

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from avda.data_manifests import safe_pickle
from avda.data_manifests.safe_pickle import ALLOWED_GLOBALS, UnsafePickleError
from avda.errors import AvdaError, ManifestError

REAL_PICKLES = [
    *(f"epic55_mmsada_splits/D{d}_{s}.pkl" for d in (1, 2, 3) for s in ("train", "test")),
    *(
        f"epic100/UDA_annotations/EPIC_100_uda_{name}.pkl"
        for name in (
            "source_train",
            "source_val",
            "source_test_timestamps",
            "target_train_timestamps",
            "target_val",
            "target_test_timestamps",
        )
    ),
]


class _RunsCommand:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _CallsEval:
    def __reduce__(self):
        return (eval, ("1 + 1",))


class _RecordingUnpickler(pickle.Unpickler):
    """Plain unpickler (the real files are trusted) that records every global it resolves."""

    def __init__(self, file) -> None:
        super().__init__(file)
        self.names: set[tuple[str, str]] = set()

    def find_class(self, module: str, name: str):
        self.names.add((module, name))
        return super().find_class(module, name)


@pytest.mark.parametrize("relative", REAL_PICKLES)
def test_real_annotation_pickles_load_and_equal_pandas(shared_data, relative):
    path = shared_data / "annotations" / relative
    frame = safe_pickle.load(path)
    assert isinstance(frame, pd.DataFrame)
    pd.testing.assert_frame_equal(frame, pd.read_pickle(path))


def test_allow_list_covers_the_real_pickles_and_nothing_dangerous(shared_data):
    needed: set[tuple[str, str]] = set()
    for relative in REAL_PICKLES:
        with open(shared_data / "annotations" / relative, "rb") as file:
            recorder = _RecordingUnpickler(file)
            recorder.load()
        needed |= recorder.names
    assert needed <= ALLOWED_GLOBALS
    # The protocol-2 EPIC-100 pickles name Python 2's builtins module and store bytes via codecs.
    assert {("__builtin__", "slice"), ("_codecs", "encode")} <= needed
    roots = {module.split(".")[0] for module, _ in ALLOWED_GLOBALS}
    assert roots == {
        "numpy",
        "pandas",
        "pyarrow",
        "builtins",
        "__builtin__",
        "_codecs",
        "collections",
    }
    builtins_allowed = {name for module, name in ALLOWED_GLOBALS if "builtin" in module}
    assert builtins_allowed == {"slice", "bytearray"}


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_feature_pickles_round_trip(protocol):
    rng = np.random.default_rng(0)
    features = {
        "features": collections.OrderedDict(
            RGB=rng.normal(size=(3, 25, 8)).astype(np.float32),
            Flow=rng.normal(size=(3, 25, 8)).astype(np.float32),
            Audio=rng.normal(size=(3, 25, 8)).astype(np.float16),
        ),
        "narration_ids": ["P01_101_0", "P01_101_1", "P01_101_2"],
        "count": np.int64(3),
    }
    loaded = safe_pickle.loads(pickle.dumps(features, protocol=protocol))
    assert list(loaded["features"]) == ["RGB", "Flow", "Audio"]
    for key, value in features["features"].items():
        np.testing.assert_array_equal(loaded["features"][key], value)
        assert loaded["features"][key].dtype == value.dtype
    assert loaded["narration_ids"] == features["narration_ids"]
    assert loaded["count"] == 3


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_dataframes_written_by_this_pandas_load(protocol):
    frame = pd.DataFrame(
        {
            "verb_class": [3, 1],
            "narration": ["open door", "take cup"],
            "category": pd.Categorical(["a", "b"]),
            "score": pd.array([1.5, None], dtype="Float64"),
            "count": pd.array([1, None], dtype="Int64"),
            "flag": pd.array([True, None], dtype="boolean"),
            "when": pd.to_datetime(["2020-01-01", "2020-01-02"]),
            "all_nouns": [["door"], ["cup", "tap"]],
        },
        index=pd.Index(["P01_01_0", "P01_01_1"], name="narration_id"),
    )
    loaded = safe_pickle.loads(pickle.dumps(frame, protocol=protocol))
    pd.testing.assert_frame_equal(loaded, frame)


def test_pickle_running_a_shell_command_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "features.pkl"
    path.write_bytes(pickle.dumps({"features": _RunsCommand(str(marker))}))
    with pytest.raises(UnsafePickleError) as caught:
        safe_pickle.load(path)
    message = str(caught.value)
    assert str(path) in message
    assert f"{os.system.__module__}.system" in message  # posix.system on Linux
    assert not marker.exists()
    assert isinstance(caught.value, ManifestError)
    assert isinstance(caught.value, AvdaError)
    assert isinstance(caught.value, pickle.UnpicklingError)


def test_builtins_eval_is_refused():
    with pytest.raises(UnsafePickleError, match=r"builtins\.eval"):
        safe_pickle.loads(pickle.dumps(_CallsEval()), source="x.pkl")


def test_a_global_that_is_refused_is_named_even_inside_a_dataframe():
    frame = pd.DataFrame({"x": pd.Series([_CallsEval()], dtype=object)})
    with pytest.raises(UnsafePickleError, match=r"x\.pkl refers to builtins\.eval"):
        safe_pickle.loads(pickle.dumps(frame), source="x.pkl")


def test_crafted_pyarrow_buffers_are_refused():
    data = pickle.dumps(pa.array(["ab"]), protocol=4)
    good = np.array([0, 2], dtype=np.int32).tobytes()
    bad = np.array([0, 100], dtype=np.int32).tobytes()
    assert data.count(good) == 1
    with pytest.raises(UnsafePickleError, match="corrupt"):
        safe_pickle.loads(data.replace(good, bad), source="evil.pkl")


def test_truncated_and_missing_files_are_clear_errors(tmp_path):
    path = tmp_path / "cut.pkl"
    path.write_bytes(pickle.dumps({"a": np.zeros(10)})[:-5])
    with pytest.raises(UnsafePickleError, match="cut.pkl is not a readable pickle"):
        safe_pickle.load(path)
    with pytest.raises(UnsafePickleError, match="does not exist"):
        safe_pickle.load(tmp_path / "missing.pkl")
