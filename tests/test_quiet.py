"""Quiet by default: Dask's INFO records only with -v, the random-init warning once a command."""

from __future__ import annotations

import logging

import pytest

from avda import cli, dask_support
from avda.extract import backbones


@pytest.fixture
def dask_loggers(monkeypatch):
    """Restore the Dask loggers and the environment after a test changes them."""
    monkeypatch.delenv("DASK_LOGGING__DISTRIBUTED", raising=False)
    saved = {name: logging.getLogger(name).level for name in dask_support.DASK_LOGGERS}
    nanny, loop = logging.getLogger("distributed.nanny"), logging.getLogger("asyncio")
    filters, loop_filters = list(nanny.filters), list(loop.filters)
    yield
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)
    nanny.filters[:] = filters
    loop.filters[:] = loop_filters


def test_dask_info_and_routine_warnings_are_quiet_without_verbose(dask_loggers, monkeypatch):
    logging.getLogger("distributed").setLevel(logging.INFO)
    dask_support.quiet_dask_logs(verbose=False)
    import os

    assert os.environ["DASK_LOGGING__DISTRIBUTED"] == "warning"  # worker processes inherit it
    assert not logging.getLogger("distributed.scheduler").isEnabledFor(logging.INFO)
    assert logging.getLogger("distributed.scheduler").isEnabledFor(logging.WARNING)
    nanny = logging.getLogger("distributed.nanny")
    routine = nanny.makeRecord(
        "distributed.nanny", logging.WARNING, "f", 1,
        "Worker process still alive after %.1f seconds, killing", (4.0,), None,
    )  # fmt: skip
    other = nanny.makeRecord(
        "distributed.nanny", logging.WARNING, "f", 1, "Restarting worker", (), None
    )
    assert not nanny.filter(routine) and nanny.filter(other)


def _abandon_future(error: BaseException) -> None:
    """A future that fails with ``error`` and is never awaited, collected: asyncio logs it."""
    import asyncio
    import gc

    loop = asyncio.new_event_loop()
    try:
        future = loop.create_future()
        future.set_exception(error)
        del future
        gc.collect()
    finally:
        loop.close()


def test_an_abandoned_connection_timeout_is_not_reported_at_exit(dask_loggers, caplog):
    """A connection attempt Dask gave up on (seen under load, after the sweep's own error line:
    "Future exception was never retrieved ... TimeoutError('Timeout')") stays quiet; a future
    that failed otherwise is still reported."""
    # an earlier command of this test process may have installed it (the fixture restores it)
    logging.getLogger("asyncio").removeFilter(dask_support._abandoned_timeout)
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        _abandon_future(TimeoutError("Timeout"))
        assert "never retrieved" in caplog.text  # what asyncio does without avda's filter
        caplog.clear()
        dask_support.quiet_dask_logs(verbose=False)
        _abandon_future(TimeoutError("Timeout"))
        assert caplog.text == ""
        _abandon_future(ValueError("a real failure"))
        assert "never retrieved" in caplog.text and "a real failure" in caplog.text


def test_dask_logs_stay_with_verbose(dask_loggers):
    logging.getLogger("distributed").setLevel(logging.INFO)
    dask_support.quiet_dask_logs(verbose=True)
    assert logging.getLogger("distributed.scheduler").isEnabledFor(logging.INFO)


def test_random_init_warning_once_per_command(caplog, monkeypatch):
    monkeypatch.setattr(backbones, "RANDOM_INIT_WARNED", set())
    with caplog.at_level(logging.WARNING, logger="avda.extract.backbones"):
        for _ in range(3):
            backbones.create("audio_resnet18", modality="audio")
    assert sum("random initialisation" in r.getMessage() for r in caplog.records) == 1
    cli.main(["--version"])  # a new command warns again
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="avda.extract.backbones"):
        backbones.create("audio_resnet18", modality="audio")
    assert sum("random initialisation" in r.getMessage() for r in caplog.records) == 1


def test_shard_tasks_do_not_repeat_the_random_init_warning(monkeypatch, caplog):
    """The client warned when it prepared the store; the Dask shard tasks stay silent."""
    from avda.extract import distributed, runner

    monkeypatch.setattr(backbones, "RANDOM_INIT_WARNED", set())

    from avda.extract import sampling

    def fake_extract(manifest, options, **keywords):
        for spec in options.modalities:
            backbones.create(spec.backbone, modality=spec.modality)
        return runner.ExtractResult(None, 1, 0, 0, 0.0, None)

    monkeypatch.setattr(runner, "extract", fake_extract)
    spec = runner.ModalitySpec("audio", "audio_resnet18", None)
    options = runner.ExtractOptions(sampling.get("demo"), (spec,), device="cpu")
    with caplog.at_level(logging.WARNING, logger="avda.extract.backbones"):
        done = distributed._run_shard(None, 0, 2, "out.zarr", options, None)
    assert done == {"done": 1, "failed": 0, "missing": 0, "warnings": []}
    assert not any("random initialisation" in r.getMessage() for r in caplog.records)


