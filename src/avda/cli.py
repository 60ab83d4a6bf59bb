"""The ``avda`` command line: wiring only (argument parsing -> library calls -> exit codes).

Exit codes: 0 ok, 1 error (one line on stderr; ``AVDA_DEBUG=1`` shows the traceback),
2 usage error (one line), 3 finished with some failed items (listed in a failures file),
130 interrupted (one line; resumable commands say to run them again), 143 terminated by
SIGTERM (a batch scheduler's time limit or ``scancel``, ``kill``: the same line, the same
clean-up as an interrupt).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import re
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Annotated

import typer

try:  # typer >= 0.26 vendors click as typer._click
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - older typer on top of click
    from click import exceptions as click_exceptions

import avda
from avda import _entry
from avda._io import os_error_line
from avda.errors import AvdaError, ConfigError, ManifestError
from avda.paths import (
    RUN_OUTPUT,
    RUNS_OUTPUT,
    STORE_OUTPUT,
    check_output_file,
    check_output_folder,
    names_a_folder,
)

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_FAILED_ITEMS, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
EXIT_TERMINATED = 128 + signal.SIGTERM  # 143, as a shell reports a process SIGTERM ended


class Terminated(BaseException):
    """SIGTERM arrived (SLURM/PBS at a job's time limit, ``scancel``, ``kill``): raised in the
    main thread so that the command unwinds as from Ctrl-C (``finally`` blocks close clusters,
    decoding workers and progress bars; locks are released) and says what to do, where
    Python's default action ended the process on the spot without a word. A BaseException,
    not a KeyboardInterrupt: no ``except Exception`` takes it for a failed item, and CPython
    does not re-raise SIGINT at exit for it."""


def _terminated(signum, frame) -> None:
    # once: a second SIGTERM (a wrapper forwarding the job's, a repeated kill) raised in the
    # clean-up cut it short; main() puts the previous handler back when the command has unwound
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Terminated


app = typer.Typer(
    name="avda",
    help="Audio-visual domain adaptation for action recognition: extract once, adapt in minutes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
manifest_app = typer.Typer(help="Build, validate and inspect manifests.", no_args_is_help=True)
cache_app = typer.Typer(help="Inspect and convert feature caches.", no_args_is_help=True)
app.add_typer(manifest_app, name="manifest")
app.add_typer(cache_app, name="cache")

log = logging.getLogger("avda")

# Shared option types.
ManifestPath = Annotated[Path, typer.Option("--manifest", "-m", help="Manifest CSV or Parquet.")]
VideosDir = Annotated[
    Path, typer.Option("--videos", help="Folder the manifest's videos are under.")
]


# The folders this command made for its outputs (:func:`_make_parent`, :func:`output_dir`): a
# command that fails removes those still empty (:func:`main`), so that bad input, refused once
# they were made (a missing run, a bad option), leaves nothing new on disk.
_MADE_FOLDERS: list[Path] = []


def _make_folders(folder: Path) -> None:
    """Create ``folder`` and the folders above it that are missing, one level at a time,
    recording only those this process's own mkdir created: one that another process (a
    parallel command) made in the meantime is theirs, never removed by this one's failure."""
    missing = []
    while not (folder.exists() or folder.is_symlink()) and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    if not missing and not folder.is_dir():
        raise FileExistsError(folder)  # a file of that name (one above: mkdir says so)
    for made in reversed(missing):
        try:
            made.mkdir()
        except FileExistsError:
            if not made.is_dir():  # a file of that name
                raise
        else:
            _MADE_FOLDERS.append(made)


def _remove_made_folders() -> None:
    """Remove the folders this command made that are still empty, deepest first; a folder
    holding anything (finished work, a failures list, another process's files) is kept."""
    for folder in sorted(set(_MADE_FOLDERS), key=lambda f: len(f.absolute().parts), reverse=True):
        with contextlib.suppress(OSError):  # not empty, gone, or not ours to remove
            folder.rmdir()
    _MADE_FOLDERS.clear()


def _make_parent(path: Path, option: str, itself: bool = False) -> None:
    """Create the folders ``path`` will be written in, and ``path`` itself when ``itself``
    (recorded: removed if the command fails while they are still empty)."""
    try:
        _make_folders(path if itself else path.parent)
    except (FileExistsError, NotADirectoryError):  # mkdir says either, by the level made
        why = "a file of that name exists" if path.parent.is_file() else "part of it is a file"
        message = f"{option} {path}: cannot create its folder {path.parent}: {why}"
        raise ConfigError(message) from None


def output_file(
    path: str | Path | None,
    option: str,
    name: str,
    check: Callable[[Path], object] | None = None,
) -> Path | None:
    """An output that is one file, read as typed (:func:`avda.paths.check_output_file`: a folder
    or a file type alone is refused, offering ``name`` in that folder), then ``check(path)``
    (the command's own rule: its suffix), before its parent folders are created."""
    if path is None:
        return None
    path = check_output_file(path, option, name)
    if check is not None:
        check(path)
    _make_parent(path, option)
    return path


def output_dir(path: str | Path | None, option: str, what: str, name: str) -> Path | None:
    """An output that is a folder (``what``: a store, a run), read as typed
    (:func:`avda.paths.check_output_folder`: not an existing file, nor named as one, offering
    ``name``); its parents are created."""
    if path is None:
        return None
    typed, path = path, check_output_folder(path, option, what, name)
    itself = names_a_folder(typed)  # -o x.json/: the folder the user named, made now
    if not itself and not (path.exists() or path.is_symlink()):
        _MADE_FOLDERS.append(path)  # made by the command itself, later: removed if still empty
    _make_parent(path, option, itself=itself)
    return path


def _out_folder(what: str, name: str, help: str = "Output path.") -> typer.models.OptionInfo:
    """``--out``/``-o``, a folder output (``what``, usually ``name``): checked and its parents
    created while parsing (:func:`output_dir`)."""

    def callback(ctx: typer.Context, param: typer.CallbackParam, value: str | None):
        if ctx.resilient_parsing:
            return value
        return output_dir(value, "-o" if "-o" in param.opts else param.opts[0], what, name)

    # read as text (a str, not a Path, which drops the trailing slash of -o x.json/: a folder)
    return typer.Option("--out", "-o", help=help, callback=callback, path_type=str)


