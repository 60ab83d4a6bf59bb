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
    nanny = logging.getLogger("distributed.nanny")
    filters = list(nanny.filters)
    yield
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)
    nanny.filters[:] = filters


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

    def fake_extract(manifest, **options):
        for spec in options["modalities"]:
            backbones.create(spec.backbone, modality=spec.modality)
        return runner.ExtractResult(None, 1, 0, 0, 0.0, None)

    monkeypatch.setattr(runner, "extract", fake_extract)
    spec = runner.ModalitySpec("audio", "audio_resnet18", None)
    options = {"modalities": [spec], "threads": None, "device": "cpu"}
    with caplog.at_level(logging.WARNING, logger="avda.extract.backbones"):
        done = distributed._run_shard(None, 0, 2, options)
    assert done == {"done": 1, "failed": 0, "missing": 0}
    assert not any("random initialisation" in r.getMessage() for r in caplog.records)
