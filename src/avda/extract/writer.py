"""Writing results into the store chunk by chunk, on a background thread.

Features (and spatial maps) of a Zarr chunk are written once all its rows are in, and the rows'
status last, so a reader or a resumed run trusts exactly the rows whose status is DONE. No two
shards share a chunk (see ``runner.shard_rows``), so concurrent writers never touch the same
chunk file.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Iterator

import numpy as np

from avda.cache import FeatureCache, Status, schema
from avda.cache.store import NONFINITE_EXTRACT_HINT, nonfinite_error

log = logging.getLogger(__name__)


class ChunkWriter:
    """Buffers per-segment results and writes each Zarr chunk once all its rows are in.

    Spatial maps (large) are written as soon as their own, smaller chunk is complete; status
    is written last, with the features of a complete feature chunk.
    """

    def __init__(
        self,
        store: FeatureCache,
        modality: str,
        rows: np.ndarray,
        K: int,
        D: int,
        *,
        spatial_shape: tuple[int, ...] | None = None,
    ) -> None:
        self.store, self.modality, self.K, self.D = store, modality, K, D
        self.spatial_shape = spatial_shape
        self.expected: dict[int, set[int]] = {}
        self.expected_spatial: dict[int, set[int]] = {}
        self.spatial_rows = store.spatial_chunk_rows(modality) if spatial_shape else 1
        for row in rows:
            self.expected.setdefault(int(row) // store.chunk_rows, set()).add(int(row))
            if spatial_shape:
                self.expected_spatial.setdefault(int(row) // self.spatial_rows, set()).add(int(row))
        self.buffer: dict[int, dict[int, tuple]] = {}
        self.spatial_buffer: dict[int, dict[int, np.ndarray]] = {}

    def add(
        self,
        row: int,
        features: np.ndarray | None,
        spatial: np.ndarray | None,
        state: int,
        error: str,
    ) -> None:
        if self.spatial_shape:
            if spatial is not None and state == Status.DONE:
                spatial, features, state, error = self._refuse_nonfinite_maps(
                    row, spatial, features, state, error
                )
            if spatial is None:
                spatial = np.zeros((self.K, *self.spatial_shape), dtype=np.float16)
            chunk = row // self.spatial_rows
            self.spatial_buffer.setdefault(chunk, {})[row] = spatial
            if len(self.spatial_buffer[chunk]) == len(self.expected_spatial[chunk]):
                self._flush_spatial(chunk)
        chunk = row // self.store.chunk_rows
        if features is None:
            features = np.zeros((self.K, self.D), dtype=np.float32)
        self.buffer.setdefault(chunk, {})[row] = (features, state, error)
        if len(self.buffer[chunk]) == len(self.expected[chunk]):
            self._flush(chunk)

    def _refuse_nonfinite_maps(
        self, row: int, spatial: np.ndarray, features, state: int, error: str
    ) -> tuple[np.ndarray | None, np.ndarray | None, int, str]:
        """Maps with NaN/inf once stored as float16 make the row FAILED (zero maps and
        features); the features' status, written last, carries it."""
        with np.errstate(over="ignore"):
            stored = np.asarray(spatial).astype(schema.SPATIAL_DTYPE)
        if np.isfinite(stored).all():
            return spatial, features, state, error
        error = nonfinite_error("spatial maps", spatial, stored, NONFINITE_EXTRACT_HINT)
        log.warning(
            "segment %s (%s): %s", self.store.segments["uid"].iloc[row], self.modality, error
        )
        return None, None, int(Status.FAILED), error

    def _flush_spatial(self, chunk: int) -> None:
        maps = self.spatial_buffer.pop(chunk)
        for run in _contiguous_runs(sorted(maps)):
            self.store.write_spatial(
                self.modality, np.asarray(run), np.stack([maps[r] for r in run])
            )

    def _flush(self, chunk: int) -> None:
        results = self.buffer.pop(chunk)
        for run in _contiguous_runs(sorted(results)):
            feats = np.stack([results[r][0] for r in run])
            self.store.write(
                self.modality,
                np.asarray(run),
                feats,
                np.array([results[r][1] for r in run]),
                [results[r][2] for r in run],
            )

    def close(self) -> None:
        for chunk in list(self.spatial_buffer):
            self._flush_spatial(chunk)
        for chunk in list(self.buffer):
            self._flush(chunk)


class BackgroundWriter:
    """Runs a :class:`ChunkWriter` on a thread so that Zarr writes overlap inference.

    The queue is bounded (backpressure keeps memory flat); an error in the thread is raised in
    the caller at the next ``add`` or at ``close``.
    """

    def __init__(self, writer: ChunkWriter, max_pending: int = 64) -> None:
        self.writer = writer
        self.queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="avda-cache-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            if self.error is not None:
                continue  # keep draining so that the producer never blocks
            try:
                self.writer.add(*item)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
                self.error = exc

    def add(self, *item) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put(item)

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error
        self.writer.close()


def _contiguous_runs(rows: list[int]) -> Iterator[list[int]]:
    run: list[int] = []
    for row in rows:
        if run and row != run[-1] + 1:
            yield run
            run = []
        run.append(row)
    if run:
        yield run
