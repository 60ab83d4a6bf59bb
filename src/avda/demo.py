"""``avda demo``: the whole two-stage pipeline on the built-in audio-visual dataset.

generate media -> manifest (validated) -> extract (I3D RGB + VGGSound audio ResNet-18, random
init unless weights are given) -> train source-only and DANN -> evaluate -> results table.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import pandas as pd

from avda.data_manifests import demo as demo_data
from avda.data_manifests import schema as manifest_schema
from avda.errors import ConfigError
from avda.evaluate import tables
from avda.extract import runner, sampling
from avda.train.loop import train

log = logging.getLogger(__name__)

HEADS = ("source-only", "dann", "adabn", "mmd")


@dataclasses.dataclass
class DemoResult:
    table: pd.DataFrame
    markdown: str
    seconds: float
    out: Path
    weights_note: str
    summary: str = ""


def run_demo(
    out: str | Path = "avda-demo",
    *,
    seed: int = 0,
    epochs: int | None = None,
    weights: str | Path | None = None,
    audio_weights: str | Path | None = None,
    workers: int = 2,
    videos_per_domain: int = 16,
    test_videos_per_domain: int = 6,
    progress: bool = True,
) -> DemoResult:
    began = time.perf_counter()
    for option, given in (("--weights", weights), ("--audio-weights", audio_weights)):
        if given is not None and not Path(given).is_file():  # before the dataset is made
            raise ConfigError(
                f"{option} {given}: no such checkpoint file; give the path of a downloaded "
                "checkpoint (published files by name: `avda weights list`, docs/weights.md)"
            )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / "manifest.csv"
    if manifest_path.exists() and (out / "videos").exists():
        log.info("reusing the generated dataset in %s", out)
    else:
        demo_data.generate(
            out,
            seed=seed,
            videos_per_domain=videos_per_domain,
            test_videos_per_domain=test_videos_per_domain,
            progress=progress,
        )
    manifest = manifest_schema.read(manifest_path, videos=out)

    recipe = sampling.get("demo")
    modalities = [
        runner.ModalitySpec("rgb", "i3d", Path(weights) if weights else None),
        runner.ModalitySpec(
            "audio", "audio_resnet18", Path(audio_weights) if audio_weights else None
        ),
    ]
    result = runner.extract(
        manifest,
        videos=out,
        out=out / "cache.zarr",
        recipe=recipe,
        modalities=modalities,
        batch_size=16,
        workers=workers,
        progress=progress,
    )
    if not result.ok:
        log.warning("%d segment(s) failed to extract: see `avda cache info`", result.failed)

    run_dirs = []
    for head in HEADS:
        run = out / "runs" / f"{head}-seed{seed}"
        train(
            cache=out / "cache.zarr",
            head=head,
            source=["source"],
            target=["target"],
            out=run,
            seed=seed,
            # Each head's recipe (its number of optimiser steps) unless epochs are given.
            overrides={"standardize": True, **({"epochs": epochs} if epochs else {})},
            progress=progress,
        )
        run_dirs.append(run)
    table = tables.results_table(run_dirs)
    columns = ["head"] + [
        c for c in table.columns if c.endswith("/verb/top1") or c.endswith("/verb/mca")
    ]
    table = table[columns].rename(columns=lambda c: c.replace("/verb/", " "))
    note = weights_note(weights, audio_weights)
    markdown = tables.to_markdown(table)
    tables.write_tables(table, out / "results")
    return DemoResult(
        table, markdown, time.perf_counter() - began, out, note, adaptation_summary(table)
    )


def weights_note(weights: str | Path | None, audio_weights: str | Path | None) -> str:
    """Which checkpoints the demo used; for a backbone left randomly initialised, how to give
    it real weights (only the missing ones: a given file is not advised to be fetched)."""
    note = (
        "weights: I3D "
        + (str(weights) if weights else "random init")
        + ", audio ResNet-18 "
        + (str(audio_weights) if audio_weights else "random init")
    )
    missing = [
        (what, name, option)
        for what, name, option, given in (
            ("I3D", "piergiaj_rgb_imagenet", "--weights", weights),
            ("audio ResNet-18", "vggsound_H", "--audio-weights", audio_weights),
        )
        if not given
    ]
    if missing:
        random = " and ".join(what for what, _, _ in missing)
        names = " ".join(name for _, name, _ in missing)
        options = "/".join(option for _, _, option in missing)
        note += (
            f" ({random} random init: {'their' if len(missing) > 1 else 'its'} features are "
            f"without meaning; `avda weights fetch {names}`, then pass "
            f"{'them' if len(missing) > 1 else 'it'} as {options} to use real checkpoints)"
        )
    return note


def adaptation_summary(table: pd.DataFrame, column: str = "target_test top1") -> str:
    """One honest sentence: which heads beat source-only on the target, by how much."""
    if column not in table.columns or "source-only" not in set(table["head"]):
        return ""
    scores = dict(zip(table["head"], table[column], strict=True))
    baseline = scores.pop("source-only")
    better = {h: v - baseline for h, v in scores.items() if v > baseline}
    if not better:
        return (
            f"no adaptation head beats source-only ({baseline:.1f}%) on the target here: "
            "adaptation did not help on this run"
        )
    gains = ", ".join(f"{h} +{d:.1f}" for h, d in sorted(better.items(), key=lambda i: -i[1]))
    rest = [h for h in scores if h not in better]
    tail = f"; {', '.join(rest)} did not" if rest else ""
    return f"target top-1 over source-only ({baseline:.1f}%): {gains} points{tail}"
