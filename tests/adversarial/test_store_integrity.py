"""Store integrity under kills, concurrency and refused input (issue 18, items 2, 3, 6).

- An ``avda cache import`` killed at any moment leaves the store as if it never started or had
  fully finished; its rerun equals a clean import.
- Two writers at once: the second is refused in one line naming the first (never a silent loss
  of rows); export does not read a store that is being written.
- A refused import (wrong shape, non-numeric values, duplicate ids) leaves the store byte for
  byte as it was.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.adversarial import _helpers

REPO = Path(__file__).resolve().parents[2]
FAULT_EXIT = 75  # avda.cache.faults.EXIT_CODE


def _env(**extra) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        [str(REPO / "src"), str(REPO), env.get("PYTHONPATH", "")]
    ).rstrip(os.pathsep)
    env.pop("AVDA_FAULT", None)
    env.update(extra)
    return env


def _avda(*args: str, **env) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "avda.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=_env(**env),
        timeout=300,
    )


def _import_args(files, name: str, out: Path) -> list[str]:
    return ["cache", "import", files[name], "-o", out, "-a", files["ann"], "--chunk-rows", "4"]


def _clean(files, tmp_path: Path, names=("base", "new")) -> Path:
    from avda.cache import interop

    out = tmp_path / "clean.zarr"
    for name in names:
        interop.import_features(files[name], out=out, annotations=files["ann"], chunk_rows=4)
    return out


# --------------------------------------------------------------------------- kills
def _kill_every_write(tmp_path: Path, *options: str) -> dict:
    """Run ``kill_every_write.py`` (see there) and check that no kill point went wrong."""
    driver = Path(__file__).with_name("kill_every_write.py")
    done = subprocess.run(
        [sys.executable, str(driver), str(tmp_path), *options],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["writes"] > 20
    problems = result["problems"]
    assert not problems, f"{len(problems)} of {len(result['points'])} kill points: " + "; ".join(
        f"#{n}: {text}" for n, text in list(problems.items())[:5]
    )
    return result


@pytest.mark.slow
def test_an_import_killed_before_any_of_its_writes_reruns_to_a_clean_import(tmp_path):
    """Exhaustive: the import is killed (``os._exit``) before its 1st, 2nd, ... file write."""
    result = _kill_every_write(tmp_path)
    assert result["points"] == list(range(1, result["writes"] + 1))


def test_an_import_killed_before_each_kind_of_write_reruns_to_a_clean_import(tmp_path):
    """The default suite's share of the exhaustive test above: killed before the first write
    of each kind (group; group metadata, array metadata or chunk; array old or new; file
    written before by this import or not) and before the last write."""
    result = _kill_every_write(tmp_path, "--representative")
    points, writes = result["points"], result["writes"]
    # Metadata and chunks of the old arrays, of the new modality's arrays, the new groups,
    # rewrites of chunks and of the root metadata: more than a dozen kinds, the last write too.
    assert len(points) >= 15 and points[-1] == writes and len(points) < writes


PHASES = ["after-create", "after-segments", "after-features", "before-record", "after-record"]


@pytest.mark.parametrize("phase", PHASES)
def test_an_import_killed_at_each_named_phase_reruns_to_a_clean_import(tmp_path, phase):
    files = _helpers.files(tmp_path)
    clean = _helpers.fingerprint(_clean(files, tmp_path))
    out = tmp_path / "s.zarr"
    # The first import (which creates the store) for after-create, else the appending one.
    first = phase == "after-create"
    if not first:
        assert _avda(*_import_args(files, "base", out)).returncode == 0
    args = _import_args(files, "base" if first else "new", out)
    killed = _avda(*args, AVDA_FAULT=f"exit:{phase}")
    assert killed.returncode == FAULT_EXIT, killed.stderr  # the kill happened at that phase
    # The killed import held the lock: its record (a dead pid) stays in the lock file, and the
    # rerun is not refused: the kernel dropped the flock with the process (no stale lock).
    assert '"command": "avda cache import"' in (tmp_path / "s.zarr.lock").read_text()
    for name in ("base", "new"):
        rerun = _avda(*_import_args(files, name, out))
        assert rerun.returncode == 0, rerun.stderr
    assert _helpers.fingerprint(out) == clean
    # A third run of each says "already imported" and changes nothing.
    again = _avda(*_import_args(files, "new", out))
    assert "already imported" in again.stdout and _helpers.fingerprint(out) == clean


# --------------------------------------------------------------------------- concurrency
def _paused(files, name: str, out: Path, phase: str, marker: Path) -> subprocess.Popen:
    """An import that stops at ``phase`` (holding the store) until ``marker`` is removed."""
    process = subprocess.Popen(
        [sys.executable, "-m", "avda.cli", *map(str, _import_args(files, name, out))],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(AVDA_FAULT=f"pause:{phase}", AVDA_FAULT_MARKER=str(marker)),
    )
    deadline = time.monotonic() + 120
    while not marker.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            out_, err = process.communicate()
            pytest.fail(f"the import did not pause at {phase}: {out_} {err}")
        time.sleep(0.1)
    return process


def _refused_in_one_line(done: subprocess.CompletedProcess, out: Path, pid: int) -> None:
    assert done.returncode == 1, (done.stdout, done.stderr)
    # One line (log warnings of the work done before the store is touched aside).
    lines = [x for x in done.stderr.strip().splitlines() if not x.startswith("WARNING ")]
    assert len(lines) == 1, done.stderr
    assert f"{out} is being written by pid {pid}" in lines[0], lines[0]
    assert "wait for it" in lines[0]


def test_a_second_writer_or_an_export_is_refused_while_an_import_writes(tmp_path):
    files = _helpers.files(tmp_path)
    out = tmp_path / "s.zarr"
    assert _avda(*_import_args(files, "base", out)).returncode == 0
    marker = tmp_path / "paused"
    first = _paused(files, "new", out, "after-features", marker)
    try:
        third = _helpers.feature_pickle(tmp_path / "third.pkl", ["x1", "x2"], seed=3)
        _helpers.annotations(tmp_path / "third.csv", ["x1", "x2"])
        second = _avda("cache", "import", third, "-o", out, "-a", tmp_path / "third.csv")
        _refused_in_one_line(second, out, first.pid)
        export = _avda("cache", "export", out, "-o", tmp_path / "x.h5")
        _refused_in_one_line(export, out, first.pid)
        assert not (tmp_path / "x.h5").exists()
        cluster = _avda("cluster", out, "--modality", "rgb", "--max-k", "2", "-q")
        _refused_in_one_line(cluster, out, first.pid)
    finally:
        marker.unlink()
    assert first.wait(timeout=120) == 0, first.stderr.read()
    # Both the paused import and the refused one, rerun, end up in the store.
    assert _avda("cache", "import", third, "-o", out, "-a", tmp_path / "third.csv").returncode == 0
    from avda.cache import open_cache

    store = open_cache(out)
    assert store.num_segments == 6 + 5 + 2
    assert [e["rows"] for e in store.provenance["imports"]] == [[0, 6], [6, 11], [11, 13]]
    assert store.segments["uid"].tolist()[-7:] == [f"n{i}" for i in range(5)] + ["x1", "x2"]


def _together(calls: dict[str, tuple]) -> dict[str, object]:
    """Run ``import_features(source, out=out, annotations=ann)`` per entry in threads started
    at once (a barrier); the result or the CacheError of each."""
    from avda.cache import interop
    from avda.errors import CacheError

    barrier = threading.Barrier(len(calls))
    outcome: dict[str, object] = {}

    def run(side: str, source: Path, out: Path, ann: Path) -> None:
        barrier.wait()
        try:
            outcome[side] = interop.import_features(source, out=out, annotations=ann, chunk_rows=64)
        except CacheError as exc:
            outcome[side] = exc

    threads = [threading.Thread(target=run, args=(side, *args)) for side, args in calls.items()]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcome


def test_two_imports_started_together_never_lose_rows(tmp_path):
    """Two threads with a barrier, three rounds: each import either lands whole or is refused
    with the busy message; no import reports success without its rows."""
    from avda.cache import interop, open_cache
    from avda.errors import CacheError

    for round_ in range(3):
        ids = {side: [f"{side}{round_}-{i}" for i in range(300)] for side in "ab"}
        ann = _helpers.annotations(tmp_path / f"ann{round_}.csv", ids["a"] + ids["b"])
        sources = {
            side: _helpers.feature_pickle(tmp_path / f"{side}{round_}.pkl", ids[side], seed=i)
            for i, side in enumerate("ab")
        }
        out = tmp_path / f"r{round_}.zarr"
        interop.import_features(
            _helpers.feature_pickle(tmp_path / f"seed{round_}.pkl", ["s0"], seed=9),
            out=out,
            annotations=_helpers.annotations(tmp_path / f"seed{round_}.csv", ["s0"]),
            chunk_rows=64,
        )
        outcome = _together({side: (sources[side], out, ann) for side in "ab"})
        store = open_cache(out)
        uids = set(store.segments["uid"])
        for side in "ab":
            if isinstance(outcome[side], CacheError):
                assert "is being written by pid" in str(outcome[side])
                assert not uids & set(ids[side])
            else:
                assert set(ids[side]) <= uids, f"round {round_}: import {side} lost its rows"
        assert store.num_segments == 1 + sum(
            300 for side in "ab" if not isinstance(outcome[side], CacheError)
        )
        assert all(a.shape[0] == store.num_segments for a in store.arrays().values())


def _extract_args(tmp_path: Path, out: Path) -> list:
    """``avda extract`` of 2 segments' audio (random-init audio_resnet18, no files needed
    before the store is set up)."""
    pd.DataFrame(
        {
            "uid": ["u0", "u1"],
            "video_id": ["v0", "v1"],
            "domain": ["d", "d"],
            "split": ["train", "train"],
            "start_sec": [0.0, 0.0],
            "stop_sec": [1.0, 1.0],
        }
    ).to_csv(tmp_path / "m.csv", index=False)
    (tmp_path / "audio").mkdir(exist_ok=True)
    args = ["extract", "-m", tmp_path / "m.csv", "-o", out, "--audio", tmp_path / "audio"]
    return [*args, "--modalities", "audio", "--device", "cpu", "--workers", "0", "-q"]


def test_an_extraction_killed_while_creating_its_store_leaves_no_store(tmp_path):
    out = tmp_path / "e.zarr"
    args = [*_extract_args(tmp_path, out), "--prepare-only"]
    killed = _avda(*args, AVDA_FAULT="exit:store-built")
    assert killed.returncode == FAULT_EXIT, killed.stderr
    assert not out.exists()  # absent, not half made (a reader would call it "not a cache")
    done = _avda(*args)
    assert done.returncode == 0, done.stderr
    from avda.cache import open_cache

    assert open_cache(out).num_segments == 2 and open_cache(out).modalities == ["audio"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_a_second_unsharded_extract_is_refused_in_one_line(tmp_path):
    out = tmp_path / "e.zarr"
    args = _extract_args(tmp_path, out)
    marker = tmp_path / "paused"
    first = subprocess.Popen(
        [sys.executable, "-m", "avda.cli", *map(str, args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(AVDA_FAULT="pause:extract-opened", AVDA_FAULT_MARKER=str(marker)),
    )
    deadline = time.monotonic() + 180
    while not marker.exists():
        if first.poll() is not None or time.monotonic() > deadline:
            first.kill()
            pytest.fail(f"the extraction did not pause: {first.communicate()}")
        time.sleep(0.1)
    try:
        _refused_in_one_line(_avda(*args), out, first.pid)
    finally:
        marker.unlink()
    first.wait(timeout=180)


# --------------------------------------------------------------------------- refused imports
def _store_with_base(tmp_path):
    from avda.cache import interop

    files = _helpers.files(tmp_path)
    out = tmp_path / "s.zarr"
    interop.import_features(files["base"], out=out, annotations=files["ann"], chunk_rows=4)
    return files, out


K, D = _helpers.K, _helpers.D
BAD_FILES = {
    # A second modality of the wrong size, after a valid first one.
    "wrong-shape": dict(
        RGB=np.ones((5, K, D), np.float32), Audio=np.ones((5, K, D + 1), np.float32)
    ),
    # NaN rows (which alone are stored failed) next to a modality of the wrong clip count.
    "nan-rows-and-wrong-shape": dict(
        RGB=np.full((5, K, D), np.nan, np.float32), Audio=np.ones((5, K + 1, D), np.float32)
    ),
    "not-numbers": dict(RGB=np.array([[["x"] * D] * K] * 5, dtype=object)),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_a_refused_import_leaves_the_store_byte_for_byte_unchanged(tmp_path, case):
    from avda.cache import interop
    from avda.errors import CacheError

    files, out = _store_with_base(tmp_path)
    before = _helpers.snapshot(out)
    ids = [f"n{i}" for i in range(5)]
    bad = _helpers.feature_pickle(tmp_path / "bad.pkl", ids, (), **BAD_FILES[case])
    with pytest.raises(CacheError):
        interop.import_features(bad, out=out, annotations=files["ann"])
    assert _helpers.snapshot(out) == before


def test_duplicate_ids_inside_one_file_are_refused_before_any_write(tmp_path):
    from avda.cache import interop
    from avda.errors import CacheError

    files, out = _store_with_base(tmp_path)
    before = _helpers.snapshot(out)
    bad = _helpers.feature_pickle(tmp_path / "dup.pkl", ["n0", "n1", "n0"])
    with pytest.raises(CacheError, match="n0.*twice"):
        interop.import_features(bad, out=out, annotations=files["ann"])
    assert _helpers.snapshot(out) == before
    # Into a new store: nothing is created.
    with pytest.raises(CacheError, match="twice"):
        interop.import_features(bad, out=tmp_path / "new.zarr", annotations=files["ann"])
    assert not (tmp_path / "new.zarr").exists()


@pytest.mark.parametrize("phase", ["after-features", "before-record"])
def test_a_second_modality_import_killed_leaves_the_first_and_reruns_clean(tmp_path, phase):
    """A per-video .npy folder of another modality fills the segments a first import made:
    killed before its record, the store reads as before (the first modality untouched, the
    new one not listed); the rerun gives what an uninterrupted import gives."""
    rng = np.random.default_rng(0)
    manifest = tmp_path / "m.csv"
    pd.DataFrame(
        {
            "uid": [f"s{i}" for i in range(6)],
            "video_id": ["v1", "v2"] * 3,
            "domain": "d",
            "split": "train",
            "start_sec": [0.0, 0.0, 2.0, 2.0, 4.0, 4.0],
            "stop_sec": [2.0, 2.0, 4.0, 4.0, 6.0, 6.0],
        }  # fmt: skip
    ).to_csv(manifest, index=False)
    folders = {}
    for modality, width in (("rgb", 5), ("audio", 3)):
        folders[modality] = tmp_path / modality
        folders[modality].mkdir()
        for video in ("v1", "v2"):
            np.save(folders[modality] / f"{video}.npy", rng.normal(size=(12, width)))

    def args(modality: str, out: Path) -> list:
        return ["cache", "import", folders[modality], "--format", "npy", "--feature-rate", "2",
                "--num-clips", "2", "--modality", modality, "-a", manifest, "-o", out,
                "--chunk-rows", "4"]  # fmt: skip

    clean = tmp_path / "clean.zarr"
    for modality in ("rgb", "audio"):
        assert _avda(*args(modality, clean)).returncode == 0
    out = tmp_path / "s.zarr"
    assert _avda(*args("rgb", out)).returncode == 0
    first = _helpers.fingerprint(out, physical=False)
    killed = _avda(*args("audio", out), AVDA_FAULT=f"exit:{phase}")
    assert killed.returncode == FAULT_EXIT, killed.stderr
    assert _helpers.fingerprint(out, physical=False) == first  # as a reader sees it
    rerun = _avda(*args("audio", out))
    assert rerun.returncode == 0, rerun.stderr
    assert _helpers.fingerprint(out) == _helpers.fingerprint(clean)
    assert "filled audio of 6 segments it held (no new segments)" in rerun.stdout
    # Again, as another split: nothing is done, and the output says how it was imported.
    again = _avda(*args("audio", out), "--domain", "d", "--split", "test")
    assert again.returncode == 0 and "already imported on " in again.stdout
    assert "domain and split from its annotations" in again.stdout
    assert "(--domain d, --split test not applied: import it into another store" in again.stdout