# A file output: a str, not a Path, which drops the trailing slash of -o sub/ (a folder).
OutFile = Annotated[str, typer.Option("--out", "-o", help="Output file.")]
Seed = Annotated[int, typer.Option("--seed", min=0, help="Random seed.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
OptionalVideosDir = Annotated[
    Path | None, typer.Option("--videos", help="Folder the manifest's videos are under.")
]
ExtractVideos = Annotated[
    Path | None,
    typer.Option(
        "--videos",
        help="Folder the manifest's videos are under. Without --manifest: a folder of videos, "
        "or a text file listing video paths, one segment per whole video.",
    ),
]
FramesDir = Annotated[
    Path | None,
    typer.Option(
        "--frames",
        help="RGB JPEG folders, one per video (EPIC frame_%010d.jpg or TSN img_%05d.jpg).",
    ),
]
FlowDir = Annotated[
    Path | None,
    typer.Option(
        "--flow", help="u/v flow JPEG folders, one per video (EPIC flow_frames, `avda flow`)."
    ),
]
AudioDir = Annotated[
    Path | None,
    typer.Option("--audio", help="Audio files <video_id>.wav (default: the videos' tracks)."),
]
JpegDct = Annotated[
    str,
    typer.Option(
        help="How --frames/--flow JPEGs are decoded: accurate (Pillow) or fast "
        "(TensorFlow's decode_jpeg, MM-SADA's input; the jpeg extra)."
    ),
]


def _finite(low: float, *, strict: bool):
    """An option callback: the number is finite and > ``low`` (``strict``) or >= ``low``."""

    def check(ctx: typer.Context, param: typer.CallbackParam, value: float | None):
        if value is None or ctx.resilient_parsing:
            return value
        if not (math.isfinite(value) and (value > low if strict else value >= low)):
            relation = ">" if strict else ">="
            raise typer.BadParameter(f"expected a finite number {relation} {low:g}, got {value:g}")
        return value

    return check


def _version(value: bool) -> None:
    if value:
        typer.echo(f"avda {avda.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
        force=True,
    )
    if not verbose:  # other libraries' INFO records (matplotlib's font cache...) only with -v
        logging.getLogger().handlers[0].addFilter(_ours_or_warnings)
    from avda.dask_support import quiet_dask_logs

    quiet_dask_logs(verbose)  # Dask's INFO records and routine warnings only with -v


def _ours_or_warnings(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or record.name.split(".")[0] == "avda"


def _split_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


# ------------------------------------------------------------------------------ demo
@app.command()
def demo(
    out: Annotated[str, typer.Option("--out", "-o", help="Working folder.")] = "avda-demo",
    seed: Seed = 0,
    epochs: Annotated[
        int | None,
        typer.Option(
            min=1, help="Training epochs per head (default: each head's recipe of steps)."
        ),
    ] = None,
    weights: Annotated[
        Path | None,
        typer.Option(
            help="I3D RGB checkpoint: a file or a published name (piergiaj_rgb_imagenet).",
            callback=_weights_callback,
        ),
    ] = None,
    audio_weights: Annotated[
        Path | None,
        typer.Option(
            help="VGGSound H.pth.tar: a file or the published name vggsound_H.",
            callback=_weights_callback,
        ),
    ] = None,
    workers: Annotated[int, typer.Option(min=0, help="Decoding worker processes.")] = 2,
    quiet: Quiet = False,
) -> None:
    """Run the whole pipeline on a built-in two-domain audio-visual dataset and print a table."""
    from avda.demo import run_demo

    result = run_demo(
        output_dir(out, "-o", "its working folder", "avda-demo"),
        seed=seed,
        epochs=epochs,
        weights=weights,
        audio_weights=audio_weights,
        workers=workers,
        progress=not quiet,
    )
    typer.echo(f"\navda demo: source -> target, 4 actions, seed {seed} ({result.weights_note})\n")
    typer.echo(result.markdown)
    if result.summary:
        typer.echo(f"\n{result.summary}")
    typer.echo(
        f"\nchance = 25.0%; written to {result.out / 'results.md'}; "
        f"wall time {result.seconds:.0f} s"
    )


# ------------------------------------------------------------------------------ list
@app.command("list")
def list_command(
    kind: Annotated[str, typer.Argument(help="heads, backbones, recipes, protocols or settings.")],
) -> None:
    """What avda has, one line each: heads, backbones, recipes, protocols, settings."""
    from avda import catalog

    typer.echo(catalog.format_entries(catalog.entries(kind)))


# ------------------------------------------------------------------------------ manifest
@manifest_app.command("validate")
def manifest_validate(
    file: Annotated[Path, typer.Argument(help="Manifest CSV or Parquet.")],
    videos: Annotated[
        Path | None, typer.Option(help="Also check that every video exists here.")
    ] = None,
) -> None:
    """Check a manifest; list every problem with its row number (stdout, one a line)."""
    from avda.data_manifests import schema

    if videos is not None and not videos.is_dir():  # as avda extract says it, not once a row
        raise ConfigError(f"--videos {videos}: no such folder")
    try:
        frame = schema.read(file, videos=videos)
    except schema.ManifestProblems as exc:
        for problem in exc.problems:
            typer.echo(str(problem))
        raise ManifestError(
            f"manifest {file} has {len(exc.problems)} problem(s), listed above (the first: "
            f"{exc.problems[0]}); {schema.fix_hint(exc.problems)} and run `avda manifest "
            "validate` again"
        ) from exc
    domains = ", ".join(f"{d} {n}" for d, n in frame.groupby("domain").size().items())
    typer.echo(f"{file}: OK, {len(frame)} segments ({domains})")


@manifest_app.command("build")
def manifest_build(
    benchmark: Annotated[
        str,
        typer.Argument(
            help="epic55-mmsada, epic100-uda, epic55, charades-ego, ucf-hmdb, actorshift, generic."
        ),
    ],
    annotations: Annotated[
        Path,
        typer.Option("--annotations", "-a", help="Folder (or table file) of annotation files."),
    ],
    out: OutFile,
    source: Annotated[
        str | None, typer.Option(help="Keep these source domain(s), comma-separated.")
    ] = None,
    target: Annotated[
        str | None, typer.Option(help="Keep these target domain(s), comma-separated.")
    ] = None,
    setting: Annotated[
        str | None, typer.Option(help="Named setting: D1-D2, D1,D2-D3, epic100-uda...")
    ] = None,
    option: Annotated[
        list[str] | None,
        typer.Option("--option", "-O", help="Benchmark option key=value (repeatable)."),
    ] = None,
    unit: Annotated[
        str | None, typer.Option(help="charades-ego: segments, videos or windows.")
    ] = None,
    columns: Annotated[
        str | None, typer.Option(help="actorshift/generic: manifest_column=file_column,...")
    ] = None,
) -> None:
    """Turn a benchmark's annotation files into a manifest (and FILE.build.json)."""
    from avda.data_manifests import build_manifest

    out = output_file(out, "-o", "manifest.csv")
    options = list(option or [])
    if unit is not None:
        options.append(f"unit={unit}")
    if columns is not None:
        options.append(f"columns={columns}")
    result = build_manifest(
        benchmark, annotations, out, source=source, target=target, setting=setting, options=options
    )
    typer.echo(f"wrote {out}\n{result.summary()}")


@manifest_app.command("stats")
def manifest_stats(file: Annotated[Path, typer.Argument(help="Manifest CSV or Parquet.")]) -> None:
    """Rows per domain/split, class tables and class distribution per domain/split."""
    from avda.data_manifests import stats_file

    typer.echo(stats_file(file))


# ------------------------------------------------------------------------------ extract
@app.command()
def extract(
    ctx: typer.Context,
    manifest: Annotated[
        Path | None, typer.Option("--manifest", "-m", help="Manifest CSV or Parquet.")
    ] = None,
    out: Annotated[
        Path | None, _out_folder(*STORE_OUTPUT, help="Cache to write (a .zarr folder).")
    ] = None,
    videos: ExtractVideos = None,
    domain: Annotated[
        str | None,
        typer.Option(help="Without --manifest: the domain of the whole-video segments \\[all]."),
    ] = None,
    split: Annotated[
        str | None,
        typer.Option(help="Without --manifest: their split, train|val|test \\[test]."),
    ] = None,
    frames: FramesDir = None,
    flow: FlowDir = None,
    audio: AudioDir = None,
    flow_stride: Annotated[
        int | None,
        typer.Option(
            min=1, help="Flow frames every N RGB frames (default: flow.json or EPIC rule)."
        ),
    ] = None,
    jpeg_dct: JpegDct = "accurate",
    backbone: Annotated[
        str,
        typer.Option(
            help="Visual backbone: i3d, tbn, slowfast, slowfast-r101-mmaction "
            "(Audio-Adaptive's mmaction2 network), slowfast-r101-mmaction-max (its layer4 "
            "max-pooled, as their recognizer reads it), slowfast-r50-mmaction[-max]."
        ),
    ] = "i3d",
    modalities: Annotated[str, typer.Option(help="Comma list of rgb, flow, audio.")] = "rgb",
    weights: Annotated[
        Path | None,
        typer.Option(
            help="Visual backbone checkpoint: a file or a published name (`avda weights list`).",
            callback=_weights_callback,
        ),
    ] = None,
    audio_backbone: Annotated[str, typer.Option(help="Audio encoder.")] = "audio_resnet18",
    audio_weights: Annotated[
        Path | None,
        typer.Option(
            help="Audio encoder checkpoint: a file or a published name (vggsound_H).",
            callback=_weights_callback,
        ),
    ] = None,
    recipe: Annotated[
        str, typer.Option(help="Sampling recipe (see docs/extraction.md).")
    ] = "mmsada",
    batch_size: Annotated[int, typer.Option(min=1, help="Clips per forward pass.")] = 16,
    workers: Annotated[int, typer.Option(min=0, help="Decoding worker processes.")] = 2,
    device: Annotated[
        str | None, typer.Option(help="cpu, cuda, cuda:1 (default: cuda if present).")
    ] = None,
    precision: Annotated[
        str,
        typer.Option(
            help="auto (bf16 where the GPU/CPU computes it natively, else fp32), float32, bfloat16."
        ),
    ] = "auto",
    chunk_rows: Annotated[int, typer.Option(min=1, help="Segments per Zarr chunk.")] = 256,
    shard: Annotated[
        str | None, typer.Option(help="Process only shard i/n (chunk-aligned).")
    ] = None,
    scheduler: Annotated[
        str | None,
        typer.Option(help="Run shards on Dask: local, local:N or tcp://host:8786."),
    ] = None,
    shards: Annotated[
        int | None, typer.Option(min=1, help="With --scheduler: number of shard tasks.")
    ] = None,
    prepare_only: Annotated[
        bool, typer.Option(help="Create the store and its arrays only (before --shard runs).")
    ] = False,
    retry_failed: Annotated[bool, typer.Option(help="Retry segments that failed before.")] = False,
    force: Annotated[bool, typer.Option(help="Replace a store built differently.")] = False,
    quiet: Quiet = False,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="YAML mapping of these options (batch_size: 32, modalities: \\[rgb, audio]); "
            "options given here override it.",
        ),
    ] = None,
) -> None:
    """Decode videos / frame folders, run backbones and write features into a Zarr cache."""
    params = dict(ctx.params)
    if params.pop("config") is not None:
        params = _with_config_file(ctx, config, params, extract)
    missing = ["'--out'"] if params["out"] is None else []
    if params["manifest"] is None and params["videos"] is None:
        missing.insert(0, "'--manifest' (or '--videos' alone: one segment per whole video)")
    if missing:
        raise click_exceptions.UsageError(
            f"Missing option {', '.join(missing)} (or in --config FILE)", ctx=ctx
        )
    _extract(**params)


def _with_config_file(ctx: typer.Context, path: Path, params: dict, command) -> dict:
    """``params`` (the option values of ``command``, a function) with those of the YAML
    mapping in ``path`` where an option is not given on the command line; values converted
    and checked as the options' own (``-`` or ``_`` in names; a list for a comma-list option;
    a relative path relative to the file's folder)."""
    import typing

    from typer._click.core import ParameterSource

    from avda import config_files

    hints = typing.get_type_hints(command)
    options = {p.name: p for p in ctx.command.params if p.name in params}
    data = {str(k).replace("-", "_"): v for k, v in config_files.read_mapping(path).items()}
    config_files.check_keys(path, data, sorted(options))
    merged = dict(params)
    for name, value in data.items():
        if ctx.get_parameter_source(name) in (
            ParameterSource.COMMANDLINE,
            ParameterSource.ENVIRONMENT,
        ):
            continue
        is_path = hints.get(name) is Path or Path in typing.get_args(hints.get(name))
        if is_path and isinstance(value, str) and value and not Path(value).is_absolute():
            value = str(path.parent / value)
        try:
            merged[name] = options[name].process_value(ctx, config_files.comma_list(value))
        except click_exceptions.BadParameter as exc:
            raise ConfigError(f"--config {path}: {name}: {exc.format_message()}") from None
    return merged


def _report_missing(store, sharded: bool = False) -> None:
    """One line per modality with rows whose input does not exist, with their reasons (the
    files), to stderr: they are stored as zeros, which training leaves out or names."""
    import numpy as np
    import pandas as pd

    from avda.cache import Status

    whose = " (every shard's)" if sharded else ""
    for modality in store.modalities:
        rows = np.flatnonzero(store.status(modality) == Status.MISSING)
        if not len(rows):
            continue
        reasons = pd.Series(store.errors(modality)[rows]).value_counts()
        shown = "; ".join(f"{reason} ({count})" for reason, count in reasons.head(3).items())
        more = f"; and {len(reasons) - 3} more reasons" if len(reasons) > 3 else ""
        typer.echo(
            f"{modality}: {len(rows)} segments of the store{whose} have no input: {shown}{more}",
            err=True,
        )


def _extract(*, out: Path, quiet: bool, **options) -> None:
    """``avda extract`` once its options are merged: the library call and the report."""
    from avda import api
    from avda.cache import open_cache

    # __wrapped__: the function without its keyword messages, which name the options here
    result = api.extract.__wrapped__(out=out, progress=not quiet, **options)
    pairs = result.done + result.missing + result.failed  # (segment, modality) pairs
    store = open_cache(out)
    what, count = "", len(store.modalities)
    if count > 1 and pairs == store.num_segments * count:
        what = f" ({store.num_segments} segments x {count} modalities)"
    typer.echo(
        f"{out}: {result.done} done, {result.missing} missing input, {result.failed} failed"
        f"{what} in {result.seconds:.1f} s"
    )
    if result.missing:
        _report_missing(store, sharded=bool(options.get("shard") or options.get("scheduler")))
    failures = out.parent / f"{out.name}.failures.csv"
    if result.ok:
        # A list left by an earlier run is stale once the store has no failed row at all
        # (a clean shard keeps the list while other shards' rows are still failed).
        if failures.exists() and store.failures().empty:
            failures.unlink()
    else:
        from avda._io import atomic_write_text

        # whole or not at all: a kill while writing never leaves a list cut short
        atomic_write_text(failures, result.failures.to_csv(index=False))
        typer.echo(
            f"failed segments are listed in {failures}; fix them and re-run with --retry-failed",
            err=True,
        )
        raise typer.Exit(EXIT_FAILED_ITEMS)


# ------------------------------------------------------------------------------ flow
@app.command("flow")
def flow_command(
    manifest: Annotated[
        Path | None,
        typer.Option(
            "--manifest",
            "-m",
            help="Manifest CSV or Parquet (default: every video of --videos, whole).",
        ),
    ] = None,
    out: Annotated[
        Path, _out_folder("flow frame folders", "flow", help="Folder of u/v JPEG folders.")
    ] = ...,
    videos: OptionalVideosDir = None,
    frames: FramesDir = None,
    method: Annotated[
        str, typer.Option(help="tvl1 (OpenCV, CPU) or raft (torchvision, GPU when present).")
    ] = "tvl1",
    weights: Annotated[
        Path | None,
        typer.Option(
            help="raft: torchvision raft_large / raft_small state dict, a file or a published "
            "name (raft_large_C_T_SKHT_V2).",
            callback=_weights_callback,
        ),
    ] = None,
    stride: Annotated[
        int, typer.Option(min=1, help="One flow frame every N frames (EPIC-55: 2).")
    ] = 1,
    dilation: Annotated[int, typer.Option(min=1, help="Flow from frame t to t + dilation.")] = 1,
    bound: Annotated[
        float,
        typer.Option(
            callback=_finite(0, strict=True),
            help="Clip to +-bound px before JPEG quantisation (EPIC-100: 8).",
        ),
    ] = 20.0,
    size: Annotated[
        int, typer.Option(min=2, help="Shorter side of the frames flow is computed on.")
    ] = 256,
    batch_size: Annotated[int, typer.Option(min=1, help="Frame pairs per step (RAFT batch).")] = 8,
    device: Annotated[
        str | None, typer.Option(help="raft: cpu, cuda, cuda:1 (default: cuda if present).")
    ] = None,
    segments_only: Annotated[
        bool, typer.Option(help="Only frames within --margin s of a segment.")
    ] = False,
    margin: Annotated[
        float, typer.Option(callback=_finite(0, strict=False), help="Seconds around segments.")
    ] = 1.0,
    force: Annotated[
        bool, typer.Option(help="Recompute folders made with other settings.")
    ] = False,
    quiet: Quiet = False,
) -> None:
    """Optical flow as EPIC-style u/v JPEGs (resumable), the input of `avda extract --flow`."""
    from avda.data_manifests import schema
    from avda.extract import flow

    options = flow.FlowOptions(
        method=method,
        stride=stride,
        dilation=dilation,
        bound=bound,
        shorter_side=size,
        weights=weights,
    )
    if manifest is not None:
        segments = schema.read(manifest)
    elif videos is not None:  # every video of a folder (or a list file), whole, as extract
        from avda.data_manifests import whole_videos

        segments, videos = whole_videos.manifest(videos, progress=not quiet)
    else:
        raise ConfigError(
            "avda flow needs --manifest FILE, or --videos DIR (or a text file listing videos) "
            "for every video whole"
        )
    result = flow.compute_flow(
        segments,
        out=out,
        videos=videos,
        frames=frames,
        options=options,
        device=device,
        batch_size=batch_size,
        segments_only=segments_only,
        margin=margin,
        force=force,
        progress=not quiet,
    )
    typer.echo(
        f"{out}: {result.videos} videos, {result.computed} flow frames computed, "
        f"{result.skipped} already there, {len(result.failures)} videos failed "
        f"in {result.seconds:.1f} s"
    )
    failures = out / flow.FAILURES_LIST  # written by the run, under its lock
    if not result.ok:
        typer.echo(f"failed videos are listed in {failures}", err=True)
        raise typer.Exit(EXIT_FAILED_ITEMS)


@app.command("finetune")
def finetune_command(
    backbone: Annotated[
        str,
        typer.Option(
            help="Backbone (avda list backbones): i3d, tbn, slowfast, slowfast-r101-mmaction, "
            "slowfast-r50-mmaction (-max: max-pooled features), audio_resnet18."
        ),
    ],
    modality: Annotated[str, typer.Option(help="rgb, flow or audio.")],
    manifest: ManifestPath,
    source: Annotated[str, typer.Option(help="Source domain(s), comma separated.")],
    out: OutFile,
    videos: OptionalVideosDir = None,
    frames: FramesDir = None,
    flow: FlowDir = None,
    audio: AudioDir = None,
    jpeg_dct: JpegDct = "accurate",
    weights: Annotated[
        Path | None,
        typer.Option(
            help="Initial checkpoint: a file or a published name (`avda weights list`).",
            callback=_weights_callback,
        ),
    ] = None,
    recipe: Annotated[
        str, typer.Option(help="Sampling recipe for training clips.")
    ] = "mmsada-train",
    epochs: Annotated[int, typer.Option(min=1, help="Epochs.")] = 10,
    batch_size: Annotated[int, typer.Option(min=1, help="Clips per forward pass.")] = 8,
    accumulate: Annotated[int, typer.Option(min=1, help="Forward passes per optimiser step.")] = 1,
    lr: Annotated[
        float, typer.Option(callback=_finite(0, strict=True), help="SGD learning rate.")
    ] = 0.01,
    workers: Annotated[int, typer.Option(min=0, help="Decoding worker processes.")] = 2,
    device: Annotated[str | None, typer.Option(help="cpu or cuda.")] = None,
    seed: Seed = 0,
    quiet: Quiet = False,
) -> None:
    """Fine-tune a backbone + linear classifier on labelled source clips (resumable)."""
    from avda.data_manifests import schema
    from avda.extract import finetune, sampling
    from avda.extract.inputs import InputPaths

    out = output_file(out, "-o", "finetuned.pt")
    config = finetune.FinetuneConfig(
        epochs=epochs,
        batch_size=batch_size,
        accumulate=accumulate,
        lr=lr,
        workers=workers,
        seed=seed,
    )
    result = finetune.finetune(
        schema.read(manifest),
        inputs=InputPaths(videos=videos, frames=frames, flow=flow, audio=audio, jpeg_dct=jpeg_dct),
        backbone=backbone,
        modality=modality,
        source=_split_list(source),
        recipe=sampling.get(recipe),
        out=out,
        weights=weights,
        config=config,
        device=device,
        progress=not quiet,
        class_names=schema.build_classes(manifest).get("verb_class"),
    )
    last = result.history[-1] if result.history else {}
    typer.echo(
        f"{out}: {result.epochs} epoch{'s' if result.epochs != 1 else ''}, last loss "
        f"{last.get('loss', float('nan')):.4f}, "
        f"train accuracy {100 * last.get('accuracy', 0):.1f}%; use it with "
        f"`avda extract {'--audio-weights' if modality == 'audio' else '--weights'} {out}`"
    )
    if result.skipped:
        listed = finetune.failures_path(out)
        where = f"listed in {listed}" if listed.exists() else f"counted in {out}.json"
        typer.echo(
            f"{result.skipped} source segments were skipped (their inputs failed), {where}; "
            "fix them and fine-tune again into another -o",
            err=True,
        )
        raise typer.Exit(EXIT_FAILED_ITEMS)


# ------------------------------------------------------------------------------ cache
@cache_app.command("import")
def cache_import(
    source: Annotated[
        Path,
        typer.Argument(
            help="Feature file (.pkl, .h5), a folder of <video_id>.npy, or TA3N's folder of "
            "<video_id>/img_NNNNN.t7."
        ),
    ],
    out: Annotated[Path, _out_folder(*STORE_OUTPUT, help="Cache to append to or create (.zarr).")],
    annotations: Annotated[
        Path | None,
        typer.Option(
            "--annotations", "-a", help="EPIC annotation file (CSV/pkl) or avda manifest."
        ),
    ] = None,
    domain: Annotated[str | None, typer.Option(help="Domain of the imported rows.")] = None,
    split: Annotated[str | None, typer.Option(help="Split: train, val or test.")] = None,
    format_: Annotated[
        str, typer.Option("--format", help="auto, epic-pkl, h5, npy or ta3n-t7.")
    ] = "auto",
    backbone: Annotated[
        str | None, typer.Option(help="Backbone that made the features (epic-pkl: tbn).")
    ] = None,
    modality: Annotated[str, typer.Option(help="npy, ta3n-t7: the files' modality.")] = "rgb",
    feature_rate: Annotated[
        float | None,
        typer.Option(
            callback=_finite(0, strict=True),
            help="npy, ta3n-t7: feature rows (frames) per second of video.",
        ),
    ] = None,
    num_clips: Annotated[int, typer.Option(min=1, help="npy, ta3n-t7: clips K per segment.")] = 25,
    placement: Annotated[
        str,
        typer.Option(
            help="npy, ta3n-t7: nearest (the rows nearest K uniform times) or tsn (TSN's "
            "test indices over the segment's rows, as TA3N reads per-frame features)."
        ),
    ] = "nearest",
    chunk_rows: Annotated[
        int, typer.Option(min=1, help="Segments per Zarr chunk (new store).")
    ] = 256,
) -> None:
    """Append released / external features to a cache (EPIC-100 UDA pickles, HDF5, .npy, TA3N
    .t7 frames)."""
    from avda.cache import interop, schema

    result = interop.import_features(
        source,
        out=out,
        annotations=annotations,
        format=format_,
        domain=domain,
        split=split,
        backbone=backbone,
        modality=modality,
        feature_rate=feature_rate,
        num_clips=num_clips,
        placement=placement,  # type: ignore[arg-type]  # checked by _import_per_video
        chunk_rows=chunk_rows,
    )
    if result.already_imported:
        earlier = result.earlier or {}
        where = ", ".join(
            f"{key} {earlier[key]}" for key in ("domain", "split") if earlier.get(key) is not None
        )
        when = f" on {earlier['imported']}" if earlier.get("imported") else ""
        asked = {"domain": domain, "split": split}
        differs = [
            f"--{key} {value}"
            for key, value in asked.items()
            if value is not None and value != earlier.get(key)
        ]
        per_video = earlier.get("format") in schema.PER_VIDEO_FORMATS  # and segments
        same = "files and segments" if per_video else "sha256"
        typer.echo(
            f"{out}: {source} was already imported{when} (same {same}; "
            + (f"as {where}" if where else "domain and split from its annotations")
            + "); nothing to do"
            + (
                f" ({', '.join(differs)} not applied: import it into another store, or "
                "re-create this one, to import it otherwise)"
                if differs
                else ""
            )
        )
    elif result.fill:
        typer.echo(
            f"{out}: filled {', '.join(result.modalities)} of {result.rows} segments it held "
            f"(no new segments){result.not_done_text()}"
        )
    else:
        typer.echo(
            f"{out}: appended {result.rows} segments ({', '.join(result.modalities)})"
            + result.not_done_text()
        )


@cache_app.command("export")
def cache_export(
    store: Annotated[Path, typer.Argument(help="Feature cache (.zarr).")],
    out: OutFile,
    format_: Annotated[str, typer.Option("--format", help="h5 or epic-pkl.")] = "h5",
    modalities: Annotated[str | None, typer.Option(help="Comma list (default: all).")] = None,
    domain: Annotated[str | None, typer.Option(help="epic-pkl: rows of this domain.")] = None,
    split: Annotated[str | None, typer.Option(help="epic-pkl: rows of this split.")] = None,
) -> None:
    """Write a cache as HDF5 (streamed chunk by chunk) or as a TA3N feature pickle."""
    from avda.cache import interop

    if format_ not in ("h5", "epic-pkl"):
        raise ConfigError(f"--format {format_!r}: expected h5 or epic-pkl")
    out = output_file(out, "-o", "features.h5" if format_ == "h5" else "features.pkl")
    chosen = _split_list(modalities) if modalities else None
    if format_ == "h5":
        path = interop.export_h5(store, out, modalities=chosen)
    elif format_ == "epic-pkl":
        path = interop.export_epic_pickle(store, out, domain=domain, split=split, modalities=chosen)
    else:
        raise ConfigError(f"--format {format_!r}: expected h5 or epic-pkl")
    typer.echo(f"wrote {path}")


@cache_app.command("info")
def cache_info(store: Annotated[Path, typer.Argument(help="Feature cache (.zarr).")]) -> None:
    """Summarise a feature cache: provenance, segments, modalities, extraction status."""
    from avda.cache import open_cache

    typer.echo(open_cache(store).summary())


@cache_app.command("verify")
def cache_verify(
    store: Annotated[Path, typer.Argument(help="Feature cache (.zarr).")],
    quiet: Quiet = False,
) -> None:
    """Read every chunk of a cache once: damaged or missing chunk files, NaN/inf in done rows,
    unknown status values, arrays of the wrong shape. One line per problem; exit code 3 when
    any. Leftovers of an import killed before its commit are a note (exit code 0)."""
    from avda.cache import open_cache

    cache = open_cache(store)
    problems = cache.verify(progress=not quiet)
    for message in problems["message"]:
        typer.echo(message)
    for note in problems.attrs.get("notes", []):
        typer.echo(f"note: {note}")
    read = f"{problems.attrs['arrays']} arrays, {problems.attrs['chunks']} chunks read"
    if len(problems):
        files = problems.loc[problems["file"] != "", "file"].nunique()
        typer.echo(
            f"cache {store}: {len(problems)} problem{'s' if len(problems) > 1 else ''} "
            f"({files} file{'s' if files != 1 else ''}; {read})"
        )
        raise typer.Exit(EXIT_FAILED_ITEMS)
    notes = len(problems.attrs.get("notes", []))
    if notes:  # not called clean: a note is what a killed writer left or what it lacks
        read += f"; {notes} note{'s' if notes > 1 else ''} above"
    typer.echo(f"cache {store}: no problems ({read})")


# ------------------------------------------------------------------------------ cluster
@app.command()
def cluster(
    store: Annotated[Path, typer.Argument(help="Feature cache (.zarr).")],
    modality: Annotated[str, typer.Option(help="Features to cluster.")] = "audio",
    plot: Annotated[
        str | None,
        typer.Option(help="Save each class's elbow curve (PNG) in this folder (a new one)."),
    ] = None,
    max_k: Annotated[int, typer.Option("--max-k", help="Largest k tried per class.")] = 20,
    source: Annotated[
        str | None,
        typer.Option(
            help="Source domain(s) clustered together, comma separated "
            "(default: each domain on its own)."
        ),
    ] = None,
    seed: Seed = 0,
    quiet: Quiet = False,
) -> None:
    """K-means per class for k = 1..max-k, k by the Elbow; cluster ids written into STORE."""
    from avda.train.clustering import cluster_store

    plot_dir = output_dir(plot, "--plot", "elbow plots (one PNG per class)", "elbows")
    with _naming(store):
        result = cluster_store(
            store,
            modality=modality,
            source=_split_list(source) if source else None,
            max_clusters=max_k,
            random_state=seed,
            plot_dir=plot_dir,
            progress=not quiet,
        )
    typer.echo(result.summary())


# ------------------------------------------------------------------------------ train
@app.command("train")
def train_command(
    ctx: typer.Context,
    head: Annotated[
        str | None, typer.Option(help="Head name (source-only, dann, ...: `avda list heads`).")
    ] = None,
    cache: Annotated[Path | None, typer.Option(help="Feature cache (.zarr).")] = None,
    source: Annotated[str | None, typer.Option(help="Source domain(s), comma separated.")] = None,
    target: Annotated[str | None, typer.Option(help="Target domain(s), comma separated.")] = None,
    out: Annotated[
        Path | None,
        _out_folder(*RUN_OUTPUT, help="Run folder to write."),
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", min=0, help="Random seed [0].")] = None,
    epochs: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Length of the head's whole schedule: every stage scales in proportion "
            "unless set (mm-sada stage 1; audio-adaptive's audio classifier, encoders and "
            "flow recognizer), and so do lr steps.",
        ),
    ] = None,
    set_: Annotated[
        list[str] | None,
        typer.Option(
            "--set",
            help="Head config field key=value (YAML; a list field also takes a,b,c); "
            "see --show-config.",
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="A run's config.yaml, or YAML like it (head, cache, source, target, seed, "
            "head_config); options and --set given here override it.",
        ),
    ] = None,
    show_config: Annotated[
        bool,
        typer.Option(
            "--show-config", help="Print every field of the head's config (value, meaning); exit."
        ),
    ] = False,
    device: Annotated[str | None, typer.Option(help="cpu or cuda.")] = None,
    protocol: Annotated[
        str | None,
        typer.Option(
            help="Train as a paper's protocol trains this method and its baselines "
            "(`avda list protocols`; unified: one recipe for every head); --set still wins.",
        ),
    ] = None,
    log: Annotated[
        list[str] | None,
        typer.Option(
            "--log",
            help="Also stream metrics.jsonl to tensorboard (RUN/tensorboard/), wandb or mlflow; "
            "repeatable or a comma list.",
        ),
    ] = None,
    quiet: Quiet = False,
) -> None:
    """Train an adaptation head on cached features; writes a resumable run directory."""
    from avda import api, config_files
    from avda import protocols as protocols_lib
    from avda.train import heads

    file = config_files.read_train_config(config) if config is not None else {}
    head = head if head is not None else file.get("head")
    if head is None:
        raise click_exceptions.UsageError(
            "Missing option '--head' (`avda list heads`; or head: in --config FILE)", ctx=ctx
        )
    protocol = protocol if protocol is not None else file.get("protocol")
    runs_head = protocols_lib.get(protocol).head_for(head) if protocol is not None else head
    config_class = heads.config_class(runs_head)
    if config is not None:  # the file's unknown head fields, named with the file
        fields = config_class.field_names()
        config_files.check_keys(config, file["head_config"], fields, f"{head} field")
    options = api.train_options(
        head=head,
        cache=cache,
        source=source,
        target=target,
        seed=seed,
        epochs=epochs,
        head_config=config_class.parse_assignments(set_ or []),
        config=file,
        device=device,
        protocol=protocol,
    )
    if show_config:
        overrides = options["overrides"]
        if protocol is not None:
            runs_head, overrides = protocols_lib.get(protocol).resolve(
                head, overrides, options["source"], options["target"]
            )
        typer.echo(show_head_config(runs_head, overrides, protocol, options["overrides"]))
        return
    missing = [f"'--{k}'" for k in ("cache", "source", "target") if options[k] is None]
    if out is None:
        missing.append("'--out'")
    if missing:
        raise click_exceptions.UsageError(
            f"Missing option {', '.join(missing)} "
            "(or cache:, source:, target: in --config FILE; -o is always given)",
            ctx=ctx,
        )
    from avda.train.loop import train

    result = train(out=out, progress=not quiet, log=log, **options)
    state = "already complete" if result.skipped else "done"
    typer.echo(f"{out}: {state}")
    for key, value in sorted(result.metrics.items()):
        typer.echo(f"  {key:<32} {100 * value:6.2f}")


