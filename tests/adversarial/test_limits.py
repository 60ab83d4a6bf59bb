"""Untrusted inputs have memory and size limits (issue 18, item 8): a tiny crafted pickle cannot
allocate without bound, nested YAML aliases ("billion laughs") and recursive aliases are refused,
a spec cannot expand to an unbounded number of runs; legitimate files still load.

Every refusal must come quickly (well under a second), in one line naming the file, before the
memory is allocated. ``docs/security.md`` ("Limits") lists each limit and the test pinning it.
"""

from __future__ import annotations

import collections
import contextlib
import math
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from avda.data_manifests import safe_pickle
from avda.data_manifests.safe_pickle import UnsafePickleError
from avda.errors import AvdaError, ConfigError, RunError
from tests.conftest import make_feature_cache

_reconstruct = np._core.multiarray._reconstruct
HUGE = 1 << 40  # 1 TiB


class _Calls:
    """Pickles as ``func(*args)``, with ``state`` passed to ``__setstate__`` if given."""

    def __init__(self, func, args, state=None) -> None:
        self.func, self.args, self.state = func, args, state

    def __reduce__(self):
        if self.state is None:
            return (self.func, self.args)
        return (self.func, self.args, self.state)


@contextlib.contextmanager
def _within(seconds: float):
    """Fail (TimeoutError) if the block runs longer than ``seconds``: the code before the limits
    spent minutes (or forever) on these inputs, so they must be stopped, not waited for."""

    def expired(signum, frame):
        raise TimeoutError(f"took more than {seconds} s")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    start = time.perf_counter()
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert time.perf_counter() - start < seconds


def _refused_pickle(tmp_path: Path, data: bytes, match: str = "") -> str:
    """Write ``data`` to a file, load it with the restricted unpickler, return the one-line
    refusal (which must name the file and come in well under a second)."""
    path = tmp_path / "features.pkl"
    path.write_bytes(data)
    with _within(0.5), pytest.raises(UnsafePickleError) as caught:
        safe_pickle.load(path)
    message = str(caught.value)
    assert str(path) in message
    assert "\n" not in message
    assert match in message, message
    assert isinstance(caught.value, AvdaError)
    return message


def _feature_pickle(evil: object, protocol: int = 4) -> bytes:
    """A feature pickle whose RGB array is ``evil``."""
    return pickle.dumps({"features": {"RGB": evil}, "narration_ids": ["P01_01_0"]}, protocol)


# ------------------------------------------------------------------------------ pickles
def test_bytearray_of_a_huge_size_is_refused_without_allocating(tmp_path):
    data = _feature_pickle(_Calls(bytearray, (HUGE,)))
    assert len(data) < 200
    _refused_pickle(tmp_path, data, "bytearray(int) is not allowed")


@pytest.mark.parametrize("module", ["numpy._core.multiarray", "numpy.core.multiarray"])
def test_an_array_reconstructed_with_a_huge_shape_is_refused(tmp_path, module):
    data = _feature_pickle(_Calls(_reconstruct, (np.ndarray, (HUGE,), b"b")), protocol=2)
    data = data.replace(b"numpy._core.multiarray", module.encode())
    message = _refused_pickle(tmp_path, data, f"asks for {HUGE:,} bytes")
    assert f"more than a pickle of {len(data):,} bytes may build" in message


def test_an_array_state_with_a_huge_shape_or_dtype_is_refused(tmp_path):
    # numpy allocates the array of the state's shape before reading its data
    objects = _Calls(_reconstruct, (np.ndarray, (0,), b"b"), (1, (HUGE,), np.dtype("O"), False, []))
    _refused_pickle(tmp_path, _feature_pickle(objects), "asks for")
    wide = _Calls(_reconstruct, (np.ndarray, (2,), np.dtype(f"V{1 << 30}")))
    _refused_pickle(tmp_path, _feature_pickle(wide), "asks for")


