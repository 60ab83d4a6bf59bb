"""avda's Python API: the commands as functions, with keyword arguments named as their options.

::

    import avda

    avda.extract("manifest.csv", "features.zarr", videos="videos/", modalities=["rgb", "audio"])
    store = avda.open_cache("features.zarr")
    result = avda.train(head="dann", cache="features.zarr", source="D1", target="D2",
                        out="runs/dann", head_config={"lr": 0.01})
    table = avda.evaluate(["runs/"])          # a DataFrame, one row per run (metrics in %)

``avda.extract``, ``avda.train`` and ``avda.evaluate`` are these functions (the packages of the
same names are callable); ``avda.open_cache`` is :func:`avda.cache.open_cache`. Errors are
:class:`avda.errors.AvdaError` subclasses with the one-line message the CLI prints, its
options named as these functions' keywords (``out``, not ``-o``), as are the warnings a call
logs. See ``docs/python_api.md``.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import numbers
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from avda import wording
from avda.errors import ConfigError, ManifestError

log = logging.getLogger(__name__)

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

    from avda.cache import FeatureCache
    from avda.extract.runner import ExtractResult
    from avda.train.loop import TrainResult
    from avda.train.predict import Predictions

PRECISIONS = ("auto", "float32", "bfloat16")


def _names(value: str | Sequence[str] | None) -> list[str]:
    """``"D1, D2"`` or ``["D1", "D2"]`` -> ``["D1", "D2"]``."""
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return [str(v) for v in value]


# The command-line options that the code these functions share with the CLI names in its
# errors, warnings and records, and this API's keywords for them (one table per function).
# ``"force": "force=True"``: a flag is its keyword set to True; ``"o"`` is ``-o``. A
# ``--set key=value`` of a table with ``"set="`` becomes ``head_config={'key': value}``;
# without it, it stays (`avda train`'s option, a hint to train again). A command hint
# (``avda train --config RUN/config.yaml``, up to ``;``, ``)`` or a backtick) stays as it is:
# it is a command to run.
_EXTRACT_KEYWORDS = {
    "o": "out",
    "out": "out",
    "force": "force=True",
    "retry-failed": "retry_failed=True",
    "prepare-only": "prepare_only=True",
    "shard": "shard",
    "shards": "shards",
    "scheduler": "scheduler",
    "precision": "precision",
    "device": "device",
    "manifest": "manifest",
    "videos": "videos",
    "frames": "frames",
    "flow": "flow",
    "audio": "audio",
    "domain": "domain",
    "split": "split",
    "modalities": "modalities",
    "backbone": "backbone",
    "weights": "weights",
    "audio-backbone": "audio_backbone",
    "audio-weights": "audio_weights",
    "recipe": "recipe",
    "batch-size": "batch_size",
    "jpeg-dct": "jpeg_dct",
}
_TRAIN_KEYWORDS = {
    "o": "out",
    "out": "out",
    "head": "head",
    "cache": "cache",
    "source": "source",
    "target": "target",
    "seed": "seed",
    "epochs": "epochs",
    "set": "head_config",
    "set=": "head_config",
    "config": "config",
    "device": "device",
    "protocol": "protocol",
    "log": "log",
}
_PREDICT_KEYWORDS = {
    "o": "out",
    "out": "out",
    "cache": "cache",
    "domain": "domains",
    "split": "splits",
    "device": "device",
    "recipe": "recipe",  # avda.extract's, to extract the cache as the run's was
}
_EVALUATE_KEYWORDS = {
    "o": "out",
    "per-class": "per_class=True",
    "confusion": "confusion=True",
    "set": "eval_set",
    "task": "task",
    "metric": "metric",
    "layout": "layout",
    "compare": "compare",
    "protocol": "protocol",
}


def _keywords(message: str, table: Mapping[str, str] = _EVALUATE_KEYWORDS) -> str:
    """The command-line options ``table`` names in a message of the shared code as this API's
    keywords (:func:`avda.wording.keywords`): ``--force`` as ``force=True``, ``-o`` as ``out``,
    ``--split 'x'`` as ``splits='x'``; evaluate's ``--set X`` / ``--metric`` as
    ``eval_set='X'`` / ``metric`` (its options are followed by their values in its messages,
    the others by words)."""
    return wording.keywords(message, table, bare_values=table is _EVALUATE_KEYWORDS)


def _keyword_errors(
    table: Mapping[str, str], records: Callable[[Any, Mapping[str, str]], Any] | None = None
) -> Any:
    """:func:`avda.wording.keyword_errors` in ``table``'s keywords (:func:`_keywords`):
    ``records(result, table)``, the result with the failure records it returns so worded."""
    return wording.keyword_errors(
        functools.partial(_keywords, table=table),
        None if records is None else functools.partial(records, table=table),
    )


# ``DannConfig.lr: expected ...``, ``unknown DannConfig field 'x'``: a head config's checks
_CONFIG_FIELD = re.compile(r"\b[A-Z]\w*Config(?:\.(?P<field>\w+)\b| (?P<unknown>field)\b)")


def _config_keywords(message: str, epochs: Any, head_config: Mapping[str, Any] | None) -> str:
    """A head config's refusal naming what the caller typed: ``epochs`` for ``epochs=0``,
    ``head_config['lr']`` for ``head_config={'lr': -1}`` (``unknown head_config field 'x'``),
    where the config's checks name its class (``DannConfig.epochs``, the CLI's words for
    ``--set epochs=0``). A field the caller did not give (a config file's, a protocol's)
    keeps the class's name."""
    given = head_config if isinstance(head_config, Mapping) else {}

    def name(match: re.Match) -> str:
        field = match.group("field")
        if field is None:
            return "head_config field" if given else match.group(0)
        if field == "epochs" and epochs is not None:  # the keyword wins over head_config's
            return "epochs"
        return f"head_config[{field!r}]" if field in given else match.group(0)

    return _CONFIG_FIELD.sub(name, message)


