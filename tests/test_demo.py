"""`avda demo` end to end: real media -> manifest -> extract -> train -> evaluate -> table."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest

from avda import cli, runs
from avda.demo import HEADS, run_demo
from tests.conftest import kill_while_writing_csv


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("small") / "demo"
    result = run_demo(
        out, epochs=3, workers=0, videos_per_domain=3, test_videos_per_domain=1, progress=False
    )
    return out, result


def test_small_demo_runs_every_stage(small_demo):
    out, result = small_demo
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


def test_unified_example_runs_on_the_demo_cache_and_names_its_protocol(small_demo, tmp_path):
    """examples/unified-demo.yaml, as its comment says to run it, on the cache `avda demo`
    extracted from real media: a LocalCluster sweep whose table names the protocol."""
    import yaml

    from avda import sweep
    from avda.evaluate import tables

    demo, _ = small_demo
    example = Path(__file__).resolve().parents[1] / "examples" / "unified-demo.yaml"
    data = yaml.safe_load(example.read_text())
    assert data["cluster"]["kind"] == "local"
    data.update(
        cache=str(demo / "cache.zarr"),
        out=str(tmp_path / "runs"),
        heads=[{"name": head, "epochs": 9} for head in data["heads"]],
    )
    spec = tmp_path / "unified-demo.yaml"
    spec.write_text(yaml.safe_dump(data))
    summary = sweep.run_sweep(sweep.load_spec(spec), progress=False)
    assert summary.ok, summary.text()
    text, _ = tables.evaluate_runs([tmp_path / "runs"], layout="auto")
    assert "protocol unified" in text
    for method in data["heads"]:
        assert f"| {method['name']} |" in text


def test_weights_note_advises_only_the_backbones_left_random():
    from avda.demo import weights_note

    # audio weights given, I3D random: the note said "(random init ...; `avda weights fetch
    # piergiaj_rgb_imagenet vggsound_H`" right after the given audio file, as if it were random
    note = weights_note(None, "/w/H.pth.tar")
    assert "audio ResNet-18 /w/H.pth.tar (I3D random init" in note
    assert "fetch piergiaj_rgb_imagenet`" in note and "vggsound_H" not in note
    assert "--audio-weights" not in note
    note = weights_note("/w/rgb_imagenet.pt", None)
    assert "(audio ResNet-18 random init" in note and "fetch vggsound_H`" in note
    assert "piergiaj" not in note
    both = weights_note(None, None)
    assert "I3D and audio ResNet-18 random init" in both
    assert "fetch piergiaj_rgb_imagenet vggsound_H`" in both and "--weights/--audio-weights" in both
    assert "random" not in weights_note("/w/a.pt", "/w/H.pth.tar")


def test_a_demo_killed_while_writing_its_manifest_leaves_none(tmp_path):
    """SIGKILL the dataset generation half-way through writing manifest.csv: no manifest.csv
    (a half one made `avda demo` reuse the folder with fewer rows, which validate); the
    rerun writes it whole."""
    from avda.data_manifests import demo, schema

    root = tmp_path / "demo"
    kill_while_writing_csv(
        "from avda.data_manifests import demo\n"
        f"demo.generate({str(root)!r}, videos_per_domain=1, test_videos_per_domain=0, "
        "progress=False)\n",
        tmp_path / "half-written",
    )
    assert (root / "videos").is_dir() and not (root / "manifest.csv").exists()
    manifest = demo.generate(root, videos_per_domain=1, test_videos_per_domain=0, progress=False)
    assert len(schema.read(root / "manifest.csv")) == len(manifest) == 6
    assert sorted(p.name for p in root.iterdir()) == ["manifest.csv", "videos"]
