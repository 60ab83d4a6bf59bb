"""Extraction on a Dask cluster: the manifest's chunk-aligned shards run as Dask tasks.

::

    client (this process)                         Dask workers (one task = one shard)
    ─────────────────────                         ────────────────────────────────────
    open / create the store  ── once ──►          extract(..., shard=(i, n)):
    add every modality's arrays                     opens the existing store (compatible)
    submit n shard tasks     ──────────────►        decodes + runs its rows only
    wait, summarise          ◄──────────────        writes whole Zarr chunks (never shared)

Store creation and every provenance write happen in the client before the first task starts,
so the tasks only write chunk files, and :func:`avda.extract.runner.shard_rows` deals whole
chunks round-robin, so no two tasks write the same chunk. A failed task leaves its rows
pending: rerun the same command to resume them. ``scheduler``: ``None`` or ``"local"`` start a
``LocalCluster`` (one worker per GPU when there are GPUs, else 2), ``"local:N"`` one with N
workers, anything else is the address of a running scheduler (``tcp://host:8786``).
"""

from __future__ import annotations

import logging
import math
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from avda import cache as cache_lib
from avda._io import progress_bar
from avda.cache import Status
from avda.cache.lock import store_lock
from avda.dask_support import (
    CONNECT_SECONDS,
    collect_warnings,
    connect,
    quiet_dask_logs,
    quiet_worker_logs,
    refuse_unguarded_main,
    threads_per_worker,
    worker_device,
    workers_ignore_interrupt,
)
from avda.data_manifests import schema as manifest_schema
from avda.devices import gpu_count
from avda.errors import AvdaError, ConfigError
from avda.extract import backbones, runner
from avda.extract.runner import ExtractOptions, ExtractResult
from avda.wording import VERBOSE

log = logging.getLogger(__name__)

WORKER_TIMEOUT = 300.0
"""Seconds to wait for a first worker on a running scheduler before giving up."""


def parse_scheduler(scheduler: str | None) -> tuple[str, int | None]:
    """``("local", workers or None)`` or ``("address", None)``."""
    if scheduler is None or scheduler == "local":
        return "local", None
    if scheduler.startswith("local:"):
        try:
            count = int(scheduler.split(":", 1)[1])
        except ValueError:
            count = 0
        if count < 1:
            raise ConfigError(f"--scheduler {scheduler!r}: expected local:N with N >= 1")
        return "local", count
    if "://" not in scheduler:
        raise ConfigError(
            f"--scheduler {scheduler!r}: expected local, local:N or a scheduler address "
            "such as tcp://host:8786"
        )
    return "address", None


def extract_distributed(
    manifest: pd.DataFrame,
    options: ExtractOptions | None = None,
    *,
    out: str | Path,
    scheduler: str | None = None,
    num_shards: int | None = None,
    client: Any = None,
    worker_timeout: float = WORKER_TIMEOUT,
    **keywords: Any,
) -> ExtractResult:
    """Like :func:`avda.extract.runner.extract`, with the shards run as tasks on a Dask cluster.

    ``options`` (or ``keywords`` building them) as :func:`~avda.extract.runner.extract` takes
    them; each shard task gets the same :class:`~avda.extract.runner.ExtractOptions`.
    ``num_shards`` defaults to the number of Zarr chunks (at most 4 per worker); a ``device``
    of None (or ``cuda``) spreads the workers of a multi-GPU host over its GPUs
    (``cuda:<worker index mod GPUs>``, :func:`avda.dask_support.worker_device`).
    ``client``: an existing ``dask.distributed.Client`` to use instead of ``scheduler``. On a
    running scheduler the shards start once a worker joins; after ``worker_timeout`` seconds
    without one, an :class:`AvdaError` (nothing extracted, the store prepared: rerun to resume).
    """
    from dask.distributed import Client, LocalCluster, as_completed

    quiet_dask_logs()
    began = time.perf_counter()
    options = runner.resolve_options(options, keywords)
    kind, local_workers = parse_scheduler(scheduler)
    unguarded = kind == "local" and client is None
    if unguarded and not _complete(Path(out), options):  # before any work
        refuse_unguarded_main(f"--scheduler {scheduler or 'local'}")
    options.check()
    inputs, recipe, modalities = options.inputs, options.recipe, options.modalities
    segments = manifest_schema.normalise(manifest)
    built = [runner._build_model(spec, recipe) for spec in modalities]  # refuse misfits first
    # The store is set up under its exclusive lock (a --force move included), then the run
    # holds it shared, as its shard tasks do (avda.cache.lock).
    with store_lock(out, what="avda extract --scheduler"):
        store = runner.open_or_create_store(
            Path(out),
            segments,
            manifest_schema.fingerprint(manifest),
            recipe,
            chunk_rows=options.chunk_rows,
            force=options.force,
        )
        for spec, model in zip(modalities, built, strict=True):
            # Every array and provenance entry exists before any task starts.
            runner.prepare_modality(
                store, spec, recipe, inputs, force=options.force, model=model, segments=segments,
                retry_failed=options.retry_failed,
            )  # fmt: skip
        work = options.retry_failed or _any_pending(store, modalities)
        if not work:  # finished: recorded (a store made before finished_rows), as unsharded
            runner.record_finished(Path(out), [m.modality for m in modalities], sharded=False)
    del built
    if work:  # one line, not an error per shard task
        for spec in modalities:
            inputs.check_videos(segments, spec.modality)
    if not work:  # a complete store: no cluster to start (nor a script to re-run in it)
        log.info("every segment of every modality is already extracted: nothing to do")
        return runner.summarise(
            cache_lib.open_cache(Path(out)), [m.modality for m in modalities], began
        )
    if unguarded:
        refuse_unguarded_main(f"--scheduler {scheduler or 'local'}")

    with ExitStack() as stack:
        stack.enter_context(store_lock(out, what="avda extract --scheduler", shared=True))
        if client is not None:
            count = max(1, len(client.scheduler_info().get("workers", {})))
            threads = None
        elif kind == "local":
            import dask

            count = local_workers or gpu_count() or 2
            # Non-daemonic workers may start DataLoader decoding processes.
            stack.enter_context(dask.config.set({"distributed.worker.daemon": False}))
            with workers_ignore_interrupt():  # Ctrl-C is this process's to report
                cluster = stack.enter_context(
                    LocalCluster(
                        n_workers=count,
                        threads_per_worker=1,
                        processes=True,
                        dashboard_address=None,
                    )
                )
            client = stack.enter_context(Client(cluster))
            quiet_worker_logs(client, local=True)
            threads = threads_per_worker(count)
        else:
            client = stack.enter_context(
                connect(scheduler, timeout=min(CONNECT_SECONDS, worker_timeout))
            )
            _wait_for_worker(client, scheduler, worker_timeout)
            count = max(1, len(client.scheduler_info().get("workers", {})))
            threads = None
        chunks = max(1, math.ceil(store.num_segments / store.chunk_rows))
        shards = num_shards or min(chunks, 4 * count)
        if shards < 1:
            raise ConfigError(f"--shards must be >= 1, got {shards}")
        log.info(
            "extracting %d segments as %d shards on %d Dask workers (%s)",
            store.num_segments,
            shards,
            count,
            scheduler or ("client" if client is not None else "local"),
        )
        task_options = options.replace(force=False, progress=False)  # the store is prepared
        shared = client.scatter(manifest, broadcast=True)
        futures = [
            client.submit(
                _run_shard,
                shared,
                index,
                shards,
                str(out),
                task_options,
                threads,
                key=f"avda-extract-{index}-of-{shards}",
            )
            for index in range(shards)
        ]
        errors: list[str] = []
        warnings: list[str] = []
        bar = progress_bar(
            total=shards, desc="extract shards", unit="shard", disable=not options.progress
        )
        for future in as_completed(futures):
            try:
                done = future.result()
                warnings.extend(done.pop("warnings", []))
                log.debug("shard %s done: %s", future.key, done)
            except Exception as exc:  # a task's own error: its rows stay pending
                errors.append(f"{future.key}: {type(exc).__name__}: {exc}")
            bar.update(1)
        bar.close()
    _report_warnings(warnings)
    if errors:
        raise AvdaError(
            f"{len(errors)} of {shards} extraction shard(s) stopped with an error "
            f"({errors[0]}); their segments are still pending: fix the cause and rerun the "
            "same command to resume them"
        )
    store = cache_lib.open_cache(Path(out))
    return runner.summarise(store, [m.modality for m in modalities], began)


