"""Dask pieces shared by sharded extraction and sweeps (both run on Dask distributed).

The rules both follow: :func:`available_cores` (the cores a process may use, from its CPU
affinity), :func:`threads_per_worker` (those cores shared by the local workers) and
:func:`worker_device` (the workers of a multi-GPU host spread over its GPUs by the last number
in their names).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import sys
import threading
from collections.abc import Iterator
from typing import Any

from avda.errors import ConfigError

DASK_LOGGERS = ("distributed", "dask_jobqueue")


def _routine_shutdown(record: logging.LogRecord) -> bool:
    """False for the nanny's warning that it killed a worker slow to exit at the end of a run."""
    return "still alive after" not in record.getMessage()


def _cancelled_reconnect(record: logging.LogRecord) -> bool:
    """False for the client's records of a scheduler gone away: its reconnect loop cancelled
    as avda closes it (an empty message over a 40-line traceback ending in ``CancelledError``)
    or given up ("Failed to reconnect to scheduler"): the sweep reports its lost runs itself."""
    error = record.exc_info[0] if record.exc_info else None
    if error is not None and issubclass(error, asyncio.CancelledError):
        return False
    return not record.getMessage().startswith("Failed to reconnect to scheduler")


def _abandoned_timeout(record: logging.LogRecord) -> bool:
    """False for asyncio's "Future exception was never retrieved" of a ``TimeoutError``: a
    connection attempt (tornado's ``with_timeout``) that Dask stopped waiting for, reported when
    the garbage collector finds it, possibly at exit after the command's own error line."""
    error = record.exc_info[0] if record.exc_info else None
    return not (
        error is not None
        and issubclass(error, TimeoutError)
        and record.getMessage().startswith("Future exception was never retrieved")
    )


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
    logging.getLogger("asyncio").addFilter(_abandoned_timeout)  # added once, like any filter


def quiet_lost_scheduler_logs() -> None:
    """For a command that reports the work a lost scheduler took with it (``avda sweep``):
    the client's own records of it (:func:`_cancelled_reconnect`) only with ``avda -v``."""
    if logging.getLogger().isEnabledFor(logging.DEBUG):
        return
    client = logging.getLogger("distributed.client")
    if _cancelled_reconnect not in client.filters:
        client.addFilter(_cancelled_reconnect)


def refuse_unguarded_main(what: str) -> None:
    """Refuse to start local worker processes (``what``) for a call made at the top level of
    the script being run, outside ``if __name__ == "__main__":``.

    Dask starts its local workers with ``spawn``: each imports the calling script again, and
    code at its top level runs again in every worker (an extraction into the same store, a
    training into the same run folder), which failed as locks held by the parent and "Nanny
    failed to start". Python's ``multiprocessing`` asks for the guard; this finds the line of
    the call in the script (its source, parsed) and says so before any process starts. An
    interactive session, a notebook or ``python -c`` has no script to re-import: nothing to do.
    """
    import ast
    from pathlib import Path

    main = sys.modules.get("__main__")
    path = getattr(main, "__file__", None)
    if main is None or not path or not str(path).endswith(".py"):
        return
    spec = getattr(main, "__spec__", None)
    if spec is not None and (spec.name == "__main__" or spec.name.endswith(".__main__")):
        return  # `python -m package` (or a folder, a zipapp): spawn does not re-run it
    frame = sys._getframe(1)
    while frame is not None and not (
        frame.f_globals is vars(main) and frame.f_code.co_name == "<module>"
    ):
        frame = frame.f_back
    if frame is None:  # not called from the script's top level (a function it calls is fine)
        return
    line = frame.f_lineno
    try:
        tree = ast.parse(Path(path).read_text(), str(path))
    except (OSError, SyntaxError, ValueError, UnicodeDecodeError):
        return
    for node in ast.walk(tree):
        if not isinstance(node, ast.If):
            continue
        guarded = node.body if _is_main_test(node.test, ast.Eq) else []
        if _is_main_test(node.test, ast.NotEq):  # if __name__ != "__main__": ... else: ...
            guarded = node.orelse
        if guarded and guarded[0].lineno <= line <= (guarded[-1].end_lineno or line):
            return
    raise ConfigError(
        f"{what} starts worker processes that import {path} again, and its top level (the "
        f"call at line {line}) would run again in each: put the script's calls under `if "
        f'__name__ == "__main__":`'
    )


def _is_main_test(test: Any, op: type) -> bool:
    """``__name__ == "__main__"`` (``op`` ``ast.Eq``; either side), alone or as one operand of
    an ``and`` (``if __name__ == "__main__" and ...:``; for ``ast.NotEq``, alone)."""
    import ast

    if op is ast.Eq and isinstance(test, ast.BoolOp) and isinstance(test.op, ast.And):
        return any(_is_main_test(value, op) for value in test.values)
    if not (isinstance(test, ast.Compare) and len(test.ops) == 1):
        return False
    if not isinstance(test.ops[0], op):
        return False
    sides = [test.left, test.comparators[0]]
    names = [s.id for s in sides if isinstance(s, ast.Name)]
    constants = [s.value for s in sides if isinstance(s, ast.Constant)]
    return names == ["__name__"] and constants == ["__main__"]


