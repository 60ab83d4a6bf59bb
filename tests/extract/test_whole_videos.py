"""``avda extract --videos DIR|LIST`` without a manifest: one segment per whole video."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import av
import numpy as np
import pytest

from avda import cli
from avda.cache import Status, open_cache
from avda.data_manifests import whole_videos
from avda.errors import ConfigError, MediaError


def run(capsys, *args):
    code = cli.main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _header_seconds(path) -> float:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return float(stream.duration * stream.time_base)


@pytest.fixture()
def folder(tmp_path, media):
    """Real videos in a folder with a subfolder, and a same-stem pair (a.mp4, a.avi)."""
    root = tmp_path / "videos"
    (root / "kitchen").mkdir(parents=True)
    shutil.copy(media / "video" / "demo.mp4", root / "a.mp4")
    shutil.copy(media / "video" / "test.avi", root / "a.avi")
    shutil.copy(media / "video" / "v_GGSY1Qvo990.mp4", root / "kitchen" / "P01_01.mp4")
    (root / "notes.txt").write_text("not a video suffix: ignored")
    (root / ".hidden.mp4").write_text("hidden files are ignored")
    return root


def test_a_folder_makes_one_segment_per_whole_video(folder, media):
    frame, root = whole_videos.manifest(folder)
    assert root == folder
    assert frame["uid"].tolist() == ["a.avi", "a.mp4", "kitchen__P01_01"]
    assert frame["video_id"].tolist() == frame["uid"].tolist()
    assert frame["video_path"].tolist() == ["a.avi", "a.mp4", "kitchen/P01_01.mp4"]
    assert set(frame["domain"]) == {"all"} and set(frame["split"]) == {"test"}
    assert (frame["start_sec"] == 0).all()
    expected = [_header_seconds(folder / p) for p in frame["video_path"]]
    np.testing.assert_allclose(frame["stop_sec"], expected)
    np.testing.assert_allclose(frame["stop_sec"], [6.56, 10.0, 18.0438], atol=1e-3)
    assert whole_videos._ids(
        [Path("/d/a/x.mp4"), Path("/d/b/x.mp4"), Path("/d/y.mp4"), Path("/d/y.avi")],
        shortest=True,
    ) == ["a__x", "b__x", "y.mp4", "y.avi"]
    assert whole_videos._ids([Path("a__b.mp4"), Path("a/b.mp4")]) == ["a__b~1", "a__b~2"]
    trained, _ = whole_videos.manifest(folder, domain="D2", split="train")
    assert set(trained["domain"]) == {"D2"} and set(trained["split"]) == {"train"}


def test_cli_extracts_a_list_of_videos_without_a_manifest(tmp_path, media, capsys):
    listing = tmp_path / "lists" / "videos.txt"
    listing.parent.mkdir()
    os.symlink(media / "video" / "demo.mp4", tmp_path / "lists" / "clip.mp4")
    listing.write_text(
        f"# two videos: one relative to this file, one absolute\nclip.mp4\n\n"
        f"{media / 'video' / 'test.avi'}  # UCF-style\n"
    )
    store_path = tmp_path / "c.zarr"
    code, out, err = run(
        capsys,
        "extract",
        "--videos",
        str(listing),
        "-o",
        str(store_path),
        "--recipe",
        "demo",
        "--modalities",
        "rgb,audio",
        "--workers",
        "0",
        "--split",
        "train",
        "--quiet",
    )
    assert code == 0, err
    # counts of (segment, modality) pairs, and the summary says so (a new user read "24 done"
    # for 12 segments as a miscount)
    assert "3 done, 1 missing input, 0 failed (2 segments x 2 modalities) in" in out
    assert (
        "audio: 1 segments of the store have no input: " in err
        and "clip.mp4 has no audio track" in err
    )
    store = open_cache(store_path)
    segments = store.segments
    assert sorted(segments["uid"]) == ["clip", "test"]
    assert set(segments["split"]) == {"train"} and set(segments["domain"]) == {"all"}
    assert (store.status("rgb") == Status.DONE).all()
    # demo.mp4 has no audio track: its audio is missing, test.avi's is done
    audio = dict(zip(segments["uid"], store.status("audio"), strict=True))
    assert audio == {"clip": Status.MISSING, "test": Status.DONE}
    features = store.features("rgb")
    assert features.shape[0] == 2 and np.isfinite(features).all()


def test_a_file_that_is_not_a_video_is_one_line_before_any_work(folder, tmp_path, capsys):
    (folder / "broken.mp4").write_bytes(b"not a video at all")
    code, _, err = run(
        capsys, "extract", "--videos", str(folder), "-o", str(tmp_path / "c.zarr"), "--quiet"
    )
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert "broken.mp4 cannot be opened as a video" in err and "remove them" in err
    assert not (tmp_path / "c.zarr").exists()
    # From a list file the fix is to edit the list, not to write one.
    listing = tmp_path / "list.txt"
    listing.write_text(f"{folder / 'broken.mp4'}\n")
    with pytest.raises(
        MediaError, match=r"broken.mp4 cannot be opened.*; remove them from the list$"
    ):
        whole_videos.manifest(listing)


def test_bad_inputs_are_one_line(tmp_path, folder, capsys):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no video files below it"):
        whole_videos.manifest(tmp_path / "empty")
    listing = tmp_path / "list.txt"
    listing.write_text("a.mp4\nmissing.mp4\n")
    with pytest.raises(ConfigError, match=r"lists videos that do not exist \(line 1: a.mp4; "):
        whole_videos.manifest(listing)
    with pytest.raises(ConfigError, match="--split 'training': expected one of train, val, test"):
        whole_videos.manifest(folder, split="training")
    with pytest.raises(ConfigError, match="--domain 'a/b' contains '/'"):
        whole_videos.manifest(folder, domain="a/b")
    with pytest.raises(MediaError):
        whole_videos.duration(tmp_path / "list.txt")
    code, _, err = run(capsys, "extract", "-o", str(tmp_path / "c.zarr"))
    assert code == 2 and "--videos' alone: one segment per whole video" in err
    manifest = tmp_path / "m.csv"
    manifest.write_text("uid,video_id,domain,split,start_sec,stop_sec\nu,a,D1,train,0,1\n")
    code, _, err = run(
        capsys, "extract", "-m", str(manifest), "--videos", str(folder), "--domain", "D1",
        "-o", str(tmp_path / "c.zarr"),
    )  # fmt: skip
    assert code == 1 and "--domain/--split name the segments of whole videos" in err


def test_unlabelled_target_videos_join_a_labelled_source_in_one_trainable_cache(folder, tmp_path):
    # docs/extraction.md said `--split train --domain D2` "makes unlabelled videos a target
    # domain for avda train", but a cache holds one manifest and a second extract into it is
    # refused: the documented way is one manifest, the target's paths relative to the
    # source's --videos folder (root=)
    import pandas as pd
    from tests.extract.conftest import tiny

    from avda.data_manifests import schema
    from avda.extract import runner
    from avda.train.loop import train

    target, _ = whole_videos.manifest(folder / "kitchen", domain="D2", split="train", root=folder)
    assert target["video_path"].tolist() == ["kitchen/P01_01.mp4"]
    assert target["uid"].tolist() == ["P01_01"]
    source = pd.DataFrame(
        {"uid": ["s0", "s1", "s2", "s3"], "video_id": ["a"] * 4, "domain": ["D1"] * 4,
         "split": ["train", "train", "test", "test"], "start_sec": [0.0, 3.0, 5.0, 7.0],
         "stop_sec": [2.0, 5.0, 7.0, 9.0], "verb_class": [0, 1, 0, 1],
         "video_path": ["a.mp4"] * 4}
    )  # fmt: skip
    both = pd.concat([source, target], ignore_index=True)
    both.to_csv(tmp_path / "both.csv", index=False)
    result = runner.extract(
        schema.read(tmp_path / "both.csv"),
        videos=folder,
        out=tmp_path / "c.zarr",
        recipe=tiny("demo", resize_shorter=32, crop_size=32),
        modalities=[runner.ModalitySpec("rgb", "i3d")],
        workers=0,
        progress=False,
    )
    assert result.ok and result.done == 5, result.failures
    store = open_cache(tmp_path / "c.zarr")
    assert store.status("rgb").tolist() == [Status.DONE] * 5
    run = train(cache=tmp_path / "c.zarr", head="dann", source=["D1"], target=["D2"],
                out=tmp_path / "run", seed=0, overrides={"epochs": 1}, progress=False)  # fmt: skip
    assert (run.run / "config.yaml").exists()
    with pytest.raises(ConfigError, match="does not hold the videos of"):
        whole_videos.manifest(folder / "kitchen", root=tmp_path / "elsewhere")