def _type_name(hint: object) -> str:
    """``int``, ``list of str``, ``adam|sgd``, ``str or null`` for a config field's type hint."""
    import types
    import typing

    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is typing.Literal:
        return "|".join(str(a) for a in args)
    if origin in (typing.Union, types.UnionType):
        parts = [_type_name(a) for a in args if a is not type(None)]
        return " or ".join(parts) + (" or null" if type(None) in args else "")
    if origin in (tuple, list):
        return f"list of {_type_name(args[0])}" if args else "list"
    return getattr(hint, "__name__", str(hint))


def _yaml_value(value: object) -> str:
    import yaml

    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text[: -len("...")].strip() if text.endswith("...") else text


def show_head_config(
    head: str,
    overrides: dict | None = None,
    protocol: str | None = None,
    given: dict | None = None,
) -> str:
    """Every field of ``head``'s config as YAML lines ``name: value  # type; meaning``, the
    values those of ``overrides`` over the head's defaults (``avda train --show-config``).
    Under ``protocol`` a value it sets (one of ``overrides`` not the user's ``given`` and not
    the head's default) says so and names the default, which the meaning may describe (TA3N's
    target_batch_size 219 beside '128 * 26115 / 16115', EPIC-100's 207)."""
    import typing

    from avda.catalog import entries
    from avda.train import heads

    cls = heads.config_class(head)
    values = cls.from_dict(overrides or {}).to_dict()
    defaults = cls.from_dict({}).to_dict()
    hints = typing.get_type_hints(cls)
    meaning = cls.field_help()
    about = dict(entries("heads")).get(head, "")
    rows = [(f"  {name}: {_yaml_value(value)}", name) for name, value in values.items()]
    width = max(len(text) for text, _ in rows)
    lines = [
        f"# head {head}: {about}",
        "# Set a field with --set KEY=VALUE or under head_config: in a --config file.",
        f"head: {head}",
        "head_config:",
    ]
    if protocol is not None:
        lines.insert(2, f"# protocol {protocol}: its values say 'set by protocol {protocol}'.")
    for text, name in rows:
        help_text = meaning.get(name) or ""
        if protocol is not None and name not in (given or {}) and values[name] != defaults[name]:
            head_default = f"the head's default {_yaml_value(defaults[name])}"
            help_text = f"set by protocol {protocol} ({head_default}); {help_text}".rstrip("; ")
        comment = (
            f"{_type_name(hints[name])}; {help_text}" if help_text else _type_name(hints[name])
        )
        lines.append(f"{text:<{width}}  # {comment}")
    return "\n".join(lines)


