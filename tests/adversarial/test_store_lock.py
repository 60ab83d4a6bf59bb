"""avda.cache.lock: exclusive and shared holders, the one-line refusal, AVDA_LOCK_WAIT, and no
lock file for a reader of a store that does not exist."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from avda.cache.lock import StoreBusyError, lock_path, store_lock


def test_exclusive_refuses_everyone_and_names_the_holder(tmp_path):
    store = tmp_path / "s.zarr"
    store.mkdir()
    with store_lock(store, what="avda cache import"):
        for shared in (False, True):
            with pytest.raises(StoreBusyError) as caught:
                with store_lock(store, what="x", shared=shared):
                    pass
            message = str(caught.value)
            assert "\n" not in message
            assert f"cache {store} is being written by pid {os.getpid()}" in message
            assert f"on host {socket.gethostname()}" in message
            assert "(avda cache import); wait for it to finish" in message
    with store_lock(store, what="again"):  # released on exit
        pass
    assert lock_path(store) == tmp_path / "s.zarr.lock"
    assert lock_path(store).read_text() == ""  # the record names a holder only while it holds


def test_shared_holders_share_and_keep_writers_out(tmp_path):
    store = tmp_path / "s.zarr"
    store.mkdir()
    with store_lock(store, what="avda cache export", shared=True):
        with store_lock(store, what="shard", shared=True):
            with pytest.raises(StoreBusyError, match="is being read by pid"):
                with store_lock(store, what="avda cluster"):
                    pass


def test_a_writer_waits_when_asked(tmp_path, monkeypatch):
    store = tmp_path / "s.zarr"
    held = threading.Event()

    def hold() -> None:
        with store_lock(store, what="first"):
            held.set()
            time.sleep(0.6)

    thread = threading.Thread(target=hold)
    thread.start()
    held.wait(5)
    monkeypatch.setenv("AVDA_LOCK_WAIT", "20")
    began = time.monotonic()
    with store_lock(store, what="second"):
        waited = time.monotonic() - began
    thread.join()
    assert 0.2 < waited < 20


def test_a_reader_of_a_missing_store_leaves_no_lock_file(tmp_path):
    with store_lock(tmp_path / "none.zarr", what="avda cache export", shared=True):
        pass
    assert list(tmp_path.iterdir()) == []
