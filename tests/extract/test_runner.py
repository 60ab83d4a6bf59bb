"""Extraction end to end on real mp4 files: failures, missing audio, resume after SIGKILL."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tests.extract.conftest import sigkill_mid_extraction

from avda.cache import Status, open_cache
from avda.errors import CacheError, ConfigError
from avda.extract import runner, sampling

RECIPE = sampling.get("demo")
MODALITIES = [runner.ModalitySpec("rgb", "i3d"), runner.ModalitySpec("audio", "audio_resnet18")]


def _extract(manifest, videos, out, **kwargs):
    options = dict(recipe=RECIPE, modalities=MODALITIES, workers=0, chunk_rows=4, progress=False)
    options.update(kwargs)
    return runner.extract(manifest, videos=videos, out=out, **options)


@pytest.fixture(scope="module")
def reference_store(demo_dataset, tmp_path_factory):
    """One uninterrupted extraction of the tiny demo dataset, shared by the tests."""
    root, manifest = demo_dataset
    out = tmp_path_factory.mktemp("ref") / "ref.zarr"
    result = _extract(manifest, root, out)
    assert result.ok and result.done == 2 * len(manifest)
    return out


def test_features_shapes_and_provenance(reference_store, demo_dataset):
    _, manifest = demo_dataset
    store = open_cache(reference_store)
    assert store.features("rgb").shape == (len(manifest), RECIPE.num_clips, 1024)
    assert store.features("audio").shape == (len(manifest), 1, 512)
    assert np.all(store.status("rgb") == Status.DONE)
    prov = store.provenance
    assert prov["recipe"]["name"] == "demo"
    assert prov["modalities"]["rgb"]["backbone"] == "i3d"
    assert prov["modalities"]["rgb"]["input_spec"]["value_range"] == [-1.0, 1.0]
    assert prov["modalities"]["audio"]["random_init_seed"] == 0
    assert store.segments["uid"].tolist() == manifest["uid"].tolist()
    # Different segments give different features (nothing constant or zero).
    rgb = store.load("rgb")
    assert np.abs(rgb).mean() > 0 and not np.allclose(rgb[0], rgb[1])


def test_corrupt_video_fails_its_segments_only(demo_dataset, tmp_path, media, caplog):
    root, manifest = demo_dataset
    videos = tmp_path / "videos"
    shutil.copytree(root / "videos", videos / "videos")
    broken = manifest["video_path"].iloc[0]
    (videos / broken).write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    # Plus one real video without an audio track.
    extra = manifest.iloc[[0]].copy()
    extra["uid"], extra["video_id"], extra["video_path"] = "noaudio", "demo", "demo.mp4"
    shutil.copy(media / "video" / "demo.mp4", videos / "demo.mp4")
    frame = pd.concat([manifest, extra], ignore_index=True)

    result = _extract(frame, videos, tmp_path / "c.zarr")
    bad = manifest["video_path"] == broken
    assert result.failed == 2 * int(bad.sum())  # rgb and audio of each segment of that video
    assert result.missing == 1
    store = open_cache(tmp_path / "c.zarr")
    status = store.status("rgb")
    assert np.all(status[: len(manifest)][bad.to_numpy()] == Status.FAILED)
    assert np.all(status[: len(manifest)][~bad.to_numpy()] == Status.DONE)
    assert store.status("audio")[-1] == Status.MISSING and status[-1] == Status.DONE
    assert "cannot" in store.errors("rgb")[0]
    assert set(result.failures["uid"]) == set(manifest["uid"][bad])
    with caplog.at_level("INFO", logger="avda.extract.runner"):  # a rerun counts what is there
        _extract(frame, videos, tmp_path / "c.zarr")
    n = int(bad.sum())
    assert f"rgb: nothing to do ({len(frame) - n} done, {n} failed (--retry-failed" in caplog.text
    assert f"audio: nothing to do ({len(frame) - n - 1} done, 1 missing input, {n} failed" in (
        caplog.text
    )


def test_a_manifest_of_other_videos_is_refused_in_one_line(demo_dataset, tmp_path):
    """None of the manifest's videos under --videos (UCF-HMDB's lists with a folder of other
    videos): one error before any segment is read, the store's rows left pending for the right
    folder. It was a warning per segment (3,209 lines) and a store of failed rows. A finished
    store whose videos were deleted since still has nothing to do."""
    root, manifest = demo_dataset
    other = tmp_path / "other"
    other.mkdir()
    first = other / manifest["video_path"].iloc[0]
    with pytest.raises(ConfigError) as refused:
        _extract(manifest, other, tmp_path / "c.zarr")
    message = str(refused.value)
    videos = manifest["video_path"].nunique()
    assert f"none of the {videos} video file(s) the manifest names is in {other} " in message
    assert f"(--videos; the first: {first})" in message and "\n" not in message
    assert "give --videos the folder they are in" in message
    store = open_cache(tmp_path / "c.zarr")
    assert np.all(store.status("rgb") == Status.PENDING)
    assert _extract(manifest, root, tmp_path / "c.zarr").ok  # the right folder resumes it
    assert _extract(manifest, other, tmp_path / "c.zarr").done == 2 * len(manifest)
    # one video there is enough to go on: the others' rows fail on their own
    some = tmp_path / "some"
    (some / first.relative_to(other)).parent.mkdir(parents=True)
    shutil.copy(root / first.relative_to(other), some / first.relative_to(other))
    _extract(manifest, some, tmp_path / "d.zarr")
    status = open_cache(tmp_path / "d.zarr").status("rgb")
    own = (manifest["video_path"] == manifest["video_path"].iloc[0]).to_numpy()
    assert np.all(status[own] == Status.DONE) and np.all(status[~own] == Status.FAILED)


def test_an_audio_folder_without_the_manifests_audio_files_is_refused_in_one_line(
    demo_dataset, tmp_path
):
    """--audio DIR holding none of the videos' audio files: one error before any segment is
    read, the rows left pending (it was a warning per segment and a store of failed rows);
    one file there is enough to go on (the others fail their own segments)."""
    root, manifest = demo_dataset
    audio = tmp_path / "wavs"
    audio.mkdir()
    (audio / "unrelated.wav").write_bytes(b"RIFF")
    spec = [runner.ModalitySpec("audio", "audio_resnet18")]
    with pytest.raises(ConfigError) as refused:
        _extract(manifest, root, tmp_path / "a.zarr", modalities=spec, audio=audio)
    message = str(refused.value)
    videos = manifest["video_id"].nunique()
    assert message.startswith(f"none of the {videos} video(s) the manifest names has an ")
    assert f"audio file in {audio} (--audio; the first: no audio file for video " in message
    assert "give --audio the folder they are in" in message and "\n" not in message
    assert np.all(open_cache(tmp_path / "a.zarr").status("audio") == Status.PENDING)


def test_mismatching_store_is_refused(reference_store, demo_dataset, tmp_path):
    root, manifest = demo_dataset
    copy = tmp_path / "copy.zarr"
    shutil.copytree(reference_store, copy)
    other = sampling.Recipe.from_dict({**RECIPE.to_dict(), "num_clips": 3, "name": "other"})
    with pytest.raises(CacheError, match="built differently.*num_clips") as info:
        _extract(manifest, root, copy, recipe=other)
    # A rerun with another recipe than the store's built-in one (the default, mmsada, when left
    # out) is told to give it, not only to replace the store or write another.
    assert "Use another -o, --recipe 'demo' to go on with it, or --force" in str(info.value)
    with pytest.raises(CacheError) as info:
        _extract(manifest, root, copy, recipe=sampling.get("mmsada"))
    assert "recipe.name: store has 'demo', this run asks for 'mmsada'" in str(info.value)
    assert str(info.value).endswith(
        ". Use another -o, --recipe 'demo' to go on with it, or --force to replace it with a "
        "new store"
    )
    from avda.api import _EXTRACT_KEYWORDS, _keywords

    assert _keywords(str(info.value), _EXTRACT_KEYWORDS).endswith(
        ". Use another out, recipe='demo' to go on with it, or force=True to replace it with a "
        "new store"
    )
    # Another manifest: the refusal says which rows, not only two checksums.
    edited = manifest.drop(index=[1]).copy()
    edited.loc[edited.index[0], "stop_sec"] = float(edited["stop_sec"].iloc[0]) + 0.5
    extra = edited.iloc[[-1]].assign(uid="new-one")
    edited = pd.concat([edited, extra], ignore_index=True)
    with pytest.raises(CacheError) as info:
        _extract(edited, root, copy)
    message = str(info.value)
    first, gone = manifest["uid"].iloc[0], manifest["uid"].iloc[1]
    assert "the manifest's rows differ: 1 rows added (new-one); " in message
    assert f"1 removed ({gone}); 1 changed ({first} stop_sec " in message
    with pytest.raises(CacheError) as info:  # the recipe alone would not make it fit
        _extract(edited, root, copy, recipe=sampling.get("mmsada"))
    assert str(info.value).endswith(". Use another -o, or --force to replace it with a new store")
    from avda.extract.runner import manifest_difference

    same = manifest.copy()
    same["verb_class"] = same["verb_class"].astype(float)  # 1.0 is 1, as the store reads it
    assert (
        manifest_difference(manifest, same)
        == "the manifest's rows differ: in columns the store lacks"
    )
    # --force moves the old store aside and starts a new one.
    _extract(manifest, root, copy, recipe=other, force=True, modalities=MODALITIES[:1])
    assert open_cache(copy).features("rgb").shape[1] == 3
    assert list(tmp_path.glob("copy.zarr.replaced-*"))


def test_precision_is_recorded_and_never_mixed(reference_store, demo_dataset, tmp_path):
    root, manifest = demo_dataset
    # One segment: a CPU without bfloat16 instructions runs I3D in bfloat16 ~50x slower than
    # in float32 (all 18 segments took 329 s of a 29-minute CI on a 2-core AMD EPYC VM).
    manifest = manifest.head(1)
    store = tmp_path / "p.zarr"
    rgb = MODALITIES[:1]
    _extract(manifest, root, store, modalities=rgb, prepare_only=True)
    assert "precision" not in open_cache(store).modality_info("rgb")  # set by who extracts
    _extract(manifest, root, store, modalities=rgb, precision="float32")
    assert open_cache(store).modality_info("rgb")["precision"] == "float32"
    assert "weights=random init float32: done" in open_cache(store).summary()  # avda cache info
    float32 = open_cache(store).load("rgb")
    with pytest.raises(CacheError, match=r"extracted in float32.*--precision float32.*--force"):
        _extract(manifest, root, store, modalities=rgb, precision="bfloat16")
    assert np.array_equal(open_cache(store).load("rgb"), float32)  # nothing touched
    result = _extract(manifest, root, store, modalities=rgb, precision="bfloat16", force=True)
    assert result.ok and result.done == len(manifest)
    cache = open_cache(store)
    assert cache.modality_info("rgb")["precision"] == "bfloat16"
    bfloat16 = cache.load("rgb")
    assert not any(np.array_equal(b, f) for b, f in zip(bfloat16, float32, strict=True))
    np.testing.assert_allclose(bfloat16, float32, rtol=0.1, atol=0.05 * np.abs(float32).max())


def test_a_shard_never_overwrites_the_precision_another_shard_recorded(demo_dataset, tmp_path):
    # Shards started side by side with other --precision: the second found no done row yet,
    # overwrote the record, and the store held bfloat16 and float32 rows as "float32"
    from avda.extract.runner import check_precision

    root, manifest = demo_dataset
    store_path = tmp_path / "s.zarr"
    _extract(manifest.head(2), root, store_path, modalities=MODALITIES[:1], prepare_only=True)
    store = open_cache(store_path, mode="r+")
    check_precision(store, "rgb", "bfloat16", device="cpu", force=False, sharded=True)
    assert not (store.status("rgb") == Status.DONE).any()  # shard 0 has not finished a chunk
    with pytest.raises(CacheError, match=r"records rgb in bfloat16 \(another shard may be "
                       r"computing it\); this shard would compute float32 on cpu\. Pass "
                       r"--precision bfloat16 to every shard"):  # fmt: skip
        check_precision(store, "rgb", "float32", device="cpu", force=False, sharded=True)
    assert open_cache(store_path).modality_info("rgb")["precision"] == "bfloat16"
    check_precision(store, "rgb", "bfloat16", device="cpu", force=False, sharded=True)


def test_an_unsharded_run_removes_unfinished_writes_a_shard_leaves_them(demo_dataset, tmp_path):
    """Zarr's temporary file of a write a killed run never finished: the next unsharded run
    (the store's only writer) deletes it; a shard does not (another shard's write in progress
    looks the same)."""
    root, manifest = demo_dataset
    store_path = tmp_path / "s.zarr"
    _extract(manifest.head(2), root, store_path, modalities=MODALITIES[:1], prepare_only=True)
    leftover = store_path / "status/rgb/c/0.0123456789abcdef0123456789abcdef.partial"
    leftover.parent.mkdir(parents=True, exist_ok=True)
    leftover.write_bytes(b"half")
    keep = dict(modalities=MODALITIES[:1], prepare_only=True)
    _extract(manifest.head(2), root, store_path, shard=(0, 1), **keep)
    assert leftover.exists()
    _extract(manifest.head(2), root, store_path, **keep)
    assert not leftover.exists()


def test_sigkill_then_rerun_equals_an_uninterrupted_run(reference_store, demo_dataset, tmp_path):
    root, manifest = demo_dataset
    manifest_path = tmp_path / "manifest.csv"
    manifest.to_csv(manifest_path, index=False)
    out = tmp_path / "killed.zarr"
    # One segment per forward pass: statuses advance chunk by chunk, so the kill lands mid-run
    # even on a fast machine (and batches differ from the reference run's).
    command = sigkill_mid_extraction(
        manifest_path, root, out, modalities="rgb,audio", batch_size=2, least=2
    )
    assert open_cache(out).status("rgb").sum() < len(manifest)

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    resumed, reference = open_cache(out), open_cache(reference_store)
    for modality in ("rgb", "audio"):
        assert np.all(resumed.status(modality) == Status.DONE)
        # Equal up to float16 rounding: a resumed run batches other segments together, and
        # CPU convolution kernels may round differently for another batch composition.
        np.testing.assert_allclose(
            resumed.load(modality), reference.load(modality), rtol=2e-3, atol=2e-3
        )


def test_a_relative_weights_path_is_recorded_absolute(tmp_path, monkeypatch):
    # `--weights serve/rgb.pt` was recorded as given, `--weights NAME` as the fetched file's
    # absolute path: a relative one names nothing once the cache is read from elsewhere
    from avda.extract import backbones
    from avda.extract.inputs import InputPaths

    monkeypatch.chdir(tmp_path)
    (tmp_path / "serve").mkdir()
    (tmp_path / "serve" / "w.pt").write_bytes(b"weights")
    spec = runner.ModalitySpec("audio", "audio_resnet18", Path("serve/w.pt"))
    model = backbones.create("audio_resnet18", modality="audio")
    entry = runner._modality_entry(spec, model, InputPaths(videos=tmp_path))
    assert entry["weights"] == str(tmp_path / "serve" / "w.pt")
    assert entry["weights_sha256"] == hashlib.sha256(b"weights").hexdigest()


def test_an_extraction_records_finishing_so_verify_finds_finished_rows_lost(demo_dataset, tmp_path):
    """A copy that dropped a chunk's status and features files: the rows read as never
    extracted, unless the store records that its extraction finished every row."""
    root, manifest = demo_dataset
    out = tmp_path / "s.zarr"
    rgb = MODALITIES[:1]
    assert len(manifest) > 4  # chunks of 4 rows: shard 1 has rows 4-7
    _extract(manifest, root, out, modalities=rgb, shard=(1, 2))
    assert open_cache(out).finished_rows("rgb") == 0  # shard 0's rows are pending
    _extract(manifest, root, out, modalities=rgb, shard=(0, 2))  # the last shard records it
    assert open_cache(out).finished_rows("rgb") == len(manifest)
    for file in ("status/rgb/c/1", "features/rgb/c/1/0/0"):
        (out / file).unlink()
    problems = open_cache(out).verify()
    assert problems[["kind", "file", "rows"]].values.tolist() == [
        ["missing", "status/rgb/c/1", [4, 5, 6, 7]]
    ]
    assert "though the extraction finished its first" in problems["message"].iloc[0]
    result = _extract(manifest, root, out, modalities=rgb)  # the fix: the same extract
    assert result.done == len(manifest) and open_cache(out).verify().empty