def test_an_object_array_claiming_more_elements_than_its_list_is_refused(tmp_path):
    """numpy reads past the end of the list (a crash) when the state's shape is larger: run it
    in a child so that the code before the fix fails the test instead of killing pytest."""
    path = tmp_path / "features.pkl"
    state = (1, (100,), np.dtype("O"), False, [1])
    path.write_bytes(_feature_pickle(_Calls(_reconstruct, (np.ndarray, (0,), b"b"), state)))
    code = (
        "import sys\nfrom avda.data_manifests import safe_pickle\n"
        f"try:\n    safe_pickle.load({str(path)!r})\n"
        "except safe_pickle.UnsafePickleError as error:\n    print(error)\n    sys.exit(3)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, (done.returncode, done.stderr[-2000:])
    assert f"{path}: an object array of 100 elements is given 1 items" in done.stdout


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(_Calls(np.ndarray, ((HUGE,),)), id="ndarray(shape)"),
        pytest.param(
            _Calls(pd.DataFrame, (0, pd.RangeIndex(10**6), ["a"] * 1000)), id="DataFrame(0)"
        ),
        pytest.param(_Calls(pd.Series, (0.0, pd.RangeIndex(10**6))), id="Series(0.0)"),
    ],
)
def test_containers_called_with_arguments_are_refused(tmp_path, call):
    # pandas and numpy pickle these as cls.__new__(cls) + __setstate__, never as calls
    _refused_pickle(tmp_path, _feature_pickle(call), "which pickles written by numpy or pandas")


def test_a_huge_range_index_is_refused(tmp_path):
    data = pickle.dumps(pd.DataFrame(index=pd.RangeIndex(10**15)), protocol=4)
    assert len(data) < 1000
    _refused_pickle(tmp_path, data, "a RangeIndex of 1,000,000,000,000,000 entries")


def test_a_huge_memo_index_allocates_nothing(tmp_path):
    # LONG_BINPUT 2**31 - 1: the C unpickler grows its memo table to 2**32 entries (32 GiB)
    data = b"\x80\x04N" + b"r\xff\xff\xff\x7f" + b"."
    path = tmp_path / "memo.pkl"
    path.write_bytes(data)
    with _within(0.5):
        assert safe_pickle.load(path) is None  # Python's unpickler keeps its memo in a dict


def test_many_small_allocations_share_one_budget(tmp_path):
    """Each array is small, but they are charged against one budget for the whole file."""
    pieces = [_Calls(_reconstruct, (np.ndarray, (8 << 20,), b"b")) for _ in range(64)]
    data = pickle.dumps(pieces, protocol=4)  # 64 x 8 MiB asked by a file of ~1 KB
    assert len(data) < 2000
    message = _refused_pickle(tmp_path, data, "asks for 8,388,608 bytes")
    assert f"({safe_pickle.memory_budget(len(data)):,} bytes in all" in message


def test_codecs_encode_is_only_latin1(tmp_path):
    _refused_pickle(
        tmp_path,
        _feature_pickle(_Calls(__import__("_codecs").encode, ("x" * 10, "rot13"))),
        "_codecs.encode is admitted only for str to latin1",
    )


# ------------------------------------------------------------------------------ legitimate
def test_an_exported_feature_pickle_loads(tmp_path):
    from avda.cache import interop, open_cache

    store = make_feature_cache(tmp_path / "c.zarr", D=32)
    out = interop.export_epic_pickle(tmp_path / "c.zarr", tmp_path / "ta3n.pkl", domain="source")
    data = safe_pickle.load(out)
    rows = np.flatnonzero(open_cache(tmp_path / "c.zarr").segments["domain"] == "source")
    np.testing.assert_array_equal(data["features"]["RGB"], store.load("rgb", rows))
    assert len(data["narration_ids"]) == len(rows)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_a_large_feature_pickle_loads(protocol):
    """A pickle's arrays are about its size: far inside the budget (here 24 MiB of float32)."""
    rng = np.random.default_rng(0)
    features = collections.OrderedDict(
        RGB=rng.normal(size=(1000, 5, 1024)).astype(np.float32),
        Audio=rng.normal(size=(1000, 5, 256)).astype(np.float16),
    )
    data = pickle.dumps({"features": features, "narration_ids": list(range(1000))}, protocol)
    loaded = safe_pickle.loads(data, source="big.pkl")
    for name, array in features.items():
        np.testing.assert_array_equal(loaded["features"][name], array)


