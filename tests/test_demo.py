"""`avda demo` end to end: real media -> manifest -> extract -> train -> evaluate -> table."""

from __future__ import annotations

import av
import numpy as np
import pandas as pd
import pytest

from avda import cli, runs
from avda.demo import HEADS, run_demo


def test_small_demo_runs_every_stage(tmp_path):
    result = run_demo(
        tmp_path / "demo",
        epochs=3,
        workers=0,
        videos_per_domain=3,
        test_videos_per_domain=1,
        progress=False,
    )
    out = tmp_path / "demo"
    manifest = pd.read_csv(out / "manifest.csv")
    assert set(manifest["domain"]) == {"source", "target"}
    assert len(list((out / "videos").glob("*.mp4"))) == 6
    # The demo's audio is stereo with different channels, so it exercises the channel mix.
    video = sorted((out / "videos").glob("*.mp4"))[0]
    with av.open(str(video)) as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.channels == 2
        left, right = np.concatenate([f.to_ndarray() for f in container.decode(stream)], axis=1)
    assert np.abs(left - right).mean() > 0.05
    assert (out / "cache.zarr").exists()
    for head in HEADS:
        assert runs.is_complete(out / "runs" / f"{head}-seed0")
    assert list(result.table["head"]) == list(HEADS)
    assert "target_test top1" in result.table.columns
    assert "random init" in result.weights_note
    assert (out / "results.md").read_text().startswith("| head |")


@pytest.mark.slow
def test_full_demo_source_only_beats_chance_on_target(tmp_path, capsys):
    code = cli.main(["demo", "-o", str(tmp_path / "demo"), "--quiet"])
    out, _ = capsys.readouterr()
    assert code == 0 and "| source-only |" in out
    table = pd.read_csv(tmp_path / "demo" / "results.csv")
    source_only = table[table["head"] == "source-only"].iloc[0]
    assert source_only["target_test top1"] > 40.0  # chance is 25 %
