"""Where a run's metric records go besides ``metrics.jsonl``: ``avda train --log NAME``.

``metrics.jsonl`` is always written and stays the record avda reads back (resume, report,
evaluate). The sinks here stream the very same records, as they are written, to the tools
researchers watch:

| name | package (extra) | where |
|---|---|---|
| ``tensorboard`` | tensorboard (``avda[log]``) | ``RUN/tensorboard/`` event files |
| ``wandb`` | wandb (``avda[wandb]``) | a W&B run (``WANDB_MODE``, ``WANDB_PROJECT``) |
| ``mlflow`` | mlflow (``avda[mlflow]``) | an MLflow run (``MLFLOW_TRACKING_URI``) |

Each numeric value of a record becomes one scalar at step = ``epoch`` (``train/loss``,
``lr``, ``seconds``, ``target_test/verb/top1``...). Stages of multi-stage heads (the
Audio-Adaptive audio classifier and encoders) log their per-epoch losses as
``stage/<name>/<loss>`` at step = the stage's epoch; in TensorBoard they go to
``RUN/tensorboard/stages/<name>/`` so that a stage's steps never mix with the run's epochs.

A resumed run logs again from the epoch it restarts at: TensorBoard hides the older events at
and after that step (``purge_step``); the wandb and MLflow runs are resumed by the ids kept in
``RUN/loggers.json``. A sink that fails while the run trains (a network error) is dropped with
one warning; training goes on and ``metrics.jsonl`` keeps every record.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from avda._io import atomic_write_text
from avda.errors import ConfigError
from avda.optional import require

log = logging.getLogger(__name__)

TENSORBOARD_FOLDER = "tensorboard"
IDS_FILE = "loggers.json"
# name -> (module, package, extra)
SINKS: dict[str, tuple[str, str, str]] = {
    "tensorboard": ("torch.utils.tensorboard", "tensorboard", "log"),
    "wandb": ("wandb", "wandb", "wandb"),
    "mlflow": ("mlflow", "mlflow", "mlflow"),
}


def parse_names(values: str | Iterable[str] | None) -> list[str]:
    """``"tensorboard,wandb"`` or ``["tensorboard", "wandb"]`` (repeatable option) -> names,
    in order, without repeats; an unknown name is one :class:`ConfigError` line."""
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    names: list[str] = []
    for value in values:
        for name in str(value).split(","):
            name = name.strip().lower()
            if not name:
                continue
            if name not in SINKS:
                raise ConfigError(
                    f"--log {name!r} is not a logger avda knows; valid: {', '.join(SINKS)} "
                    "(metrics.jsonl is always written)"
                )
            if name not in names:
                names.append(name)
    return names


def _scalars(record: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numeric values of a record (``epoch`` itself is the step, not a scalar)."""
    out = {}
    for key, value in record.items():
        if key == "epoch" or isinstance(value, bool) or not isinstance(value, int | float):
            continue
        out[prefix + key] = float(value)
    return out


class MetricSink:
    """One destination: ``log`` gets a record's scalars and their step; ``series`` is None for
    the run's own records, a stage's name for that stage's."""

    name = ""

    def log(self, scalars: dict[str, float], *, step: int, series: str | None = None) -> None:
        raise NotImplementedError

    def close(self) -> None:  # pragma: no cover - nothing to release by default
        pass


class TensorBoardSink(MetricSink):
    """``torch.utils.tensorboard.SummaryWriter`` event files under ``RUN/tensorboard/``.

    One writer per series (the run; each stage in ``stages/<name>/``), opened at its first
    record with ``purge_step`` = that record's step, so the events a resumed run writes again
    replace the ones logged before it stopped.
    """

    name = "tensorboard"

    def __init__(self, run: Path, config: Mapping[str, Any] | None = None) -> None:
        self._module = require(
            "torch.utils.tensorboard",
            package="tensorboard",
            extra="log",
            feature="avda train --log tensorboard",
        )
        self.folder = Path(run) / TENSORBOARD_FOLDER
        self.config = dict(config or {})
        self._writers: dict[str | None, Any] = {}

    def _writer(self, series: str | None, step: int):
        writer = self._writers.get(series)
        if writer is None:
            folder = self.folder if series is None else self.folder / "stages" / series
            writer = self._module.SummaryWriter(log_dir=str(folder), purge_step=step)
            if series is None and self.config:
                import yaml

                text = yaml.safe_dump(self.config, sort_keys=False)
                writer.add_text("config", "```\n" + text + "\n```", global_step=step)
            self._writers[series] = writer
        return writer

    def log(self, scalars: dict[str, float], *, step: int, series: str | None = None) -> None:
        writer = self._writer(series, step)
        for key, value in scalars.items():
            writer.add_scalar(key, value, global_step=step)
        writer.flush()

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()


