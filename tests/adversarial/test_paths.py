"""Paths built from data stay inside their output folder (issue 18, item 4; docs/security.md).

Traversal and absolute ids are refused by the manifest check and again where ``avda flow``
builds its folders; nothing is written or deleted outside ``-o``; a symbolic link inside an
output folder does not redirect writes; ``extract -o`` does not write into a folder that is not
an avda cache.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from avda.errors import ConfigError
from tests.adversarial._cli import one_line, run
from tests.conftest import make_feature_cache

HEADER = "uid,video_id,domain,split,start_sec,stop_sec"


def snapshot(root: Path) -> dict[str, bytes | str]:
    """Every file under ``root`` (links not followed) with its content."""
    files: dict[str, bytes | str] = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            files[str(path.relative_to(root))] = f"-> {path.readlink()}"
        elif path.is_file():
            files[str(path.relative_to(root))] = path.read_bytes()
    return files


@pytest.fixture
def tiny_video(tmp_path_factory) -> Path:
    """A folder with ``clip.mp4``: 3 small frames moving right."""
    from avda.data_manifests.demo import write_video

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)
    frames = np.stack([np.roll(image, 2 * t, axis=1) for t in range(3)])
    root = tmp_path_factory.mktemp("video")
    write_video(root / "clip.mp4", frames, fps=10)
    return root


def flow_manifest(video_id: str) -> pd.DataFrame:
    row = {
        "uid": "u0",
        "video_id": video_id,
        "domain": "d",
        "split": "train",
        "start_sec": 0.0,
        "stop_sec": 0.2,
        "video_path": "clip.mp4",
    }
    return pd.DataFrame([row])


# ------------------------------------------------------------------------------ manifests
@pytest.mark.parametrize(
    ("column", "value", "fragment"),
    [
        ("video_id", "../../x", "'../../x' contains '/'"),
        ("video_id", "/etc/x", "'/etc/x' contains '/'"),
        ("video_id", "..", "'..' is not a name"),
        ("video_id", "a\\b", "contains '\\'"),
        ("domain", "../D1", "'../D1' contains '/'"),
        ("participant_id", "../P01", "'../P01' contains '/'"),
        ("video_path", "/etc/passwd", "is absolute"),
        ("video_path", "../../x.mp4", "climbs out of its folder"),
    ],
)
def test_manifest_validate_refuses_ids_that_are_not_one_name(
    capsys, tmp_path, monkeypatch, column, value, fragment
):
    monkeypatch.delenv("AVDA_DEBUG", raising=False)
    row = {"uid": "a", "video_id": "v", "domain": "D1", "split": "train"}
    row |= {"start_sec": 0, "stop_sec": 1, column: value}
    path = tmp_path / "m.csv"
    pd.DataFrame([row]).to_csv(path, index=False)
    code, _, err = run(capsys, "manifest", "validate", path)
    message = one_line(err)
    assert code == 1
    assert f"row 2 [{column}]" in message and fragment in message, message


def test_the_usual_ids_and_video_paths_stay_valid(tmp_path):
    from avda.data_manifests import schema

    frame = pd.DataFrame(
        [
            {"uid": "P01_01_0", "video_id": "P01_01", "domain": "D1", "split": "train",
             "start_sec": 0, "stop_sec": 1, "participant_id": "P01",
             "video_path": "P01/videos/P01_01.MP4"},
            {"uid": "x y", "video_id": "v_ApplyEyeMakeup_g08_c01", "domain": "ucf 101",
             "split": "test", "start_sec": 0, "stop_sec": 1, "participant_id": "",
             "video_path": "./a/b..c.avi"},
        ]
    )  # fmt: skip
    assert schema.find_problems(frame) == []


# ------------------------------------------------------------------------------ avda flow
@pytest.mark.parametrize("kind", ["traversal", "absolute"])
def test_flow_writes_nothing_outside_out_for_an_escaping_id(tiny_video, tmp_path, kind):
    """compute_flow called with an unvalidated frame (a library user): the id is refused there,
    the video fails, and nothing appears outside -o."""
    pytest.importorskip("cv2")
    from avda.extract import flow

    out = tmp_path / "work" / "out"
    out.mkdir(parents=True)
    victim = tmp_path / "victim"
    video_id = "../../victim" if kind == "traversal" else str(victim)
    before = snapshot(tmp_path)
    result = flow.compute_flow(
        flow_manifest(video_id),
        out=out,
        videos=tiny_video,
        options=flow.FlowOptions(shorter_side=48),
        progress=False,
    )
    assert not result.ok and result.failures[0][0] == video_id
    assert "an id must be one name" in result.failures[0][1]
    assert not victim.exists()
    after = snapshot(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith("work/out/")} == before


def test_flow_force_deletes_no_jpeg_outside_out(tiny_video, tmp_path):
    """--force recomputes folders made with other settings by deleting their JPEGs: an id
    pointing at someone else's folder must not get them deleted."""
    pytest.importorskip("cv2")
    from avda.extract import flow

    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "photos"
    for component in ("u", "v"):
        (victim / component).mkdir(parents=True)
        (victim / component / "frame_0000000001.jpg").write_bytes(b"precious")
    (victim / "flow.json").write_text(json.dumps({"method": "raft", "stride": 9}))
    before = snapshot(victim)
    for video_id in ("../photos", str(victim)):
        result = flow.compute_flow(
            flow_manifest(video_id),
            out=out,
            videos=tiny_video,
            options=flow.FlowOptions(shorter_side=48),
            force=True,
            progress=False,
        )
        assert not result.ok
    assert snapshot(victim) == before


