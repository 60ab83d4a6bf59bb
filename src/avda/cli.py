"""The ``avda`` command line: wiring only (argument parsing -> library calls -> exit codes).

Exit codes: 0 ok, 1 avda error (one line on stderr; ``AVDA_DEBUG=1`` shows the traceback),
2 usage error, 3 finished with some failed items (listed in a failures file), 130 interrupted.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from pathlib import Path
from typing import Annotated

import typer

try:  # typer >= 0.26 vendors click as typer._click
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - older typer on top of click
    from click import exceptions as click_exceptions

import avda
from avda.errors import AvdaError, ConfigError

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_FAILED_ITEMS, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

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
OutPath = Annotated[Path, typer.Option("--out", "-o", help="Output path.")]
Seed = Annotated[int, typer.Option("--seed", help="Random seed.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]


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


def _split_list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _parse_shard(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    try:
        index, count = (int(v) for v in value.split("/"))
    except ValueError:
        raise ConfigError(f"--shard expects i/n (e.g. 0/4), got {value!r}") from None
    return index, count


# ------------------------------------------------------------------------------ demo
@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Working folder.")] = Path("avda-demo"),
    seed: Seed = 0,
    epochs: Annotated[int, typer.Option(help="Training epochs per head.")] = 30,
    weights: Annotated[
        Path | None, typer.Option(help="I3D RGB checkpoint (piergiaj rgb_imagenet.pt).")
    ] = None,
    audio_weights: Annotated[Path | None, typer.Option(help="VGGSound H.pth.tar.")] = None,
    workers: Annotated[int, typer.Option(help="Decoding worker processes.")] = 2,
    quiet: Quiet = False,
) -> None:
    """Run the whole pipeline on a built-in two-domain audio-visual dataset and print a table."""
    from avda.demo import run_demo

    result = run_demo(
        out,
        seed=seed,
        epochs=epochs,
        weights=weights,
        audio_weights=audio_weights,
        workers=workers,
        progress=not quiet,
    )
    typer.echo(f"\navda demo: source -> target, 4 actions, seed {seed} ({result.weights_note})\n")
    typer.echo(result.markdown)
    typer.echo(
        f"\nchance = 25.0%; written to {result.out / 'results.md'}; "
        f"wall time {result.seconds:.0f} s"
    )


# ------------------------------------------------------------------------------ manifest
@manifest_app.command("validate")
def manifest_validate(
    file: Annotated[Path, typer.Argument(help="Manifest CSV or Parquet.")],
    videos: Annotated[
        Path | None, typer.Option(help="Also check that every video exists here.")
    ] = None,
) -> None:
    """Check a manifest; report every problem at once with row numbers."""
    from avda.data_manifests import schema

    frame = schema.read(file, videos=videos)
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
    out: OutPath,
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
    unit: Annotated[str | None, typer.Option(help="charades-ego: segments or videos.")] = None,
    columns: Annotated[
        str | None, typer.Option(help="actorshift/generic: manifest_column=file_column,...")
    ] = None,
) -> None:
    """Turn a benchmark's annotation files into a manifest (and FILE.build.json)."""
    from avda.data_manifests import build_manifest

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
    manifest: ManifestPath,
    videos: VideosDir,
    out: OutPath,
    backbone: Annotated[str, typer.Option(help="Visual backbone: i3d, tbn, slowfast.")] = "i3d",
    modalities: Annotated[str, typer.Option(help="Comma list of rgb, flow, audio.")] = "rgb",
    weights: Annotated[Path | None, typer.Option(help="Visual backbone checkpoint.")] = None,
    audio_backbone: Annotated[str, typer.Option(help="Audio encoder.")] = "audio_resnet18",
    audio_weights: Annotated[Path | None, typer.Option(help="Audio encoder checkpoint.")] = None,
    recipe: Annotated[
        str, typer.Option(help="Sampling recipe (see docs/extraction.md).")
    ] = "mmsada",
    batch_size: Annotated[int, typer.Option(help="Clips per forward pass.")] = 16,
    workers: Annotated[int, typer.Option(help="Decoding worker processes.")] = 2,
    device: Annotated[
        str | None, typer.Option(help="cpu, cuda, cuda:1 (default: cuda if present).")
    ] = None,
    chunk_rows: Annotated[int, typer.Option(help="Segments per Zarr chunk.")] = 256,
    shard: Annotated[
        str | None, typer.Option(help="Process only shard i/n (chunk-aligned).")
    ] = None,
    retry_failed: Annotated[bool, typer.Option(help="Retry segments that failed before.")] = False,
    force: Annotated[bool, typer.Option(help="Replace a store built differently.")] = False,
    quiet: Quiet = False,
) -> None:
    """Decode videos, run backbones and write features into a Zarr cache (resumable)."""
    from avda.data_manifests import schema
    from avda.extract import runner, sampling

    frame = schema.read(manifest)
    specs = []
    for modality in _split_list(modalities):
        if modality == "audio":
            specs.append(runner.ModalitySpec("audio", audio_backbone, audio_weights))
        else:
            specs.append(runner.ModalitySpec(modality, backbone, weights))
    result = runner.extract(
        frame,
        videos=videos,
        out=out,
        recipe=sampling.get(recipe),
        modalities=specs,
        batch_size=batch_size,
        workers=workers,
        device=device,
        chunk_rows=chunk_rows,
        retry_failed=retry_failed,
        force=force,
        shard=_parse_shard(shard),
        progress=not quiet,
    )
    typer.echo(
        f"{out}: {result.done} done, {result.missing} missing input, {result.failed} failed "
        f"in {result.seconds:.1f} s"
    )
    if not result.ok:
        failures = out.parent / f"{out.name}.failures.csv"
        result.failures.to_csv(failures, index=False)
        typer.echo(
            f"failed segments are listed in {failures}; fix them and re-run with --retry-failed",
            err=True,
        )
        raise typer.Exit(EXIT_FAILED_ITEMS)