def test_sweep_tasks_keep_their_warnings_for_the_client(tmp_path, caplog):
    import threading

    from avda.sweep import run as sweep

    other = logging.getLogger("avda.train.loop")
    with dask_support.collect_warnings(True) as messages:
        other.warning("few steps: %d", 3)
        thread = threading.Thread(target=other.warning, args=("another task's",))
        thread.start()
        thread.join()
    assert messages == ["few steps: 3"]  # this task's only
    assert not any(isinstance(h, dask_support._Collect) for h in logging.getLogger("avda").handlers)

    tasks = [type("T", (), {"name": n}) for n in ("a/s/seed0", "b/s/seed0")]
    outcomes = {
        "a/s/seed0": sweep.TaskOutcome("a/s/seed0", "complete", warnings=["w1", "w2"]),
        "b/s/seed0": sweep.TaskOutcome("b/s/seed0", "complete"),
    }
    with caplog.at_level(logging.INFO):
        sweep._report_warnings(tmp_path, tasks, outcomes)
    log_file = tmp_path / sweep.WARNINGS
    assert log_file.read_text() == "a/s/seed0: w1\na/s/seed0: w2\n"
    lines = [r.getMessage() for r in caplog.records if r.name == "avda.sweep.run"]
    assert len(lines) == 1 and lines[0].startswith("2 warning(s) from 1 run(s), e.g. a/s/seed0: w1")
    # A rerun that skips the complete runs keeps what they said when they trained, quietly.
    caplog.clear()
    skipped = {n: sweep.TaskOutcome(n, "skipped") for n in outcomes}
    with caplog.at_level(logging.INFO):
        sweep._report_warnings(tmp_path, tasks, skipped)
    assert log_file.read_text() == "a/s/seed0: w1\na/s/seed0: w2\n"
    assert not [r for r in caplog.records if r.name == "avda.sweep.run"]
    outcomes["a/s/seed0"].warnings = []
    sweep._report_warnings(tmp_path, tasks, outcomes)
    assert not log_file.exists()  # a clean rerun leaves no stale list


def test_extraction_shard_warnings_are_one_line_without_verbose(caplog):
    from avda.extract import distributed

    messages = [f"segment s{i} failed: cannot be opened" for i in range(3)]
    with caplog.at_level(logging.INFO):
        distributed._report_warnings(messages)
    lines = [r.getMessage() for r in caplog.records if r.name == "avda.extract.distributed"]
    assert lines == [
        "3 warning(s) from the shard tasks, e.g. segment s0 failed: cannot be opened "
        "(avda -v prints them all)"
    ]
    caplog.clear()
    with caplog.at_level(logging.DEBUG):
        distributed._report_warnings(messages)
    lines = [r.getMessage() for r in caplog.records if r.name == "avda.extract.distributed"]
    assert lines == messages


@pytest.mark.parametrize("caller", ["api.extract", "run_sweep"])
def test_warning_summaries_tell_a_python_caller_what_to_set_not_avda_v(tmp_path, caplog, caller):
    """Inside an API call or ``run_sweep`` the summaries of the shard tasks' and the runs'
    warnings said "(avda -v prints them)", an option a Python caller has not got: they name
    avda's logger at DEBUG, what -v sets, and that logger so set prints each warning (the
    summaries checked the root logger, which it leaves at INFO). The CLI's words stay."""
    import functools

    from avda import api, wording
    from avda.extract import distributed
    from avda.sweep import run as sweep

    if caller == "api.extract":
        python_words = api._keyword_errors(api._EXTRACT_KEYWORDS)
        report = functools.partial(distributed._report_warnings, ["segment s0 failed", "s1"])
        name, each = "avda.extract.distributed", ["segment s0 failed", "s1"]
    else:
        python_words = wording.keyword_errors(
            functools.partial(wording.keywords, table=sweep.RUN_SWEEP_KEYWORDS)
        )
        outcome = sweep.TaskOutcome("a/s/seed0", "complete", warnings=["w1", "w2"])
        task = type("T", (), {"name": "a/s/seed0"})
        report = functools.partial(sweep._report_warnings, tmp_path, [task], {task.name: outcome})
        name, each = "avda.sweep.run", ["a/s/seed0: w1", "a/s/seed0: w2"]

    def said(function) -> list[str]:
        caplog.clear()
        with caplog.at_level(logging.INFO):
            function()
        return [r.getMessage() for r in caplog.records if r.name == name]

    (python,) = said(python_words(report))
    assert "(logging.getLogger('avda').setLevel(logging.DEBUG) prints them" in python, python
    assert "avda -v" not in python
    (command_line,) = said(report)
    assert "(avda -v prints them" in command_line, command_line
    avda = logging.getLogger("avda")
    avda.setLevel(logging.DEBUG)  # what the Python caller is told to do, root left at INFO
    try:
        assert said(python_words(report)) == each
    finally:
        avda.setLevel(logging.NOTSET)