def _flat(config: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value if isinstance(value, int | float | str) else str(value)
    return out


def _ids(run: Path) -> dict[str, Any]:
    path = Path(run) / IDS_FILE
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _save_id(run: Path, name: str, ident: str) -> None:
    ids = _ids(run)
    ids[name] = str(ident)
    atomic_write_text(Path(run) / IDS_FILE, json.dumps(ids, indent=2))


class WandbSink(MetricSink):
    """A Weights & Biases run (``wandb.init``; ``WANDB_MODE=offline`` works without network).

    The project is ``WANDB_PROJECT`` (default ``avda``), the run's name the run folder's name,
    its config the run's ``config.yaml``; its files go under ``RUN/``. Each key is plotted
    against ``epoch`` (a stage's keys against ``stage/<name>/epoch``).
    """

    name = "wandb"

    def __init__(self, run: Path, config: Mapping[str, Any] | None = None) -> None:
        wandb = require("wandb", package="wandb", extra="wandb", feature="avda train --log wandb")
        ids = _ids(run)
        ident = ids.get("wandb") or wandb.util.generate_id()
        self.run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "avda"),
            name=Path(run).name,
            id=ident,
            resume="allow",
            dir=str(run),
            config=dict(config or {}),
        )
        _save_id(run, "wandb", ident)
        self._defined: set[str] = set()

    def log(self, scalars: dict[str, float], *, step: int, series: str | None = None) -> None:
        step_key = "epoch" if series is None else f"stage/{series}/epoch"
        if step_key not in self._defined:
            self.run.define_metric(step_key)
            self._defined.add(step_key)
        for key in scalars:
            if key not in self._defined:
                self.run.define_metric(key, step_metric=step_key)
                self._defined.add(key)
        self.run.log({step_key: step, **scalars})

    def close(self) -> None:
        self.run.finish()


class MlflowSink(MetricSink):
    """An MLflow run (``mlflow.start_run``) in ``MLFLOW_TRACKING_URI`` (default ``./mlruns``):
    the run's config flattened as params, each record's values as metrics at step = epoch."""

    name = "mlflow"

    def __init__(self, run: Path, config: Mapping[str, Any] | None = None) -> None:
        self.mlflow = require(
            "mlflow", package="mlflow", extra="mlflow", feature="avda train --log mlflow"
        )
        ident = _ids(run).get("mlflow")
        if ident:
            active = self.mlflow.start_run(run_id=ident)
        else:
            active = self.mlflow.start_run(run_name=Path(run).name)
            params = {k: str(v)[:500] for k, v in _flat(dict(config or {})).items()}
            if params:
                self.mlflow.log_params(params)
        _save_id(run, "mlflow", active.info.run_id)

    def log(self, scalars: dict[str, float], *, step: int, series: str | None = None) -> None:
        finite = {k: v for k, v in scalars.items() if math.isfinite(v)}
        self.mlflow.log_metrics(finite, step=step)

    def close(self) -> None:
        self.mlflow.end_run()


_CLASSES = {"tensorboard": TensorBoardSink, "wandb": WandbSink, "mlflow": MlflowSink}


class MetricSinks:
    """The sinks of one run, opened (:meth:`open`) once the run folder exists: :meth:`record`
    streams a metrics.jsonl record, :meth:`stage` a stage's epoch; a sink that raises is
    dropped with a warning (the run goes on). Without names every call does nothing."""

    def __init__(self, names: Sequence[str] = ()) -> None:
        self.names = list(names)
        self.sinks: list[MetricSink] = []

    def open(self, run: str | Path, config: Mapping[str, Any] | None = None) -> MetricSinks:
        if not self.sinks:
            self.sinks = [_CLASSES[name](Path(run), config) for name in self.names]
        return self

    def _send(self, scalars: dict[str, float], step: int, series: str | None) -> None:
        for sink in list(self.sinks):
            try:
                sink.log(scalars, step=step, series=series)
            except Exception as exc:  # noqa: BLE001 - a logger must not stop training
                text = str(exc).strip().splitlines()
                log.warning(
                    "--log %s failed (%s: %s); the run goes on without it (metrics.jsonl keeps "
                    "every record)",
                    sink.name,
                    type(exc).__name__,
                    text[0][:200] if text else "",
                )
                self.sinks.remove(sink)
                _close_quietly(sink)

    def record(self, record: Mapping[str, Any]) -> None:
        """One ``metrics.jsonl`` record, at step = its ``epoch``."""
        if self.sinks:
            self._send(_scalars(record), int(record.get("epoch", 0)), None)

    def stage(self, name: str, epoch: int, losses: Mapping[str, Any]) -> None:
        """One epoch of stage ``name`` (its mean losses) as ``stage/<name>/<key>``."""
        if self.sinks:
            self._send(_scalars(losses, f"stage/{name}/"), int(epoch), name)

    def close(self) -> None:
        for sink in self.sinks:
            _close_quietly(sink)
        self.sinks = []


def _close_quietly(sink: MetricSink) -> None:
    try:
        sink.close()
    except Exception as exc:  # noqa: BLE001
        log.warning("--log %s: closing failed (%s)", sink.name, exc)


def check_available(names: Sequence[str]) -> None:
    """Each named sink's package is installed (one line naming the extra otherwise): called
    before any work, so a missing package does not surface after data loading."""
    for name in names:
        module, package, extra = SINKS[name]
        require(module, package=package, extra=extra, feature=f"avda train --log {name}")


__all__ = ["SINKS", "MetricSink", "MetricSinks", "check_available", "parse_names"]