def test_the_shared_annotation_pickles_load(shared_data):
    folder = shared_data / "annotations"
    paths = sorted(folder.glob("epic55_mmsada_splits/*.pkl")) + sorted(
        folder.glob("epic100/UDA_annotations/*.pkl")
    )
    assert len(paths) == 12
    for path in paths:
        frame = safe_pickle.load(path)
        pd.testing.assert_frame_equal(frame, pd.read_pickle(path))


# ------------------------------------------------------------------------------ YAML
def _laughs(levels: int = 10, width: int = 10) -> str:
    lines = ["l0: &l0 [" + ", ".join(["lol"] * width) + "]"]
    for level in range(1, levels):
        lines.append(f"l{level}: &l{level} [" + ", ".join([f"*l{level - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("limits") / "features.zarr"
    make_feature_cache(path)
    return path


def test_a_billion_laughs_spec_is_refused_quickly(tmp_path, cache):
    from avda import sweep

    path = tmp_path / "sweep.yaml"
    path.write_text(
        f"cache: {cache}\nheads: [source-only]\nsettings: [source->target]\n" + _laughs()
    )
    assert path.stat().st_size < 1000
    with _within(1.0), pytest.raises(ConfigError) as caught:
        sweep.load_spec(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: the YAML expands to more than 100,000 nodes")
    assert "\n" not in message


def test_a_recursive_alias_is_refused(tmp_path):
    from avda import sweep

    path = tmp_path / "sweep.yaml"
    path.write_text("heads: &h [source-only, *h]\n")
    with _within(1.0), pytest.raises(ConfigError, match="an alias inside its own anchor"):
        sweep.load_spec(path)


def test_a_huge_spec_file_is_refused(tmp_path):
    from avda import sweep

    path = tmp_path / "sweep.yaml"
    path.write_text("seeds: [" + "1, " * (2 << 20) + "1]\n")
    with _within(1.0), pytest.raises(ConfigError, match="larger than 4 MiB"):
        sweep.load_spec(path)


def test_a_run_config_with_nested_aliases_is_refused(tmp_path):
    from avda import runs

    (tmp_path / "config.yaml").write_text("head: dann\n" + _laughs())
    with _within(1.0), pytest.raises(RunError, match="more than 100,000 nodes"):
        runs.read_config(tmp_path)


def test_set_values_with_nested_aliases_are_refused():
    from avda.train.heads import config_class

    laughs = "[" + ", ".join(["&a [x, x, x, x, x, x, x, x, x, x]"] + ["*a"] * 9) + "]"
    nested = laughs
    for level in range(6):  # each level: an anchor of 10 aliases to the one below
        nested = f"[&b{level} {nested}, " + ", ".join([f"*b{level}"] * 9) + "]"
    with _within(1.0), pytest.raises(ConfigError, match="--set hidden_dim: the YAML expands"):
        config_class("dann").parse_assignments([f"hidden_dim={nested}"])


# ------------------------------------------------------------------------------ run counts
def test_a_huge_seed_count_is_refused_quickly(tmp_path, cache):
    from avda import sweep

    path = tmp_path / "sweep.yaml"
    path.write_text(
        f"cache: {cache}\nheads: [source-only]\nsettings: [source->target]\nseeds: 100000000\n"
    )
    with _within(0.5), pytest.raises(ConfigError) as caught:
        sweep.load_spec(path)
    message = str(caught.value)
    assert message == (
        f"{path}:4: seeds: 100,000,000 seeds is more than the limit of 10,000 runs; if the sweep "
        "is genuine, raise it with AVDA_MAX_RUNS=N (see docs/sweep.md)"
    )


def test_the_number_of_runs_is_bounded_and_can_be_raised(tmp_path, cache, monkeypatch):
    from avda import sweep

    spec = {
        "cache": str(cache),
        "heads": ["source-only", "dann"],
        "settings": ["source->target"],
        "seeds": list(range(6000)),
    }
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    with _within(2.0), pytest.raises(ConfigError) as caught:
        sweep.load_spec(path)
    message = str(caught.value)
    assert "expands to 12,000 runs (1 cache(s) x 2 head(s) x 1 setting(s) x 6000 seed(s))" in (
        message
    )
    assert (
        "more than the limit of 10,000; if the sweep is genuine, raise it with AVDA_MAX_RUNS"
        in (message)
    )
    monkeypatch.setenv("AVDA_MAX_RUNS", "12000")
    assert len(sweep.load_spec(path).seeds) == 6000
    monkeypatch.setenv("AVDA_MAX_RUNS", "lots")
    with pytest.raises(ConfigError, match="AVDA_MAX_RUNS='lots' is not a positive integer"):
        sweep.load_spec(path)


@pytest.mark.parametrize(
    ("extra", "match"),
    [
        ("retries: 1000000000", "at most 100 retries, got 1000000000"),
        ("cluster: {workers: 1000000000}", "cluster.workers: 1,000,000,000 is more than the limit"),
        (
            "cluster: {processes: 100000}",
            "cluster.processes: 100,000 is more than the limit of 256",
        ),
    ],
)
def test_other_counts_that_multiply_work_are_bounded(tmp_path, cache, extra, match):
    from avda import sweep

    path = tmp_path / "sweep.yaml"
    path.write_text(f"cache: {cache}\nheads: [source-only]\nsettings: [source->target]\n{extra}\n")
    with pytest.raises(ConfigError, match=match):
        sweep.load_spec(path)


def test_limits_are_documented():
    text = (Path(__file__).resolve().parents[2] / "docs" / "security.md").read_text()
    limits = text[text.index("## Limits") :]
    for value in (
        f"{safe_pickle.BUDGET_FACTOR}",
        "64 MiB",
        "100,000",
        "4 MiB",
        "10,000",
        "AVDA_MAX_RUNS",
        "test_limits.py",
    ):
        assert value in limits, value
    assert math.isfinite(safe_pickle.memory_budget(1))
    assert os.path.basename(__file__) == "test_limits.py"


# ------------------------------------------------------------------------------ the CLI
def test_the_cli_prints_each_refusal_in_one_line(tmp_path, cache, capsys, monkeypatch):
    from avda import cli

    monkeypatch.chdir(tmp_path)
    Path("evil.pkl").write_bytes(_feature_pickle(_Calls(bytearray, (HUGE,))))
    Path("ann.csv").write_text("narration_id,verb_class\nP01_01_0,1\n")
    Path("sweep.yaml").write_text(
        f"cache: {cache}\nheads: [source-only]\nsettings: [source->target]\nseeds: 100000000\n"
    )
    Path("laughs.yaml").write_text(f"cache: {cache}\n" + _laughs())
    expected = {
        ("cache", "import", "evil.pkl", "-o", "i.zarr", "-a", "ann.csv"): (
            "error: evil.pkl: bytearray(int) is not allowed"
        ),
        ("sweep", "sweep.yaml"): "error: sweep.yaml:4: seeds: 100,000,000 seeds is more than",
        ("sweep", "laughs.yaml"): "error: laughs.yaml: the YAML expands to more than 100,000",
    }
    for args, start in expected.items():
        with _within(5.0):
            code = cli.main(list(args))
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 1 and len(lines) == 1 and lines[0].startswith(start), (args, err)
    assert not Path("i.zarr").exists()


def test_a_pyarrow_array_of_huge_length_is_refused(tmp_path):
    """An array of nulls has no buffers: only its length says how much pandas will allocate."""
    import pyarrow as pa

    data = pickle.dumps(pa.nulls(12345), protocol=2)
    assert data.count(b"M90M90") == 1  # BININT2 12345, twice: length and null count
    data = data.replace(b"M90M90", b"J\xff\xff\xff\x7fJ\xff\xff\xff\x7f")  # 2**31 - 1
    _refused_pickle(tmp_path, data, "a pyarrow array of 2,147,483,647 entries")