def test_flow_cli_refuses_the_manifest_and_writes_nothing(capsys, tiny_video, tmp_path):
    manifest = tmp_path / "m.csv"
    flow_manifest("../../escape").to_csv(manifest, index=False)
    out = tmp_path / "a" / "b" / "out"
    before = snapshot(tmp_path)
    code, _, err = run(capsys, "flow", "-m", manifest, "-o", out, "--videos", tiny_video)
    assert code == 1
    assert "'../../escape' contains '/'" in one_line(err)
    assert not (tmp_path / "escape").exists()
    assert {k: v for k, v in snapshot(tmp_path).items() if k in before} == before


def test_flow_does_not_follow_a_link_out_of_out(tiny_video, tmp_path):
    pytest.importorskip("cv2")
    from avda.extract import flow

    out = tmp_path / "out"
    out.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (out / "clip").symlink_to(elsewhere, target_is_directory=True)
    result = flow.compute_flow(
        flow_manifest("clip"),
        out=out,
        videos=tiny_video,
        options=flow.FlowOptions(shorter_side=48),
        progress=False,
    )
    assert not result.ok and "symbolic link" in result.failures[0][1]
    assert list(elsewhere.iterdir()) == []
    # a link one level down (the u component folder) is refused too
    (out / "clip").unlink()
    (out / "clip").mkdir()
    (out / "clip" / "u").symlink_to(elsewhere, target_is_directory=True)
    result = flow.compute_flow(
        flow_manifest("clip"),
        out=out,
        videos=tiny_video,
        options=flow.FlowOptions(shorter_side=48),
        progress=False,
    )
    assert not result.ok and "symbolic link" in result.failures[0][1]
    assert list(elsewhere.iterdir()) == []


def test_flow_still_writes_an_ordinary_id(tiny_video, tmp_path):
    pytest.importorskip("cv2")
    from avda.extract import flow

    result = flow.compute_flow(
        flow_manifest("clip"),
        out=tmp_path / "out",
        videos=tiny_video,
        options=flow.FlowOptions(shorter_side=48),
        progress=False,
    )
    assert result.ok and result.computed == 2
    assert (tmp_path / "out" / "clip" / "u" / "frame_0000000002.jpg").is_file()


# ------------------------------------------------------------------------------ caches
def test_a_link_inside_a_cache_does_not_redirect_writes(capsys, tmp_path, monkeypatch):
    """A cache whose features/ folder is a link to elsewhere: avda cluster (which writes
    clusters into the store) refuses it and writes nothing there."""
    monkeypatch.delenv("AVDA_DEBUG", raising=False)
    store = tmp_path / "c.zarr"
    make_feature_cache(store, per_class=2)
    elsewhere = tmp_path / "elsewhere"
    (store / "status").rename(elsewhere)
    (store / "status").symlink_to(elsewhere, target_is_directory=True)
    before = snapshot(elsewhere)
    code, _, err = run(capsys, "cluster", store, "--modality", "audio", "--quiet")
    assert code == 1
    message = one_line(err)
    assert "symbolic link" in message and "status" in message, message
    assert snapshot(elsewhere) == before
    assert not (store / "clusters").exists()