# ------------------------------------------------------------------------------ evaluate
@app.command()
def evaluate(
    runs: Annotated[
        list[Path], typer.Argument(help="Run directories, or folders holding runs (a sweep's out).")
    ],
    out: Annotated[
        str | None,  # not Path: its trailing slash (-o sub/, a folder) is refused, not dropped
        typer.Option(
            "--out", "-o", help="Write OUT.md and OUT.csv (and OUT.tex for paper layouts)."
        ),
    ] = None,
    layout: Annotated[
        str,
        typer.Option(
            help="runs: one row per run; auto, settings, epic100: the papers' tables "
            "(methods x settings, mean ± std over seeds)."
        ),
    ] = "runs",
    compare: Annotated[
        str | None, typer.Option("--compare", help="Show each method's gain over this method.")
    ] = None,
    format_: Annotated[
        str, typer.Option("--format", help="Printed format: markdown, latex, csv, html.")
    ] = "markdown",
    eval_set: Annotated[
        str,
        typer.Option(
            "--set", help="Evaluation set: auto (target_test when labelled, else target_val)."
        ),
    ] = "auto",
    task: Annotated[
        str | None,
        typer.Option(
            help="The task (paper layouts: default the first; runs layout: every one, and "
            "action for runs with verb and noun)."
        ),
    ] = None,
    metric: Annotated[
        str | None,
        typer.Option(
            help="top1, top5, mca or mAP (paper layouts; default top1/mAP); the runs layout: "
            "top1, mca, mAP or mAP-authors, and top5 of runs with verb and noun (default: "
            "every one)."
        ),
    ] = None,
    export_submission: Annotated[
        str | None,  # not Path: its trailing slash (a folder) is refused, not dropped
        typer.Option(help="EPIC-100 UDA: write the challenge JSON (or .zip) of the one run given."),
    ] = None,
    sls: Annotated[
        str | None,
        typer.Option(
            help="Supervision levels PT,TL,TD of the model, needed by --export-submission "
            "(github.com/epic-kitchens/sls; e.g. 2,3,3)."
        ),
    ] = None,
    checkpoint_average: Annotated[
        int,
        typer.Option(
            min=0,
            help="MM-SADA protocol: also print the mean target top-1 of the last N epochs "
            "(runs trained with keep_last_predictions >= N; the paper uses 9).",
        ),
    ] = 0,
    protocol: Annotated[
        str | None,
        typer.Option(
            help="Paper layouts: the protocol whose evaluation rule every row follows "
            "(default: the first run's); runs trained under another are left out.",
        ),
    ] = None,
    per_class: Annotated[
        bool,
        typer.Option(
            "--per-class",
            help="Instead of the table: per setting, class and method, the target accuracy "
            "(AP for multi-label tasks) as mean ± std over seeds, with each class's name and "
            "target segments (--task chooses the task).",
        ),
    ] = False,
    confusion: Annotated[
        bool,
        typer.Option(
            "--confusion",
            help="With --per-class and -o OUT: each run's confusion matrix, and each method's "
            "summed over seeds, as CSV in OUT.confusion/<method>/<setting>/.",
        ),
    ] = False,
) -> None:
    """Metrics of finished runs: one row per run, or the papers' tables over many runs."""
    from avda.evaluate import tables

    if out is not None:  # OUT.md, OUT.csv: OUT itself may be a folder's name
        tables.check_out(out)  # before its parent folders are made
        _make_parent(Path(out), "-o")
    export_submission = output_file(export_submission, "--export-submission", "test.json")
    if sls is not None and export_submission is None:  # it was ignored: nothing to record it in
        raise ConfigError(
            "--sls describes the model of a challenge file: add --export-submission test.json "
            "(or leave --sls out)"
        )
    if export_submission is not None and export_submission.suffix.lower() not in (".json", ".zip"):
        raise ConfigError(
            f"--export-submission {export_submission}: the challenge file is JSON; name it "
            ".json, or .zip (a zip holding test.json, what the server takes)"
        )
    if checkpoint_average and format_ != "markdown":  # its lines would precede the table
        raise ConfigError(
            f"--checkpoint-average prints lines of text above the table, which would break "
            f"the {format_} on stdout: leave --format out (-o OUT still writes OUT.csv and "
            "OUT.tex; with -o the table is printed too, so --format stays refused)"
        )
    if checkpoint_average:
        from avda.evaluate.aggregate import find_runs
        from avda.evaluate.checkpoints import checkpoint_accuracy

        for run in find_runs(runs):  # a folder of runs (a sweep's out) is each of its runs
            result = checkpoint_accuracy(run, last=checkpoint_average)
            typer.echo(
                f"{run}: target_test verb top-1 over the last {checkpoint_average} checkpoints "
                f"{100 * result['top1_mean']:.2f} +- {100 * result['top1_std']:.2f}"
            )

    if export_submission is not None:
        if sls is None:
            raise ConfigError(
                "--export-submission needs --sls PT,TL,TD, the supervision levels of your "
                "model (pretraining, training labels, training data; github.com/epic-kitchens/"
                "sls): the challenge records them with the scores"
            )
        try:
            sls_pt, sls_tl, sls_td = (int(v) for v in sls.split(","))
        except ValueError:
            raise ConfigError(f"--sls expects three integers pt,tl,td, got {sls!r}") from None
        from avda.evaluate.aggregate import find_runs

        chosen = find_runs(runs)
        if len(chosen) != 1:
            shown = ", ".join(str(r) for r in chosen[:2]) + (", ..." if len(chosen) > 2 else "")
            raise ConfigError(
                f"--export-submission writes one model's challenge file, and {len(chosen)} "
                f"finished runs were given ({shown}): pass the one run folder to submit"
            )
        path = tables.export_submission(
            chosen[0], export_submission, sls_pt=sls_pt, sls_tl=sls_tl, sls_td=sls_td
        )
        typer.echo(f"wrote {path}", err=True)

    text, written = tables.evaluate_runs(
        runs,
        layout=layout,
        eval_set=eval_set,
        task=task,
        metric=metric,
        baseline=compare,
        fmt=format_,
        out=out,
        protocol=protocol,
        per_class=per_class,
        confusion=confusion,
    )
    typer.echo(text)
    for path in written:
        typer.echo(f"wrote {path}", err=True)