def _failure_keywords(result: ExtractResult, table: Mapping[str, str]) -> ExtractResult:
    """``result`` whose ``failures`` errors (why each segment failed, as the shared extraction
    code records it: ``check --videos``) name ``table``'s keywords (``check videos``)."""
    failures = result.failures
    if failures.empty or "error" not in failures:
        return result
    failures = failures.assign(error=failures["error"].map(lambda m: _keywords(str(m), table)))
    return dataclasses.replace(result, failures=failures)


def open_cache(path: str | Path) -> FeatureCache:
    """The feature cache (Zarr store) at ``path``: segments, features, provenance, status."""
    from avda.cache import open_cache as open_store

    return open_store(path)


@_keyword_errors(_EXTRACT_KEYWORDS, _failure_keywords)
def extract(
    manifest: str | Path | pd.DataFrame | None = None,
    out: str | Path | None = None,
    *,
    videos: str | Path | None = None,
    domain: str | None = None,
    split: str | None = None,
    frames: str | Path | None = None,
    flow: str | Path | None = None,
    audio: str | Path | None = None,
    flow_stride: int | None = None,
    jpeg_dct: str = "accurate",
    backbone: str = "i3d",
    modalities: str | Sequence[str] = ("rgb",),
    weights: str | Path | None = None,
    audio_backbone: str = "audio_resnet18",
    audio_weights: str | Path | None = None,
    recipe: str = "mmsada",
    batch_size: int = 16,
    workers: int = 2,
    device: str | None = None,
    precision: str = "auto",
    chunk_rows: int = 256,
    shard: str | tuple[int, int] | None = None,
    scheduler: str | None = None,
    shards: int | None = None,
    prepare_only: bool = False,
    retry_failed: bool = False,
    force: bool = False,
    progress: bool = True,
) -> ExtractResult:
    """``avda extract``: decode the manifest's segments, run the backbones and write features
    into the Zarr store ``out`` (resuming a store built the same way).

    ``manifest``: a CSV/Parquet path or a DataFrame; None: one segment per whole video of
    ``videos`` (a folder, or a text file listing video paths), in domain ``domain`` (default
    ``all``) and split ``split`` (default ``test``); see
    :mod:`avda.data_manifests.whole_videos`. ``modalities``: ``["rgb", "audio"]`` or
    ``"rgb,audio"``; ``audio`` uses ``audio_backbone``/``audio_weights``, the others
    ``backbone``/``weights``. ``shard``: ``"i/n"`` or ``(i, n)``. ``scheduler``: run the shards
    on Dask (``"local"``, ``"local:N"``, ``"tcp://host:8786"``). The result has ``done``,
    ``missing``, ``failed``, ``failures`` (a DataFrame) and ``ok``.
    """
    from avda.data_manifests import schema
    from avda.extract import distributed, runner, sampling

    if precision not in PRECISIONS:
        raise ConfigError(f"--precision {precision!r}: expected auto, float32 or bfloat16")
    if scheduler is not None and (shard is not None or prepare_only):
        raise ConfigError("--scheduler runs every shard itself: drop --shard / --prepare-only")
    if device is not None:  # a device this machine lacks: one line before any work
        from avda.devices import resolve_device

        resolve_device(device)
    if out is None:
        raise ConfigError("avda.extract: missing out (the feature cache to write)")
    if manifest is None:
        from avda.data_manifests import whole_videos

        if videos is None:
            raise ConfigError(
                "extraction needs --manifest FILE, or --videos DIR (or a text file listing "
                "videos) for one segment per whole video"
            )
        given = videos
        frame, videos = whole_videos.manifest(
            videos,
            domain=domain if domain is not None else whole_videos.DEFAULT_DOMAIN,
            split=split if split is not None else whole_videos.DEFAULT_SPLIT,
            progress=progress,
        )
        log.info("no manifest: %d whole-video segments from %s", len(frame), given)
    elif domain is not None or split is not None:
        raise ConfigError(
            "--domain/--split name the segments of whole videos (no --manifest); a manifest "
            "gives each segment's own: drop them"
        )
    elif isinstance(manifest, str | Path):
        frame = schema.read(manifest)
    else:  # a DataFrame: checked as a manifest file is
        problems = schema.find_problems(manifest, dataframe=True)
        if problems:
            raise ManifestError(
                schema.format_dataframe_problems(problems, "manifest", "avda.extract")
            )
        frame = schema.normalise(manifest)
    names = _names(modalities)
    if weights is not None and all(m == "audio" for m in names):
        raise ConfigError(
            f"--weights {weights} is the visual backbone's checkpoint, but no visual modality is "
            f"extracted (--modalities {','.join(names)}); an audio checkpoint goes to "
            "--audio-weights"
        )
    _check_backbone_names(names, backbone, audio_backbone)
    if audio_backbone != "audio_resnet18" and "audio" not in names:  # it was ignored silently
        raise ConfigError(
            f"--audio-backbone {audio_backbone} is given, but audio is not extracted "
            f"(--modalities {','.join(names)}); add audio to --modalities or drop "
            "--audio-backbone"
        )
    if audio_weights is not None and "audio" not in names:
        raise ConfigError(
            f"--audio-weights {audio_weights} is given, but audio is not extracted (--modalities "
            f"{','.join(names)}); add audio to --modalities or drop --audio-weights"
        )
    specs = []
    for modality in names:
        if modality == "audio":
            audio_path = _checkpoint(audio_weights, "audio_weights")
            specs.append(runner.ModalitySpec("audio", audio_backbone, audio_path))
        else:
            visual = _checkpoint(weights, "weights")
            specs.append(runner.ModalitySpec(modality, backbone, visual))
    options = runner.ExtractOptions.of(
        videos=videos,
        frames=frames,
        flow=flow,
        audio=audio,
        flow_stride=flow_stride,
        jpeg_dct=jpeg_dct,
        recipe=sampling.get(recipe),
        modalities=specs,
        batch_size=batch_size,
        workers=workers,
        device=device,
        precision=precision,
        chunk_rows=chunk_rows,
        retry_failed=retry_failed,
        force=force,
        progress=progress,
    )
    if scheduler is not None:
        return distributed.extract_distributed(
            frame, options, out=Path(out), scheduler=scheduler, num_shards=shards
        )
    return runner.extract(
        frame, options, out=Path(out), shard=_shard(shard), prepare_only=prepare_only
    )