def test_extract_does_not_write_into_a_folder_that_is_not_a_cache(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("AVDA_DEBUG", raising=False)
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"{HEADER}\na,v,D1,train,0,1\n")
    folder = tmp_path / "thesis"
    folder.mkdir()
    (folder / "chapter1.tex").write_text("precious\n")
    before = snapshot(folder)
    code, _, err = run(capsys, "extract", "-m", manifest, "-o", folder, "--videos", tmp_path,
                       "--prepare-only", "--device", "cpu", "--quiet")  # fmt: skip
    assert code == 1
    assert "is a folder that is not an avda cache and is not empty" in one_line(err)
    assert snapshot(folder) == before


def test_extract_into_an_empty_folder_makes_a_cache_there(capsys, tmp_path):
    from avda.cache import open_cache

    manifest = tmp_path / "m.csv"
    manifest.write_text(f"{HEADER}\na,v,D1,train,0,1\n")
    folder = tmp_path / "empty.zarr"
    folder.mkdir()
    code, _, err = run(capsys, "extract", "-m", manifest, "-o", folder, "--videos", tmp_path,
                       "--prepare-only", "--device", "cpu", "--quiet")  # fmt: skip
    assert code == 0, err
    assert open_cache(folder).num_segments == 1
    # one that only a desktop's .DS_Store is in is empty too (it was 'directory not empty')
    folder = tmp_path / "finder.zarr"
    folder.mkdir()
    (folder / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    code, _, err = run(capsys, "extract", "-m", manifest, "-o", folder, "--videos", tmp_path,
                       "--prepare-only", "--device", "cpu", "--quiet")  # fmt: skip
    assert code == 0, err
    assert open_cache(folder).num_segments == 1


def test_the_path_helper():
    from avda.paths import child, safe_component

    assert safe_component("P01_01") == "P01_01"
    for bad in ("", "..", ".", "a/b", "/abs", "a\x00b", "x\ny"):
        with pytest.raises(ConfigError):
            safe_component(bad)
    assert child(Path("/r"), "v") == Path("/r/v")


def test_reading_paths_are_built_from_safe_ids_too(tmp_path):
    """Frame folders, audio files and default video paths: an id that is not one name is
    refused where the path is built (a library caller that skipped the manifest check)."""
    from avda.data_manifests.schema import video_path
    from avda.extract.audio import locate_audio_file
    from avda.extract.frames import candidate_folders

    for bad in ("../x", "/etc"):
        with pytest.raises(ConfigError, match="an id must be one name"):
            candidate_folders(tmp_path, bad, None, "rgb")
        with pytest.raises(ConfigError, match="an id must be one name"):
            candidate_folders(tmp_path, "P01_01", bad, "rgb")
        with pytest.raises(ConfigError, match="an id must be one name"):
            locate_audio_file(tmp_path, bad)
        row = pd.Series({"video_id": bad, "video_path": ""})
        with pytest.raises(ConfigError, match="an id must be one name"):
            video_path(row, tmp_path)
    with pytest.raises(ConfigError, match="climbs out of its folder"):
        video_path(pd.Series({"video_id": "v", "video_path": "../v.mp4"}), tmp_path)
    assert (
        video_path(pd.Series({"video_id": "v", "video_path": ""}), tmp_path) == tmp_path / "v.mp4"
    )


def test_manifest_validate_with_videos_reports_a_bad_id_once(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("AVDA_DEBUG", raising=False)
    path = tmp_path / "m.csv"
    path.write_text(f"{HEADER}\na,../v,D1,train,0,1\n")
    code, _, err = run(capsys, "manifest", "validate", path, "--videos", tmp_path)
    message = one_line(err)
    assert code == 1 and "1 problem(s)" in message and "row 2 [video_id]" in message, message