# ------------------------------------------------------------------------------ sweep
@app.command("sweep")
def sweep_command(
    spec: Annotated[Path, typer.Argument(help="Sweep spec (YAML, see docs/sweep.md).")],
    scheduler: Annotated[
        str | None,
        typer.Option(help="A running Dask scheduler, e.g. tcp://host:8786 (not local:N)."),
    ] = None,
    cluster: Annotated[
        str | None, typer.Option(help="local, slurm or pbs (default: the spec's cluster.kind).")
    ] = None,
    out: Annotated[
        str | None,
        typer.Option("--out", "-o", help="Folder of the runs (default: the spec's out)."),
    ] = None,
    worker_timeout: Annotated[
        float | None,
        typer.Option(
            min=0.001,
            help="Seconds to wait for the first Dask worker before giving up "
            "(default: the spec's cluster.worker_timeout, 300); SLURM/PBS: counted from when "
            "the queue last showed the jobs pending (--queue-timeout or cluster.queue_timeout "
            "bounds that wait).",
        ),
    ] = None,
    queue_timeout: Annotated[
        float | None,
        typer.Option(
            min=0.001,
            help="slurm/pbs: seconds to wait, in all, while the queue shows the jobs pending "
            "before giving up (default: the spec's cluster.queue_timeout, none: no limit).",
        ),
    ] = None,
    job_script: Annotated[
        bool,
        typer.Option(
            "--job-script", help="slurm/pbs: print the worker job script and exit (submit nothing)."
        ),
    ] = False,
    check: Annotated[
        bool,
        typer.Option(
            "--check",
            help="Validate the spec (heads, protocol, settings, published numbers; its caches "
            "need not exist yet); train nothing.",
        ),
    ] = False,
    quiet: Quiet = False,
) -> None:
    """Train every (head, setting, seed) of a spec as Dask tasks; finished runs are skipped.

    A spec may expand to at most 10,000 runs; AVDA_MAX_RUNS=N raises the limit.
    """
    from avda import sweep

    if check:
        if out is not None:  # what replaces out:, by its rule (made by the run, not --check)
            check_output_folder(out, "--out", *RUNS_OUTPUT)
        checked = sweep.load_spec(spec, open_caches=False, out_given=out is not None)
        sweep.check_cluster(checked, cluster, queue_timeout=queue_timeout, scheduler=scheduler)
        problems, unchecked = sweep.task_problems(checked)
        for problem in problems:  # every one, on stdout (the last line says how many)
            typer.echo(problem)
        if problems:
            raise ConfigError(
                f"{spec}: {len(problems)} run(s) of the spec cannot train, listed above (the "
                f"first: {problems[0]})"
            )
        typer.echo(sweep.describe_spec(checked))
        if unchecked:  # named as resolved: relative to the spec's folder, not the shell's
            missing = ", ".join(str(path.resolve()) for path in unchecked)
            typer.echo(
                f"  not checked: {sum(unchecked.values())} run(s) on caches that do not exist "
                f"yet: {missing} (a spec's relative paths are under its folder)"
            )
        return
    if job_script:
        # the script runs workers, not the runs' folder: the spec's out: is not used
        typer.echo(sweep.job_script(sweep.load_spec(spec, out_given=True), cluster=cluster))
        return
    output_dir(out, "--out", *RUNS_OUTPUT)
    summary = sweep.run_sweep.__wrapped__(  # its messages in the command line's words
        spec,
        out=out,
        scheduler=scheduler,
        cluster=cluster,
        progress=not quiet,
        worker_timeout=worker_timeout,
        queue_timeout=queue_timeout,
    )
    typer.echo(summary.text())
    if not summary.ok:
        raise typer.Exit(EXIT_FAILED_ITEMS)