@contextlib.contextmanager
def workers_ignore_interrupt() -> Iterator[None]:
    """Start local worker processes inside this block with SIGINT ignored.

    Ctrl-C in a terminal reaches every process of the foreground group. Handling it is the
    parent's job: it closes the cluster (which ends the workers, their tasks' rows staying
    pending to resume) and prints one line. Workers, and the decoding processes they start,
    that also got it would each print a ``KeyboardInterrupt`` traceback. An ignored signal stays
    ignored in the processes started meanwhile (across ``exec``: Python then installs no
    ``KeyboardInterrupt`` handler of its own), while the parent's handler is back after the
    block. Off the main thread, where signal handlers cannot be set, it does nothing.
    """
    import signal

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _not_cancelled(record: logging.LogRecord) -> bool:
    """False for a worker's warning that a task ended with CancelledError: the run was
    interrupted or closed, which the parent reports in its own line."""
    return "ended with CancelledError" not in record.getMessage()


def _quiet_cancellations() -> None:
    state_machine = logging.getLogger("distributed.worker.state_machine")
    if _not_cancelled not in state_machine.filters:
        state_machine.addFilter(_not_cancelled)


def _not_orphaned(record: logging.LogRecord) -> bool:
    """False for every heartbeat error of a local worker, whether its scheduler (in the
    command's own process) has gone or is alive but blocked past the heartbeat's timeout (the
    two raise the same ``OSError``): an interrupted command says so in its one line (under load
    the worker's traceback landed below it); a blocked scheduler is named by its own
    'event loop was unresponsive' warning, and ``avda -v`` keeps the workers' errors."""
    return "Failed to communicate with scheduler during heartbeat" not in record.getMessage()


def _quiet_orphaned() -> None:
    worker = logging.getLogger("distributed.worker")
    if _not_orphaned not in worker.filters:
        worker.addFilter(_not_orphaned)


def _bars_without_semaphore() -> None:
    """tqdm's default lock holds a ``multiprocessing`` RLock: a semaphore the resource tracker,
    shared with the parent, counts. A worker killed as its cluster closes on Ctrl-C (busy in a
    task) never releases it, and the tracker then printed "There appear to be N leaked semaphore
    objects to clean up at shutdown" under the ``interrupted`` line. A worker's bars (off, or
    in its own log) need a thread lock only."""
    from tqdm import tqdm

    tqdm.set_lock(threading.RLock())


def quiet_worker_logs(client: Any, *, local: bool) -> None:
    """Without ``avda -v``: the workers of ``client`` (and any that join later) drop their
    warnings about tasks cancelled by an interrupt or a closing run, and ``local`` workers
    (a ``LocalCluster`` of this command) their heartbeat errors (:func:`_not_orphaned`).
    Always: their progress bars take a thread lock, no semaphore
    (:func:`_bars_without_semaphore`)."""
    quiet = not logging.getLogger().isEnabledFor(logging.DEBUG)
    from distributed.diagnostics.plugin import WorkerPlugin

    class QuietCancellations(WorkerPlugin):
        name = "avda-quiet-cancellations"

        def setup(self, worker: Any) -> None:
            _bars_without_semaphore()
            if quiet:
                _quiet_cancellations()
            if quiet and local:
                _quiet_orphaned()

    client.register_plugin(QuietCancellations())


CONNECT_SECONDS = 30.0  # the longest wait for a --scheduler to answer (less: its worker timeout)


def connect(address: str, timeout: float = CONNECT_SECONDS) -> Any:
    """A ``distributed.Client`` of the scheduler at ``address``, waiting at most ``timeout``
    seconds; one-line errors when it cannot be reached or the address is malformed."""
    from distributed import Client

    try:
        return Client(address, timeout=f"{timeout:g}s")
    except (OSError, TimeoutError) as exc:
        raise ConfigError(
            f"--scheduler {address}: cannot connect ({exc}); is a Dask scheduler running there "
            "and reachable from this machine?"
        ) from None
    except ValueError as exc:
        raise ConfigError(
            f"--scheduler {address!r}: {exc}; expected an address such as tcp://host:8786"
        ) from None


def available_cores() -> int:
    """Cores this process may use: its CPU affinity (which ``taskset``, a cgroup cpuset or a
    batch job's allocation narrow), where the platform has one; else ``os.cpu_count()``."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def threads_per_worker(workers: int) -> int:
    """PyTorch threads for each of ``workers`` local worker processes: the available cores
    shared among them, at least 1."""
    return max(1, available_cores() // max(1, workers))


def worker_name() -> str:
    """The name of the Dask worker this runs on; "" outside a worker (a serial run)."""
    try:
        from distributed import get_worker

        return str(get_worker().name)
    except (ImportError, ValueError):
        return ""


def worker_index(name: str) -> int:
    """A worker's index: the last number in its name (``LocalCluster`` names workers 0, 1, ...;
    dask-jobqueue ``JOB-PROCESS``), else 0."""
    digits = re.findall(r"\d+", str(name))
    return int(digits[-1]) if digits else 0


def worker_device(device: str | None, name: str | None = None) -> str | None:
    """The device of the worker ``name`` (default: this one) for a task asking for ``device``.

    ``None`` (the default device) or ``"cuda"`` on a host with several GPUs: GPU
    ``worker_index(name) mod count`` (``cuda:i``), so the host's workers share its GPUs; any
    other device, or a host with at most one GPU, ``device`` unchanged.
    """
    from avda.devices import gpu_count, resolve_device

    if device not in (None, "cuda") or resolve_device(None) != "cuda":
        return device
    count = gpu_count()
    if count < 2:
        return device
    return f"cuda:{worker_index(worker_name() if name is None else name) % count}"


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


__all__ = [
    "available_cores",
    "refuse_unguarded_main",
    "collect_warnings",
    "connect",
    "on_worker",
    "quiet_dask_logs",
    "threads_per_worker",
    "worker_device",
    "worker_index",
    "worker_name",
]