def test_other_libraries_info_records_only_with_verbose(capsys):
    """A first `avda report` printed matplotlib's "generated new fontManager" before its own
    line: INFO records of other libraries show with -v only; avda's and every warning stay."""
    for verbose in (False, True):
        cli.main([*(["-v"] if verbose else []), "manifest", "validate", "nope.csv"])
        capsys.readouterr()
        logging.getLogger("matplotlib.font_manager").info("generated new fontManager")
        logging.getLogger("avda.evaluate").info("ours")
        logging.getLogger("PIL.Image").warning("theirs, a warning")
        err = capsys.readouterr().err
        assert ("generated new fontManager" in err) == verbose, err
        assert "INFO avda.evaluate: ours" in err and "WARNING PIL.Image: theirs" in err, err
    cli.main(["manifest", "validate", "nope.csv"])  # leave the default logging behind


@pytest.mark.parametrize("verbose", [False, True])
def test_worker_progress_bars_hold_no_semaphore(monkeypatch, verbose):
    """A Dask worker killed while busy (its cluster closing on Ctrl-C) never releases tqdm's
    multiprocessing lock, and the parent's resource tracker printed "leaked semaphore objects"
    under the one ``interrupted`` line: the workers' bars take a thread lock, with -v too."""
    from tqdm import tqdm
    from tqdm.std import TqdmDefaultWriteLock

    monkeypatch.delattr(tqdm, "_lock", raising=False)  # restored after the test
    monkeypatch.setattr(logging.getLogger(), "level", logging.DEBUG if verbose else logging.INFO)
    plugins = []

    class Client:
        register_plugin = staticmethod(plugins.append)

    dask_support.quiet_worker_logs(Client(), local=True)
    (plugin,) = plugins
    plugin.setup(worker=None)  # what each worker runs as it starts
    lock = tqdm.get_lock()
    assert not isinstance(lock, TqdmDefaultWriteLock) or lock.mp_lock is None


@pytest.mark.parametrize("local", [True, False])
def test_a_local_worker_orphaned_by_an_interrupt_says_nothing(caplog, monkeypatch, local):
    """A group Ctrl-C under load: the command closed its scheduler and said its one line,
    then a worker of its LocalCluster logged 'Failed to communicate with scheduler during
    heartbeat' with a traceback below it. A remote cluster's workers keep that error (their
    scheduler is not this command's)."""
    worker = logging.getLogger("distributed.worker")
    monkeypatch.setattr(worker, "filters", [])
    plugins = []

    class Client:
        register_plugin = staticmethod(plugins.append)

    dask_support.quiet_worker_logs(Client(), local=local)
    plugins[0].setup(worker=None)
    with caplog.at_level(logging.ERROR, logger="distributed.worker"):
        worker.error("Failed to communicate with scheduler during heartbeat.")
        worker.error("Compute Failed")
    said = [r.getMessage() for r in caplog.records if r.name == "distributed.worker"]
    orphaned = [] if local else ["Failed to communicate with scheduler during heartbeat."]
    assert said == [*orphaned, "Compute Failed"]


def test_a_local_workers_heartbeat_error_is_kept_with_verbose(caplog, monkeypatch):
    # avda -v keeps every worker's words: the filter (a blocked scheduler's heartbeat errors
    # too) applies only without it
    worker = logging.getLogger("distributed.worker")
    monkeypatch.setattr(worker, "filters", [])
    monkeypatch.setattr(dask_support, "_bars_without_semaphore", lambda: None)
    plugins = []

    class Client:
        register_plugin = staticmethod(plugins.append)

    caplog.set_level(logging.DEBUG)  # the root logger, as avda -v sets it
    dask_support.quiet_worker_logs(Client(), local=True)
    plugins[0].setup(worker=None)
    worker.error("Failed to communicate with scheduler during heartbeat.")
    said = [r.getMessage() for r in caplog.records if r.name == "distributed.worker"]
    assert said == ["Failed to communicate with scheduler during heartbeat."]