# ------------------------------------------------------------------------------ report
@app.command()
def report(
    runs: Annotated[
        list[Path], typer.Argument(help="Run directories, or folders holding runs (a sweep's out).")
    ],
    out: Annotated[
        str, typer.Option("--out", "-o", help="HTML file to write (named .html).")
    ] = "report.html",
    title: Annotated[str, typer.Option(help="Page title.")] = "avda report",
    layout: Annotated[str, typer.Option(help="Results table: auto, settings, epic100.")] = "auto",
    compare: Annotated[
        str | None, typer.Option("--compare", help="Show each method's gain over this method.")
    ] = None,
    max_points: Annotated[
        int, typer.Option(min=1, help="Segments per embedding plot (t-SNE up to 800).")
    ] = 500,
    quiet: Quiet = False,
) -> None:
    """One self-contained HTML page: tables, curves, per-class accuracy, confusion, embeddings."""
    from avda.evaluate.report import build_report, check_output
    from avda.train.embedding import head_embedding

    out = output_file(out, "-o", "report.html", check_output)
    path = build_report(
        runs,
        out,
        title=title,
        layout=layout,
        baseline=compare,
        max_points=max_points,
        progress=not quiet,
        embed=head_embedding,
    )
    typer.echo(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")  # the result: stdout, once


@app.command("predict")
def predict_command(
    run: Annotated[Path, typer.Argument(help="A finished run folder (avda train -o RUN).")],
    out: Annotated[
        str,  # not Path: its trailing slash (-o sub/, a folder) is refused, not dropped
        typer.Option(
            "--out", "-o", help="Predictions file to write (.npz, with a .csv beside it)."
        ),
    ],
    cache: Annotated[
        Path | None,
        typer.Option(help="Feature cache (.zarr) to predict (default: the run's own cache)."),
    ] = None,
    domain: Annotated[
        list[str] | None,
        typer.Option(
            "--domain", help="Domain(s) to predict, repeatable or comma separated (default: all)."
        ),
    ] = None,
    split: Annotated[
        list[str] | None,
        typer.Option(
            "--split", help="Split(s) to predict, repeatable or comma separated (default: all)."
        ),
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="cpu, cuda, cuda:1 (default: cuda if present).")
    ] = None,
    quiet: Quiet = False,
) -> None:
    """Apply a finished run's head to cache rows: the run's own, or a cache extracted later."""
    from avda.api import predict
    from avda.train.predict import check_output

    out = output_file(out, "-o", "predictions.npz", lambda path: check_output(run, path))
    result = predict.__wrapped__(  # its messages name these options, not its keywords
        run,
        cache=cache,
        domains=[d for value in domain or [] for d in _split_list(value)] or None,
        splits=[s for value in split or [] for s in _split_list(value)] or None,
        device=device,
        progress=not quiet,
    )
    path = result.save(out)
    typer.echo(f"{path}: {len(result)} segments predicted by {run}")
    for name, count in result.sets.items():
        parts = [f"{name}: {count} segments"]
        for task in [*result.scores, "action"]:  # action: a run with verb and noun (EPIC-100)
            for metric, label in (
                ("top1", "top-1"),
                ("mAP", "mAP (mAP-present)"),  # a multi-label task: both conventions
                ("mAP-authors", "mAP-authors"),
            ):
                value = result.metrics.get(f"{name}/{task}/{metric}")
                if value is not None and value == value:  # a multi-label set without labels: NaN
                    parts.append(f"{task} {label} {100 * value:.1f}%")
        typer.echo(", ".join(parts))