def _shard(value: str | tuple[int, int] | None) -> tuple[int, int] | None:
    if value is None or isinstance(value, tuple):
        return value
    try:
        index, count = (int(v) for v in str(value).split("/"))
    except ValueError:
        raise ConfigError(f"--shard expects i/n (e.g. 0/4), got {value!r}") from None
    return index, count


def train_options(
    *,
    head: str | None = None,
    cache: str | Path | FeatureCache | None = None,
    source: str | Sequence[str] | None = None,
    target: str | Sequence[str] | None = None,
    seed: int | None = None,
    epochs: int | None = None,
    head_config: dict[str, Any] | None = None,
    config: str | Path | dict[str, Any] | None = None,
    device: str | None = None,
    protocol: str | None = None,
) -> dict[str, Any]:
    """The arguments of :func:`avda.train.loop.train` from explicit values over a config file
    (``config``: a path, or the dict :func:`avda.config_files.read_train_config` returns).

    ``head_config`` (``--set``) and ``epochs`` are applied over the file's ``head_config``;
    when they set ``epochs``, the file's stage fields and ``schedule`` are dropped, so the
    stages scale to the new length as they do without a file. Missing values are ``None``.
    """
    from avda import config_files
    from avda.train import heads

    file = config or {}
    path = "(dict)"
    if not isinstance(file, dict):
        path, file = file, config_files.read_train_config(file)
    head = head if head is not None else file.get("head")
    protocol = protocol if protocol is not None else file.get("protocol")
    if head is None:
        return {"head": None}
    if protocol is not None:  # head is the protocol's method; its config is the head's it runs
        from avda import protocols

        config_class = heads.config_class(protocols.get(protocol).head_for(head))
    else:
        config_class = heads.config_class(head)
    if head_config is not None and not isinstance(head_config, Mapping):
        raise ConfigError(
            f"head_config: expected a dict of the head's fields ({{'lr': 3e-4}}), got "
            f"{head_config!r:.80}"
        )
    overrides = dict(file.get("head_config") or {})
    config_files.check_keys(path, overrides, config_class.field_names(), f"{head} field")
    assigned = dict(head_config or {})
    if epochs is not None:
        assigned["epochs"] = epochs
    if "epochs" in assigned:
        for name in (*config_class.stage_fields, "schedule"):
            if name not in assigned:
                overrides.pop(name, None)
    overrides.update(assigned)
    source = source if source is not None else file.get("source")
    target = target if target is not None else file.get("target")
    cache = cache if cache is not None else file.get("cache")
    cache = getattr(cache, "path", cache)  # an open FeatureCache: its store
    return {
        "head": head,
        "cache": Path(cache) if cache is not None else None,
        "source": _names(source) if source is not None else None,
        "target": _names(target) if target is not None else None,
        "seed": _seed(seed if seed is not None else file.get("seed", 0)),
        "overrides": overrides,
        "device": device if device is not None else file.get("device"),
        "protocol": protocol,
    }


