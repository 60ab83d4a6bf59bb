"""Dask pieces shared by sharded extraction and sweeps (both run on Dask distributed)."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Iterator
from typing import Any

from avda.errors import ConfigError

DASK_LOGGERS = ("distributed", "dask_jobqueue")


def _routine_shutdown(record: logging.LogRecord) -> bool:
    """False for the nanny's warning that it killed a worker slow to exit at the end of a run."""
    return "still alive after" not in record.getMessage()


def quiet_dask_logs(verbose: bool | None = None) -> None:
    """Dask's INFO records (scheduler start, client connections, workers joining and leaving)
    and its routine shutdown warnings only with ``avda -v``; its other warnings and errors stay.

    Also sets ``DASK_LOGGING__DISTRIBUTED=warning`` (unless set) so that worker processes
    started from here log alike. ``verbose`` None: whether the root logger shows DEBUG.
    """
    if verbose is None:
        verbose = logging.getLogger().isEnabledFor(logging.DEBUG)
    if verbose:
        return
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")
    if "dask" in sys.modules:  # the environment is read when dask is imported
        import dask

        dask.config.set({"logging.distributed": "warning"})
    for name in DASK_LOGGERS:
        logger = logging.getLogger(name)
        logger.setLevel(max(logger.getEffectiveLevel(), logging.WARNING))
    nanny = logging.getLogger("distributed.nanny")
    if _routine_shutdown not in nanny.filters:
        nanny.addFilter(_routine_shutdown)


def connect(address: str) -> Any:
    """A ``distributed.Client`` of the scheduler at ``address``; one-line errors when it cannot
    be reached or the address is malformed."""
    from distributed import Client

    try:
        return Client(address, timeout="30s")
    except (OSError, TimeoutError) as exc:
        raise ConfigError(
            f"--scheduler {address}: cannot connect ({exc}); is a Dask scheduler running there "
            "and reachable from this machine?"
        ) from None
    except ValueError as exc:
        raise ConfigError(
            f"--scheduler {address!r}: {exc}; expected an address such as tcp://host:8786"
        ) from None


class _Collect(logging.Handler):
    """Keeps the messages of the WARNING records of one thread (one task: a worker may run
    several at once, one a thread)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.thread = threading.get_ident()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.thread == self.thread:
            self.messages.append(record.getMessage())


def on_worker() -> bool:
    """Whether this code runs in a Dask worker's task."""
    try:
        from distributed import get_worker

        get_worker()
    except (ImportError, ValueError):
        return False
    return True


@contextlib.contextmanager
def collect_warnings(on: bool | None = None) -> Iterator[list[str]]:
    """In a Dask task (``on`` None: :func:`on_worker`), avda's warnings of the task are kept,
    to return to the client with its result, rather than printed to the terminal by each worker
    process: with a handler on the ``avda`` logger, Python's last-resort printing stays off.
    Elsewhere (a serial run) they are logged as usual and the list stays empty."""
    if not (on_worker() if on is None else on):
        yield []
        return
    logger = logging.getLogger("avda")
    handler = _Collect()
    logger.addHandler(handler)
    try:
        yield handler.messages
    finally:
        logger.removeHandler(handler)


__all__ = ["collect_warnings", "connect", "on_worker", "quiet_dask_logs"]
