"""``avda train --log``: TensorBoard / wandb / MLflow receive the records of metrics.jsonl."""

from __future__ import annotations

import json
import math
import sys
import types

import pytest
import torch
from tests.conftest import make_feature_cache

from avda import cli, runs
from avda.train import sinks as sinks_lib
from avda.train.stages import StageStore, fit_epochs

event_accumulator = pytest.importorskip(
    "tensorboard.backend.event_processing.event_accumulator",
    reason="the [log] extra (tensorboard) is part of [dev]",
)


@pytest.fixture()
def cache(tmp_path):
    make_feature_cache(tmp_path / "c.zarr", shift=0.5, per_class=6, modalities=("rgb",))
    return tmp_path / "c.zarr"


def _train_args(cache, out, *extra):
    return [
        "train",
        "--head",
        "dann",
        "--cache",
        str(cache),
        "--source",
        "source",
        "--target",
        "target",
        "-o",
        str(out),
        "--epochs",
        "3",
        "--set",
        "batch_size=16",
        "-q",
        *extra,
    ]


def _scalars(folder):
    accumulator = event_accumulator.EventAccumulator(str(folder))
    accumulator.Reload()
    return {
        tag: [(event.step, event.value) for event in accumulator.Scalars(tag)]
        for tag in accumulator.Tags()["scalars"]
    }


def test_tensorboard_events_hold_every_metrics_jsonl_value(cache, tmp_path, capsys):
    run = tmp_path / "run"
    code = cli.main(_train_args(cache, run, "--log", "tensorboard"))
    assert code == 0, capsys.readouterr().err
    records = runs.read_metrics(run)
    expected: dict[str, list[tuple[int, float]]] = {}
    for record in records:
        for key, value in record.items():
            if key != "epoch" and isinstance(value, int | float):
                expected.setdefault(key, []).append((record["epoch"], value))
    assert "train/loss" in expected and "target_test/verb/top1" in expected
    found = _scalars(run / sinks_lib.TENSORBOARD_FOLDER)
    assert sorted(found) == sorted(expected)
    for tag, points in expected.items():
        assert [step for step, _ in found[tag]] == [step for step, _ in points], tag
        for (_, got), (_, want) in zip(found[tag], points, strict=True):
            assert math.isclose(got, want, rel_tol=1e-6, abs_tol=1e-7), tag


def test_a_resumed_run_replaces_the_events_after_its_checkpoint(tmp_path):
    def session(values: dict[int, float]) -> None:
        sinks = sinks_lib.MetricSinks(["tensorboard"]).open(tmp_path)
        for epoch, value in values.items():
            sinks.record({"epoch": epoch, "train/loss": value})
        sinks.close()

    session({1: 1.0, 2: 2.0, 3: 3.0, 4: 4.0})  # stopped after epoch 4, checkpoint at 2
    session({3: 30.0, 4: 40.0, 5: 50.0})
    found = _scalars(tmp_path / sinks_lib.TENSORBOARD_FOLDER)
    assert found["train/loss"] == [(1, 1.0), (2, 2.0), (3, 30.0), (4, 40.0), (5, 50.0)]


class Recording(sinks_lib.MetricSink):
    name = "recording"

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[dict, int, str | None]] = []
        self.fail = fail

    def log(self, scalars, *, step, series=None):
        if self.fail:
            raise ConnectionError("server unreachable\nmore detail")
        self.calls.append((scalars, step, series))


def test_stage_epochs_stream_as_stage_series(tmp_path):
    recorder = Recording()
    sinks = sinks_lib.MetricSinks()
    sinks.sinks = [recorder]
    module = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    fit_epochs(
        name="audio-classifier",
        stages=StageStore(tmp_path),
        key={"k": 1},
        module=module,
        optimizer=optimizer,
        epochs=3,
        run_epoch=lambda epoch: {"loss": 1.0 / epoch, "note": "text is not a scalar"},
        generator=torch.Generator().manual_seed(0),
        sinks=sinks,
    )
    assert recorder.calls == [
        ({"stage/audio-classifier/loss": 1.0 / e}, e, "audio-classifier") for e in (1, 2, 3)
    ]


def test_a_failing_logger_is_dropped_and_training_goes_on(cache, tmp_path, monkeypatch, caplog):
    failing = Recording(fail=True)
    monkeypatch.setitem(sinks_lib._CLASSES, "tensorboard", lambda run, config: failing)
    from avda.train.loop import train

    result = train(
        cache=cache,
        head="source-only",
        source=["source"],
        target=["target"],
        out=tmp_path / "run",
        overrides={"epochs": 3, "batch_size": 16},
        progress=False,
        log="tensorboard",
    )
    assert runs.is_complete(result.run) and len(runs.read_metrics(result.run)) == 3
    warnings = [r.getMessage() for r in caplog.records if "--log" in r.getMessage()]
    assert len(warnings) == 1
    assert "(ConnectionError: server unreachable); the run goes on" in warnings[0]