# ------------------------------------------------------------------------------ cache
@cache_app.command("info")
def cache_info(store: Annotated[Path, typer.Argument(help="Feature cache (.zarr).")]) -> None:
    """Summarise a feature cache: provenance, segments, modalities, extraction status."""
    from avda.cache import open_cache

    typer.echo(open_cache(store).summary())


# ------------------------------------------------------------------------------ train
@app.command("train")
def train_command(
    head: Annotated[str, typer.Option(help="Head name (source-only, dann, ...).")],
    cache: Annotated[Path, typer.Option(help="Feature cache (.zarr).")],
    source: Annotated[str, typer.Option(help="Source domain(s), comma separated.")],
    target: Annotated[str, typer.Option(help="Target domain(s), comma separated.")],
    out: OutPath,
    seed: Seed = 0,
    epochs: Annotated[int | None, typer.Option(help="Override the head's epochs.")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Config override key=value.")
    ] = None,
    device: Annotated[str | None, typer.Option(help="cpu or cuda.")] = None,
    quiet: Quiet = False,
) -> None:
    """Train an adaptation head on cached features; writes a resumable run directory."""
    import yaml

    from avda.train.loop import train

    overrides = {}
    for item in set_ or []:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        overrides[key.strip()] = yaml.safe_load(raw)
    if epochs is not None:
        overrides["epochs"] = epochs
    result = train(
        cache=cache,
        head=head,
        source=_split_list(source),
        target=_split_list(target),
        out=out,
        seed=seed,
        overrides=overrides,
        device=device,
        progress=not quiet,
    )
    state = "already complete" if result.skipped else "done"
    typer.echo(f"{out}: {state}")
    for key, value in sorted(result.metrics.items()):
        typer.echo(f"  {key:<32} {100 * value:6.2f}")


# ------------------------------------------------------------------------------ evaluate
@app.command()
def evaluate(
    runs: Annotated[list[Path], typer.Argument(help="Run directories.")],
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write OUT.md and OUT.csv.")
    ] = None,
) -> None:
    """Metrics of finished runs as a table (top-1 and mean class accuracy per split)."""
    from avda.evaluate import tables

    table = tables.results_table(runs)
    typer.echo(tables.to_markdown(table))
    if out is not None:
        for path in tables.write_tables(table, out):
            typer.echo(f"wrote {path}", err=True)


# ------------------------------------------------------------------------------ entry point
def main(argv: list[str] | None = None) -> int:
    """Console entry point: maps errors to exit codes and one-line messages."""
    debug = os.environ.get("AVDA_DEBUG", "") not in ("", "0")
    try:
        code = app(args=argv, standalone_mode=False)
        return int(code or 0)
    except typer.Abort:
        typer.echo("interrupted", err=True)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        return EXIT_INTERRUPTED
    except typer.Exit as exc:
        return int(exc.exit_code)
    except click_exceptions.ClickException as exc:
        exc.show()
        return EXIT_USAGE
    except AvdaError as exc:
        if debug:
            traceback.print_exc()
        typer.echo(f"error: {exc}", err=True)
        if not debug:
            typer.echo("(set AVDA_DEBUG=1 for the traceback)", err=True)
        return EXIT_ERROR


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