def _seed(value: Any) -> int:
    """A run's seed as a Python int (``np.int64`` from ``np.arange`` too): torch, NumPy and
    ``config.yaml`` take any integer in [0, 2**32)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ConfigError(f"seed: expected an integer >= 0, got {value!r:.80}")
    if not 0 <= int(value) < 2**32:
        raise ConfigError(f"seed: expected an integer in [0, 2**32), got {int(value)}")
    return int(value)


@_keyword_errors(_TRAIN_KEYWORDS)
def train(
    head: str | None = None,
    cache: str | Path | FeatureCache | None = None,
    source: str | Sequence[str] | None = None,
    target: str | Sequence[str] | None = None,
    out: str | Path | None = None,
    *,
    seed: int | None = None,
    epochs: int | None = None,
    head_config: dict[str, Any] | None = None,
    config: str | Path | None = None,
    device: str | None = None,
    protocol: str | None = None,
    progress: bool = True,
    log: str | Sequence[str] | None = None,
) -> TrainResult:
    """``avda train``: train ``head`` on the labelled ``source`` and unlabelled ``target``
    domains of ``cache`` (a path, or an open :class:`FeatureCache`); writes the resumable run
    folder ``out``.

    ``head_config``: fields of the head's config (``--set``; see ``avda train --head NAME
    --show-config``). ``config``: a YAML file in the format of a run's ``config.yaml`` (a
    finished run is trained again with ``config="RUN/config.yaml"``); the other arguments
    override it. ``protocol``: a named protocol (``avda list protocols``) that sets the head
    (and its baselines) as one paper ran them, or ``"unified"``; ``head`` is then the
    protocol's method name. ``source``/``target``: ``"D1,D2"`` or a list. The result has ``run``,
    ``metrics`` (fractions, ``<set>/<task>/<metric>``; with verb and noun tasks also EPIC-100's
    ``<set>/action/top1`` and ``top5`` and verb and noun ``top5``, as ``avda evaluate --layout
    epic100`` scores them) and ``skipped`` (the run was already complete). ``log``:
    ``"tensorboard"`` (``RUN/tensorboard/``), ``"wandb"``, ``"mlflow"`` or a list of them
    also receive the ``metrics.jsonl`` records as they are written (``--log``).
    """
    from avda.train.loop import train as train_loop

    try:
        options = train_options(
            head=head,
            cache=cache,
            source=source,
            target=target,
            seed=seed,
            epochs=epochs,
            head_config=head_config,
            config=config,
            device=device,
            protocol=protocol,
        )
        missing = [k for k in ("head", "cache", "source", "target") if options.get(k) is None]
        if out is None:
            missing.append("out")
        if missing:
            raise ConfigError(
                f"avda.train: missing {', '.join(missing)}; pass them (or a config file with them)"
            )
        return train_loop(out=out, progress=progress, log=log, **options)
    except ConfigError as exc:
        message = _config_keywords(str(exc), epochs, head_config)
        if message == str(exc):
            raise
        raise wording.reworded(exc, message) from exc.__cause__


@_keyword_errors(_EVALUATE_KEYWORDS)
def evaluate(
    runs: str | Path | Sequence[str | Path],
    *,
    layout: str = "runs",
    eval_set: str = "auto",
    task: str | None = None,
    metric: str | None = None,
    compare: str | None = None,
    out: str | Path | None = None,
    protocol: str | None = None,
    per_class: bool = False,
    confusion: bool = False,
) -> Any:
    """``avda evaluate``: the metrics of finished runs (run folders, or folders holding runs).

    ``layout="runs"``: a DataFrame, one row per run (head, setting, seed, then
    ``<set>/<task>/<metric>`` columns in %; ``eval_set``, ``task``, ``metric`` choose among
    them). ``"auto"``, ``"settings"``, ``"epic100"``: the
    papers' table (an :class:`avda.evaluate.aggregate.AggregateTable`: methods x settings,
    per-seed values; ``.methods``, ``.columns``, ``.values``). ``out``: also write OUT.md and
    OUT.csv (and OUT.tex) as the CLI does. ``protocol``: whose evaluation rule the table
    applies to every row (default: the first run's protocol; runs of another are left out).
    ``per_class=True``: instead, the per-class table (an
    :class:`avda.evaluate.per_class.PerClassTable`: per setting, class and method the target
    accuracy, AP for a multi-label task, per seed; ``.to_frame()`` in %, ``.segments``,
    ``.names``, ``.confusion``); ``out`` writes OUT.md, OUT.csv and OUT.tex, and with
    ``confusion=True`` the confusion matrices as CSV in ``OUT.confusion/``.
    """
    return _evaluate(
        runs, layout, eval_set, task, metric, compare, out, protocol, per_class, confusion
    )


def _evaluate(
    runs, layout, eval_set, task, metric, compare, out, protocol, per_class=False, confusion=False
) -> Any:
    from avda.evaluate import aggregate, tables

    paths = [runs] if isinstance(runs, str | Path) else list(runs)
    tables.check_out(out)
    tables.check_per_class(
        per_class, confusion, layout=layout, metric=metric, baseline=compare, out=out
    )
    if per_class:
        from avda.evaluate import per_class as per_class_lib

        table, _ = per_class_lib.evaluate(
            paths, eval_set=eval_set, task=task, protocol=protocol, out=out, confusion=confusion
        )
        return table
    tables.check_layout(layout, protocol=protocol, baseline=compare)
    if layout == "runs":
        table = tables.results_table(aggregate.find_runs(paths, complete_only="below"))
        table = tables.choose_columns(table, eval_set, task, metric)
        if out is not None:
            tables.write_tables(table, out)
        return table
    paper = aggregate.aggregate(
        aggregate.find_runs(paths),
        layout=layout,
        eval_set=eval_set,
        task=task,
        metric=metric,
        protocol=protocol,
    )
    if compare is not None:  # refused as `avda evaluate --compare` is, with or without out
        paper.gains(compare)
    if out is not None:
        tables.write_aggregate(paper, out, baseline=compare)
    return paper


@_keyword_errors(_PREDICT_KEYWORDS)
def predict(
    run: str | Path,
    cache: str | Path | FeatureCache | None = None,
    *,
    domains: str | Sequence[str] | None = None,
    splits: str | Sequence[str] | None = None,
    device: str | None = None,
    progress: bool = True,
    out: str | Path | None = None,
) -> Predictions:
    """``avda predict``: the finished ``run``'s scores on the rows of ``cache`` (a path or an
    open cache; default: the run's own cache) of ``domains`` x ``splits`` (``"D1,D2"`` or a
    list; default: every one). The head predicts as at the run's final evaluation: the run's
    input statistics, its target set for AdaBN, its stages for audio-adaptive
    (:mod:`avda.train.predict`). The result has ``uids``, ``labels`` and ``scores`` per task
    (a run's ``predictions/<set>.npz`` arrays), ``sets``, ``metrics`` and ``top1(task, set)``
    (one set's; ``"action"``: EPIC-100's, for a run with verb and noun); ``out``: also write
    OUT.npz and OUT.csv (``.save(path)`` does it later).
    """
    from avda.train.predict import check_output, predict_run

    if out is not None:  # before any work
        check_output(run, out)
    result = predict_run(
        run,
        cache,
        domains=_names(domains) or None,
        splits=_names(splits) or None,
        device=device,
        progress=progress,
    )
    if out is not None:
        result.save(out)
    return result


__all__ = ["evaluate", "extract", "open_cache", "predict", "train"]


def _check_backbone_names(names: Sequence[str], backbone: str, audio_backbone: str) -> None:
    """An unknown backbone name, with the names that extract that kind of modality (the
    audio list named i3d and slowfast, which have no audio)."""
    from avda.extract import backbones
    from avda.extract.backbones.weights import AUDIO_ONLY, VISUAL_ONLY
    from avda.registry import unknown_name_message

    known = backbones.names()
    if "audio" in names and audio_backbone not in known:
        audio = [n for n in known if n not in VISUAL_ONLY]
        raise ConfigError(unknown_name_message("audio backbone", audio_backbone, audio))
    if any(m != "audio" for m in names) and backbone not in known:
        visual = [n for n in known if n not in AUDIO_ONLY]
        raise ConfigError(unknown_name_message("backbone", backbone, visual))


def _checkpoint(value: str | Path | None, option: str) -> Path | None:
    """A checkpoint file, or a published name (``avda weights list``) resolved as the CLI does."""
    if value is None:
        return None
    from avda import weights as published

    return published.resolve(value, option=option)