# ------------------------------------------------------------------------------ weights
weights_app = typer.Typer(
    help="Published checkpoints by name: list, fetch, verify (docs/weights.md).",
    no_args_is_help=True,
)
app.add_typer(weights_app, name="weights")


@weights_app.command("list")
def weights_list() -> None:
    """One line per published file: name, loader/modality, checksum, licence; * = fetched."""
    from avda import weights as published

    directory = published.weights_dir()
    for entry in published.PUBLISHED_FILES:
        fetched = "*" if published.local_path(entry, directory).is_file() else " "
        how = entry.checksum_text() if entry.url else "not downloadable: see docs/weights.md"
        typer.echo(
            f"{fetched} {entry.name}  {entry.loader} {entry.modality}  {entry.file_name}  "
            f"[{how}]  {entry.licence}"
        )
    typer.echo(f"(* = fetched into {directory}; `avda weights fetch NAME`)", err=True)


@weights_app.command("fetch")
def weights_fetch(
    names: Annotated[list[str], typer.Argument(help="Published names (`avda weights list`).")],
    directory: Annotated[
        str | None,
        typer.Option(
            "--dir",
            help="Folder to save in (default: $AVDA_WEIGHTS_DIR, "
            "$AVDA_HOME/weights or ~/.cache/avda/weights).",
        ),
    ] = None,
    mirror: Annotated[
        str | None,
        typer.Option(
            help="Download <MIRROR>/<file name> instead of the publisher's URL (a lab's copy; "
            "published checksums are still checked). Default: $AVDA_WEIGHTS_MIRROR."
        ),
    ] = None,
    quiet: Quiet = False,
) -> None:
    """Download published weights (resumable; checked where the publisher gives a checksum)."""
    from avda import weights as published

    entries = [published.get(name) for name in names]  # every name checked before any download
    folder = output_dir(directory, "--dir", "published weights files", "weights")
    for entry in entries:
        result = published.fetch(entry, folder, progress=not quiet, mirror=mirror)
        state = "downloaded" if result.downloaded else "already there"
        check = (
            f"{entry.checksum_text()} matches"
            if result.checked
            else "not checked: no published checksum"
        )
        typer.echo(f"{entry.name}: {result.path} ({state}; {check}; licence {entry.licence})")


@weights_app.command("verify")
def weights_verify(
    files: Annotated[list[Path], typer.Argument(help="Weights files to identify.")],
) -> None:
    """Say which published file each FILE is: by checksum, else by its keys and shapes.
    Every file gets its line; the exit code is 1 when some file was not identified."""
    from avda import weights as published

    unknown = 0
    for path in files:
        try:
            typer.echo(published.identify(path).message)
        except AvdaError as error:  # one file's problem does not hide the others'
            unknown += 1
            typer.echo(f"error: {error}", err=True)
    if unknown:
        raise typer.Exit(1)


def _weights_callback(ctx: typer.Context, param: typer.CallbackParam, value: Path | None):
    """``--weights NAME`` is the fetched published file; a path stays a path."""
    if ctx.resilient_parsing or value is None:
        return value
    from avda import weights as published

    return published.resolve(value, option=param.opts[0])


# ------------------------------------------------------------------------------ entry point
# Commands that pick up where an interrupted run stopped when run again.
RESUMABLE = {
    "extract",
    "flow",
    "finetune",
    "train",
    "cluster",
    "sweep",
    "cache import",
    "weights fetch",
}