@pytest.mark.parametrize(
    ("name", "module", "extra"),
    [
        ("tensorboard", "torch.utils.tensorboard", "log"),
        ("wandb", "wandb", "wandb"),
        ("mlflow", "mlflow", "mlflow"),
    ],
)
def test_a_missing_logger_package_is_one_line_naming_the_extra(
    cache, tmp_path, capsys, monkeypatch, name, module, extra
):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    code = cli.main(_train_args(cache, tmp_path / "run", "--log", name))
    err = capsys.readouterr().err
    assert code == 1
    assert f"avda train --log {name} needs" in err and f"pip install 'avda[{extra}]'" in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()  # refused before any work


def test_an_unknown_logger_is_one_line_naming_the_valid_ones(cache, tmp_path, capsys):
    code = cli.main(_train_args(cache, tmp_path / "run", "--log", "tensorboard,tensorbord"))
    err = capsys.readouterr().err
    assert code == 1
    assert "--log 'tensorbord' is not a logger avda knows; valid: tensorboard, wandb, mlflow" in err


def test_names_are_a_repeatable_comma_list():
    assert sinks_lib.parse_names(["tensorboard,wandb", "wandb", " mlflow "]) == [
        "tensorboard",
        "wandb",
        "mlflow",
    ]
    assert sinks_lib.parse_names(None) == [] and sinks_lib.parse_names("") == []


def _fake_wandb(calls: list) -> types.ModuleType:
    module = types.ModuleType("wandb")

    class Run:
        def define_metric(self, name, step_metric=None):
            calls.append(("define_metric", name, step_metric))

        def log(self, data):
            calls.append(("log", data))

        def finish(self):
            calls.append(("finish",))

    def init(**kwargs):
        calls.append(("init", kwargs))
        return Run()

    module.init = init
    module.util = types.SimpleNamespace(generate_id=lambda: "abc123")
    return module


def test_wandb_gets_each_record_against_epoch_and_resumes_its_run(tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setitem(sys.modules, "wandb", _fake_wandb(calls))
    config = {"head": "dann", "seed": 0}
    for _ in range(2):  # a second start of the same run folder resumes the same wandb run
        sinks = sinks_lib.MetricSinks(["wandb"]).open(tmp_path / "run", config)
        sinks.record({"epoch": 1, "lr": 0.1, "train/loss": 2.0, "seconds": 1})
        sinks.stage("encoder-rgb", 2, {"loss": 0.5})
        sinks.close()
    inits = [c[1] for c in calls if c[0] == "init"]
    assert [i["id"] for i in inits] == ["abc123", "abc123"]
    assert inits[0]["resume"] == "allow" and inits[0]["config"] == config
    assert inits[0]["name"] == "run" and inits[0]["dir"] == str(tmp_path / "run")
    logged = [c[1] for c in calls if c[0] == "log"]
    assert logged[:2] == [
        {"epoch": 1, "lr": 0.1, "train/loss": 2.0, "seconds": 1.0},
        {"stage/encoder-rgb/epoch": 2, "stage/encoder-rgb/loss": 0.5},
    ]
    assert ("define_metric", "train/loss", "epoch") in calls
    assert ("define_metric", "stage/encoder-rgb/loss", "stage/encoder-rgb/epoch") in calls
    assert calls.count(("finish",)) == 2
    assert json.loads((tmp_path / "run" / sinks_lib.IDS_FILE).read_text()) == {"wandb": "abc123"}


def test_mlflow_gets_params_once_and_metrics_at_each_epoch(tmp_path, monkeypatch):
    calls: list = []
    module = types.ModuleType("mlflow")

    def start_run(run_id=None, run_name=None):
        calls.append(("start_run", run_id, run_name))
        return types.SimpleNamespace(info=types.SimpleNamespace(run_id=run_id or "r-1"))

    module.start_run = start_run
    module.log_params = lambda params: calls.append(("log_params", params))
    module.log_metrics = lambda metrics, step: calls.append(("log_metrics", metrics, step))
    module.end_run = lambda: calls.append(("end_run",))
    monkeypatch.setitem(sys.modules, "mlflow", module)
    config = {"head": "dann", "head_config": {"lr": 0.01}}
    for _ in range(2):
        sinks = sinks_lib.MetricSinks(["mlflow"]).open(tmp_path / "run", config)
        sinks.record({"epoch": 3, "train/loss": float("nan"), "target_test/verb/top1": 0.5})
        sinks.close()
    assert [c for c in calls if c[0] == "start_run"] == [
        ("start_run", None, "run"),
        ("start_run", "r-1", None),
    ]
    assert [c for c in calls if c[0] == "log_params"] == [
        ("log_params", {"head": "dann", "head_config.lr": "0.01"})
    ]
    assert ("log_metrics", {"target_test/verb/top1": 0.5}, 3) in calls
    assert calls.count(("end_run",)) == 2