def _complete(out: Path, options: ExtractOptions) -> bool:
    """Whether the store at ``out`` already holds every asked modality, no segment pending (a
    read-only look; the run still checks the store as any run does)."""
    if options.force or options.retry_failed or not out.exists():
        return False
    try:
        store = cache_lib.open_cache(out)
        missing = any(spec.modality not in store.modalities for spec in options.modalities)
        return not missing and not _any_pending(store, options.modalities)
    except Exception:  # noqa: BLE001 - not a store avda can read: the run says why
        return False


def _any_pending(store: Any, modalities: Any) -> bool:
    """Whether a segment of one of ``modalities`` (specs) is still pending in ``store``."""
    return any(bool(np.any(store.status(m.modality) == Status.PENDING)) for m in modalities)


def _report_warnings(warnings: list[str]) -> None:
    """The shard tasks' warnings: each with avda's logger at DEBUG (``avda -v``), else one
    line (failed segments are also in the store and in ``STORE.failures.csv``)."""
    if not warnings:
        return
    if log.isEnabledFor(logging.DEBUG):
        for message in warnings:
            log.warning("%s", message)
        return
    log.warning(
        "%d warning(s) from the shard tasks, e.g. %s (%s prints them all)",
        len(warnings),
        warnings[0],
        VERBOSE,
    )


def _wait_for_worker(client: Any, address: str, timeout: float) -> None:
    try:
        client.wait_for_workers(1, timeout=timeout)
    except TimeoutError:
        raise AvdaError(
            f"no Dask worker joined the scheduler at {address} within {timeout:g} s, giving up; "
            f"start workers with `dask worker {address}` and run the same command again "
            "(the store is prepared: the run resumes)"
        ) from None


def _run_shard(
    manifest: pd.DataFrame,
    index: int,
    count: int,
    out: str,
    options: ExtractOptions,
    threads: int | None,
) -> dict[str, Any]:
    """One Dask task: extract shard ``index/count`` into the prepared store."""
    # The client warned once when it built the models to prepare the store: not once a shard.
    backbones.RANDOM_INIT_WARNED.update((m.backbone, m.modality) for m in options.modalities)
    if threads:
        torch.set_num_threads(threads)
    device = worker_device(options.device)  # this worker's GPU on a multi-GPU host
    if device != options.device:
        options = options.replace(device=device)
    with collect_warnings() as warnings:  # returned to the client, not printed by each worker
        result = runner.extract(manifest, options, out=out, shard=(index, count))
    return {
        "done": result.done,
        "failed": result.failed,
        "missing": result.missing,
        "warnings": list(warnings),
    }