def _command_name(argv: list[str]) -> str:
    """``train``, ``cache import``...: the (sub)command named in ``argv`` ("" when none)."""
    words = [a for a in argv if not a.startswith("-")]  # root options are flags only
    if not words:
        return ""
    if words[0] in ("cache", "manifest", "weights") and len(words) > 1:
        return f"{words[0]} {words[1]}"
    return words[0]


def _output_of(argv: Sequence[str]) -> str | None:
    """The value of ``-o``/``--out``/``--output`` in ``argv``, if any."""
    argv = list(argv)
    for index, arg in enumerate(argv):
        if arg in ("-o", "--out", "--output") and index + 1 < len(argv):
            return argv[index + 1]
        for flag in ("--out=", "--output="):
            if arg.startswith(flag):
                return arg[len(flag) :]
    return None


@contextlib.contextmanager
def _naming(path: Path) -> Iterator[None]:
    """An OS error that names no file (a Zarr chunk written by a library: a full disk) names
    ``path``, the output of a command that has no ``-o`` (:func:`os_error_message`)."""
    try:
        yield
    except OSError as exc:
        if exc.filename is None:
            exc.filename = str(path)
        raise


def _interrupted_message(argv: list[str], what: str = "interrupted") -> str:
    command = _command_name(argv)
    if command in RESUMABLE:
        return f"{what}; avda {command} resumes where it stopped: run the same command again"
    return what


def _one_line(text: str) -> str:
    """A message as one line: a list of problems joins its header with ``: a; b; c``."""
    parts = [line.strip() for line in str(text).splitlines() if line.strip()]
    line = parts[0] if parts else ""
    for part in parts[1:]:
        line += (" " if line.endswith(":") else "; ") + part
    return line


def os_error_message(exc: OSError, argv: Sequence[str] = ()) -> str:
    """One line for an OS-level error (:func:`avda._io.os_error_line`); an error that names no
    file (a Zarr chunk written by a library) names the command's output."""
    return os_error_line(exc, _output_of(argv))


def _setting_hint(exc: Exception, ctx: typer.Context, argv: list[str]) -> str:
    """``--setting`` given to a command that takes ``--source``/``--target`` (avda train,
    predict...; only ``manifest build`` has it): the domains of the named setting, to type
    instead. Click's own suggestion (``--set``) is another option altogether."""
    if not isinstance(exc, click_exceptions.NoSuchOption) or exc.option_name != "--setting":
        return ""
    if not {"source", "target"} <= {p.name for p in ctx.command.params}:
        return ""
    from avda.data_manifests.settings import NAMED_SETTINGS

    after = argv[argv.index("--setting") + 1 :] if "--setting" in argv else []
    chosen = NAMED_SETTINGS.get(after[0]) if after else None
    if chosen is None:
        return "; this command takes a setting's domains: --source A --target B"
    source, target = ",".join(chosen.source_domains), ",".join(chosen.target_domains)
    return f"; this command takes a setting's domains: --source {source} --target {target}"


# `--out=~/x`: the shell expands a `~` that starts a word (`-o ~/x`), not one after `=`
_HOME_AFTER_EQUALS = re.compile(r"(--[A-Za-z][\w-]*=)(~[^/]*(?:/.*)?)", re.S)


def _home_expanded(argv: list[str]) -> list[str]:
    """``--option=~/path`` as the shell expands ``--option ~/path``: a `~` after `=` is left
    to the program, and was read as a folder named `~` made in the working folder (a user
    then deleting it with `rm -rf ~` deletes their home)."""
    expanded = []
    for arg in argv:
        match = _HOME_AFTER_EQUALS.fullmatch(arg) if isinstance(arg, str) else None
        if match is not None:  # a Path given to main() by a script is a word already
            arg = match.group(1) + os.path.expanduser(match.group(2))
        expanded.append(arg)
    return expanded


def main(argv: list[str] | None = None) -> int:
    """Console entry point: maps errors to exit codes and one-line messages.

    Whatever goes wrong, stderr gets one line (``AVDA_DEBUG=1`` adds the traceback above it):
    ``error: ...`` (exit 1) for avda's own errors and OS errors (missing file, permission,
    disk full), ``internal error: ...`` (exit 1) for anything unexpected, ``usage error: ...``
    (exit 2) and ``interrupted ...`` (exit 130).
    """
    _MADE_FOLDERS.clear()
    code = _main(_home_expanded(list(sys.argv[1:] if argv is None else argv)))
    if code != EXIT_OK:
        _remove_made_folders()
    return code


def _main(argv: list[str]) -> int:
    """:func:`main` once ``argv`` is read: the command, its exit code and its one line."""
    debug = os.environ.get("AVDA_DEBUG", "") not in ("", "0")

    def fail(message: str) -> int:
        if debug:
            traceback.print_exc()
        typer.echo(_one_line(message), err=True)
        return EXIT_ERROR

    backbones = sys.modules.get("avda.extract.backbones")
    if backbones is not None:  # its random-initialisation warning: once per command
        backbones.RANDOM_INIT_WARNED.clear()
    # SIGTERM unwinds the command as Ctrl-C does (only where nobody set a handler of their own,
    # and only from the main thread, where signal handlers can be set); the console script's
    # start-up handler (avda._entry) hands over to it
    on_term = None
    if threading.current_thread() is threading.main_thread():
        if signal.getsignal(signal.SIGTERM) in (signal.SIG_DFL, _entry.starting):
            on_term = signal.signal(signal.SIGTERM, _terminated)
    try:
        code = app(args=argv, prog_name="avda", standalone_mode=False)
        code = int(code or 0)
    except (typer.Abort, KeyboardInterrupt):
        code = EXIT_INTERRUPTED
    except Terminated:  # said below, as an interrupt: after the bars its frames held closed
        code = EXIT_TERMINATED
    except typer.Exit as exc:
        code = int(exc.exit_code)
    except SystemExit as exc:  # click exits 1 itself on a broken pipe
        code = exc.code if isinstance(exc.code, int) else EXIT_ERROR
    except click_exceptions.NoArgsIsHelpError as exc:
        exc.show()
        return EXIT_USAGE
    except click_exceptions.ClickException as exc:
        message = exc.format_message()
        ctx = getattr(exc, "ctx", None)
        if ctx is not None:
            message += _setting_hint(exc, ctx, argv)
            message += f" (see `{ctx.command_path} --help`)"
        typer.echo(f"usage error: {_one_line(message)}", err=True)
        return exc.exit_code if isinstance(exc, click_exceptions.UsageError) else EXIT_USAGE
    except AvdaError as exc:
        return fail(f"error: {exc}")
    except OSError as exc:
        _quiet_abandoned_tasks()  # a full disk: Zarr's other writes of the store left pending
        return fail(f"error: {os_error_message(exc, argv)}")
    except MemoryError:
        return fail("error: out of memory; use a smaller --batch-size or fewer --workers")
    except Exception as exc:  # noqa: BLE001 - the contract: one line, never a raw traceback
        return fail(
            f"internal error: {type(exc).__name__}: {exc}; please report it with the output "
            "of the same command run with AVDA_DEBUG=1"
        )
    finally:
        if on_term is _entry.starting:  # the console script's process only exits now: its code
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
        elif on_term is not None:
            signal.signal(signal.SIGTERM, on_term)
    if code in (EXIT_INTERRUPTED, EXIT_TERMINATED):
        _quiet_abandoned_tasks()
    if code == EXIT_INTERRUPTED:  # typer turns KeyboardInterrupt into Exit(130)
        typer.echo(_interrupted_message(argv), err=True)
    elif code == EXIT_TERMINATED:
        typer.echo(_interrupted_message(argv, "terminated (SIGTERM)"), err=True)
    return code


def _abandoned(record: logging.LogRecord) -> bool:
    return "Task was destroyed but it is pending" not in record.getMessage()


def _quiet_abandoned_tasks() -> None:
    """An interrupted command, or one whose write failed (a full disk), leaves Zarr's reads
    and writes pending on its event loop (their rows stay pending to resume): asyncio logged
    each as 'Task was destroyed but it is pending!' with its coroutine when the process ended,
    under the command's one line."""
    asyncio_log = logging.getLogger("asyncio")
    if _abandoned not in asyncio_log.filters:
        asyncio_log.addFilter(_abandoned)


def entry() -> None:
    """The console script of an install made before the script became ``avda._entry:entry``."""
    _entry.entry()


if __name__ == "__main__":
    _entry.entry()
