"""Sharded extraction: chunk-disjoint shards, and a Dask LocalCluster run equal to one process."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from avda.cache import Status, open_cache
from avda.errors import ConfigError
from avda.extract import distributed, runner, sampling

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = sampling.Recipe(
    name="tiny",
    num_clips=2,
    num_frames=8,
    frame_rate=8.0,
    resize_shorter=32,
    crop_size=32,
    audio_seconds=1.0,
)
MODALITIES = [runner.ModalitySpec("rgb", "i3d")]


def test_a_complete_store_without_the_finished_record_gets_it_from_any_extract(
    demo_dataset, tmp_path
):
    """A store extracted before avda recorded finished_rows: the same `avda extract`, with or
    without --scheduler, finds nothing to do and records it (as cache verify's note says);
    --scheduler returned before it without a word, so the note stayed."""
    root, manifest = demo_dataset
    manifest = manifest.head(4)
    options = dict(videos=root, recipe=TINY, modalities=MODALITIES, workers=0, chunk_rows=2,
                   batch_size=TINY.num_clips, progress=False)  # fmt: skip
    out = tmp_path / "s.zarr"
    runner.extract(manifest, out=out, **options)
    for again in (
        lambda: distributed.extract_distributed(manifest, out=out, scheduler="local:1", **options),
        lambda: runner.extract(manifest, out=out, **options),
    ):
        store = open_cache(out, mode="r+")
        store.update_modality_info("rgb", finished_rows=0)  # as a store made before the record
        assert store.finished_rows("rgb") == 0
        assert again().ok
        assert open_cache(out).finished_rows("rgb") == len(manifest)


def test_a_manifest_of_other_videos_is_refused_before_the_cluster_starts(demo_dataset, tmp_path):
    """One line before any Dask worker starts, not one error per shard task (nor a warning
    per segment): none of the manifest's videos is under --videos."""
    _, manifest = demo_dataset
    (tmp_path / "other").mkdir()
    options = dict(videos=tmp_path / "other", recipe=TINY, modalities=MODALITIES, workers=0,
                   chunk_rows=2, progress=False)  # fmt: skip
    with pytest.raises(ConfigError, match=r"^none of the \d+ video file\(s\) the manifest"):
        distributed.extract_distributed(
            manifest, out=tmp_path / "s.zarr", scheduler="local:1", **options
        )


@pytest.mark.parametrize("count", [1, 2, 3, 5])
def test_shards_are_chunk_disjoint_and_cover_every_row(count):
    chunk_rows, num_rows = 4, 23
    shards = [runner.shard_rows(num_rows, chunk_rows, (i, count)) for i in range(count)]
    np.testing.assert_array_equal(np.sort(np.concatenate(shards)), np.arange(num_rows))
    chunks = [set((rows // chunk_rows).tolist()) for rows in shards]
    for i in range(count):
        for j in range(i + 1, count):
            assert not chunks[i] & chunks[j]


def test_scheduler_strings():
    assert distributed.parse_scheduler(None) == ("local", None)
    assert distributed.parse_scheduler("local:3") == ("local", 3)
    assert distributed.parse_scheduler("tcp://10.0.0.1:8786") == ("address", None)
    with pytest.raises(ConfigError, match="local:N"):
        distributed.parse_scheduler("local:0")
    with pytest.raises(ConfigError, match="tcp://host:8786"):
        distributed.parse_scheduler("somehost")


@pytest.fixture(scope="module")
def local_client():
    """One LocalCluster of 2 worker processes for the module (starting one costs ~10 s here)."""
    import dask
    from dask.distributed import Client, LocalCluster

    with dask.config.set({"distributed.worker.daemon": False}):
        with (
            LocalCluster(
                n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
            ) as cluster,
            Client(cluster) as client,
        ):
            yield client


def test_local_cluster_of_two_workers_equals_a_single_process(demo_dataset, tmp_path, local_client):
    root, manifest = demo_dataset
    # batch_size = K: every forward pass sees one segment, in both runs alike.
    options = dict(
        videos=root,
        recipe=TINY,
        modalities=MODALITIES,
        workers=0,
        chunk_rows=2,
        batch_size=TINY.num_clips,
        progress=False,
    )
    single = runner.extract(manifest, out=tmp_path / "single.zarr", **options)
    assert single.ok
    merged = distributed.extract_distributed(
        manifest, out=tmp_path / "merged.zarr", client=local_client, num_shards=4, **options
    )
    assert merged.ok and merged.done == single.done == len(manifest)
    one, many = open_cache(tmp_path / "single.zarr"), open_cache(tmp_path / "merged.zarr")
    assert np.all(many.status("rgb") == Status.DONE)
    np.testing.assert_array_equal(many.load("rgb"), one.load("rgb"))
    assert many.provenance["modalities"] == one.provenance["modalities"]
    assert many.provenance["recipe"] == one.provenance["recipe"]
    # The merged store is an ordinary store: a single-process rerun finds nothing to do.
    again = runner.extract(manifest, out=tmp_path / "merged.zarr", **options)
    assert again.done == merged.done


def test_a_local_cluster_run_removes_what_a_killed_writer_left(
    demo_dataset, tmp_path, local_client, caplog
):
    """Zarr's temporary file of a write a killed run never finished, and a killed creation's
    hidden folder: `avda extract --scheduler` (exclusive while it sets the store up) deletes
    them before its shards start, as an unsharded run does (it left them before)."""
    root, manifest = demo_dataset
    manifest = manifest.head(4)
    options = dict(
        videos=root,
        recipe=TINY,
        modalities=MODALITIES,
        workers=0,
        chunk_rows=2,
        batch_size=TINY.num_clips,
        progress=False,
    )
    out = tmp_path / "s.zarr"
    runner.extract(manifest, out=out, prepare_only=True, **options)
    unfinished = out / "status/rgb/c/0.0123456789abcdef0123456789abcdef.partial"
    unfinished.parent.mkdir(parents=True, exist_ok=True)
    unfinished.write_bytes(b"half a write")
    creation = tmp_path / ".s.zarr.creating-123-0a1b2c3d"
    (creation / "status").mkdir(parents=True)
    result = distributed.extract_distributed(
        manifest, out=out, client=local_client, num_shards=2, **options
    )
    assert result.ok and result.done == len(manifest)
    assert not unfinished.exists() and not creation.exists()
    assert "removing 1 unfinished write file of a killed writer" in caplog.text
    store = open_cache(out)
    assert store.verify().attrs.get("notes", []) == []
    assert np.all(store.status("rgb") == Status.DONE)


def test_shards_started_together_create_the_store_once(demo_dataset, tmp_path):
    """Two --shard runs started at the same moment (threads here; processes alike)."""
    from concurrent.futures import ThreadPoolExecutor

    root, manifest = demo_dataset
    options = dict(
        videos=root,
        recipe=TINY,
        modalities=MODALITIES,
        workers=0,
        chunk_rows=2,
        batch_size=TINY.num_clips,
        progress=False,
    )
    out = tmp_path / "sharded.zarr"
    prepared = runner.extract(
        manifest, out=tmp_path / "prepared.zarr", prepare_only=True, **options
    )
    assert prepared.done == 0
    assert np.all(open_cache(tmp_path / "prepared.zarr").status("rgb") == Status.PENDING)
    with ThreadPoolExecutor(2) as pool:
        results = list(
            pool.map(lambda i: runner.extract(manifest, out=out, shard=(i, 2), **options), range(2))
        )
    assert sum(r.done for r in results) == len(manifest)
    assert not (tmp_path / "sharded.zarr.create.lock").exists()  # removed once set up
    single = runner.extract(manifest, out=tmp_path / "single.zarr", **options)
    assert single.ok
    np.testing.assert_array_equal(
        open_cache(out).load("rgb"), open_cache(tmp_path / "single.zarr").load("rgb")
    )
    with pytest.raises(ConfigError, match="--force with --shard"):
        runner.extract(manifest, out=out, shard=(0, 2), force=True, **options)


def test_a_shard_that_creates_the_store_keeps_exclusive_writers_out(
    demo_dataset, tmp_path, monkeypatch
):
    """A --shard run started before the store exists holds the store's lock shared from the
    start, as shards of an existing store do: an `avda cluster` or `avda cache import` (an
    exclusive writer, which deletes Zarr's unfinished writes) is refused while it extracts.
    It took no lock at all before (the lock of a reader of a missing store)."""
    import threading

    from avda.cache import faults
    from avda.cache.lock import StoreBusyError, store_lock

    root, manifest = demo_dataset
    options = dict(videos=root, recipe=TINY, modalities=MODALITIES, workers=0, chunk_rows=2,
                   batch_size=TINY.num_clips, progress=False)  # fmt: skip
    out = tmp_path / "s.zarr"
    opened, release = threading.Event(), threading.Event()
    real = faults.checkpoint

    def pause(name: str) -> None:
        real(name)
        if name == "extract-opened":
            opened.set()
            release.wait(60)

    monkeypatch.setattr(faults, "checkpoint", pause)
    done = {}

    def run_shard() -> None:
        done["result"] = runner.extract(manifest, out=out, shard=(0, 2), **options)

    shard = threading.Thread(target=run_shard)
    shard.start()
    try:
        assert opened.wait(120), "the shard never opened the store"
        with pytest.raises(StoreBusyError, match="avda extract"):
            with store_lock(out, what="avda cluster"):
                pass
    finally:
        release.set()
        shard.join(120)
    assert done["result"].done > 0


# Slow: a cluster start and an extraction (~80 s here). Once in four runs on the loaded
# development machine it failed for a reason not seen (its output was not kept), before the
# decoding workers died with their Dask worker (tests/extract/test_worker_death.py).
@pytest.mark.slow
def test_ctrl_c_on_a_local_cluster_is_one_line(demo_dataset, tmp_path):
    """A terminal's Ctrl-C: SIGINT to the whole process group of ``avda extract --scheduler
    local:2`` while its workers extract. The command exits 130 with its one line: no worker's
    ``KeyboardInterrupt`` traceback, no Dask warning about the tasks it cancelled (both were
    printed before the workers started with SIGINT ignored)."""
    root, manifest = demo_dataset
    copies = [manifest.assign(uid=manifest["uid"] + f"-{i}") for i in range(3)]  # more work
    pd.concat(copies).to_csv(tmp_path / "m.csv", index=False)
    out = tmp_path / "c.zarr"
    command = [sys.executable, "-m", "avda.cli", "extract", "--manifest", str(tmp_path / "m.csv"),
               "--videos", str(root), "-o", str(out), "--recipe", "demo", "--scheduler",
               "local:2", "--chunk-rows", "2", "--quiet"]  # fmt: skip
    # stderr to a file, not a pipe: the command's end is its own exit, whatever its workers do.
    with open(tmp_path / "stderr", "w") as stderr:
        process = subprocess.Popen(
            command,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            env={**os.environ, "AVDA_DEBUG": ""},
            start_new_session=True,  # its own process group, as a terminal's foreground job
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
    try:
        deadline = time.monotonic() + 180
        done = 0
        while done == 0:  # the first rows extracted: the workers are at work
            assert process.poll() is None, (tmp_path / "stderr").read_text()
            assert time.monotonic() < deadline, "no row extracted within 180 s"
            time.sleep(0.2)
            try:
                done = int((open_cache(out).status("rgb") == Status.DONE).sum())
            except Exception:  # the store is being created or written: read it again
                continue
        os.killpg(process.pid, signal.SIGINT)
        process.wait(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # anything of the group still running
    err = (tmp_path / "stderr").read_text()
    # 130, or death by SIGINT (a shell's 130 too): see tests/test_cli_errors.py's SIGINT test
    assert process.returncode in (130, -signal.SIGINT), err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    assert "CancelledError" not in err, err
    lines = [  # avda's own log records allowed (the random-init warning, the shard count)
        line
        for line in err.splitlines()
        if line.strip() and not line.startswith(("INFO avda", "WARNING avda"))
    ]
    assert len(lines) == 1 and lines[0].startswith("interrupted; avda extract resumes"), err
    assert (open_cache(out).status("rgb") != Status.DONE).any()  # stopped part way


_HOLD_CREATION = """
import sys, time
from avda import _io
with _io.file_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


@pytest.mark.parametrize("limit", ["0", "0.2"])
def test_avda_lock_wait_does_not_end_a_shard_waiting_its_turn_at_the_set_up(
    demo_dataset, tmp_path, monkeypatch, limit
):
    """AVDA_LOCK_WAIT bounds waits for another command (refused at once where 0, as the
    store locks): a shard waiting while another shard of the same extraction sets the store
    up (a real second process holds <out>.create.lock, as long as a big set-up takes) waited
    its turn, then stopped with LockWaitError at once under AVDA_LOCK_WAIT=0."""
    root, manifest = demo_dataset
    options = dict(videos=root, recipe=TINY, modalities=MODALITIES, workers=0, chunk_rows=2,
                   batch_size=TINY.num_clips, progress=False)  # fmt: skip
    out = tmp_path / "s.zarr"
    creation = tmp_path / "s.zarr.create.lock"
    monkeypatch.setenv("AVDA_LOCK_WAIT", limit)
    peer = subprocess.Popen(
        [sys.executable, "-c", _HOLD_CREATION, str(creation), "1.5"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert peer.stdout.readline().strip() == "held"
        result = runner.extract(manifest, out=out, shard=(0, 2), **options)
    finally:
        peer.wait(60)
    assert result.done > 0
